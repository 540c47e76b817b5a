"""The payments service. Accounts, a double-entry ledger and payments (authorize, capture, void, refund)."""
