"""Rules of the auth domain: plain dataclasses, no gRPC and no SQL.

Identity provider: credentials, roles, refresh tokens, signing keys, machine clients.
The rules, state machine and repository Protocol arrive with the auth domain issue; until
then every RPC of the service answers UNIMPLEMENTED.
"""

__all__: list[str] = []
