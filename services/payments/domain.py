"""Rules of the payments domain: plain dataclasses, no gRPC and no SQL.

Accounts, a double-entry ledger and payments (authorize, capture, void, refund).
The rules, state machine and repository Protocol arrive with the payments domain issue; until
then every RPC of the service answers UNIMPLEMENTED.
"""

__all__: list[str] = []
