"""Rules of the orders domain: plain dataclasses, no gRPC and no SQL.

Orders and their lines; the order state machine and its side of the payment saga.
The rules, state machine and repository Protocol arrive with the orders domain issue; until
then every RPC of the service answers UNIMPLEMENTED.
"""

__all__: list[str] = []
