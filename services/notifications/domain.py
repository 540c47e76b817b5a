"""Rules of the notifications domain: plain dataclasses, no gRPC and no SQL.

Templates, webhooks and the delivery log of emails and webhooks.
The rules, state machine and repository Protocol arrive with the notifications domain issue; until
then every RPC of the service answers UNIMPLEMENTED.
"""

__all__: list[str] = []
