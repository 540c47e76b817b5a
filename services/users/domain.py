"""Rules of the users domain: plain dataclasses, no gRPC and no SQL.

User profiles and preferences, created from UserRegistered.
The rules, state machine and repository Protocol arrive with the users domain issue; until
then every RPC of the service answers UNIMPLEMENTED.
"""

__all__: list[str] = []
