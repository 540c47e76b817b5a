"""The auth service. Identity provider: credentials, roles, refresh tokens, signing keys, machine clients."""
