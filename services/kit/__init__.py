"""The Polyservice service kit: one small module per concern, each usable on its own.

- `config`  settings from POLY_* environment variables (the only reader of os.environ)
- `tls`     development CA, SPIFFE certificates, reloading server credentials
- `errors`  domain errors to gRPC statuses with google.rpc details
- `logs`    structured JSON logs on stderr
- `db`      one SQLAlchemy engine per service, Alembic migrations on start
- `server`  build and run the gRPC server: mTLS, middleware chain, health, reflection,
            graceful shutdown on SIGTERM
- `clients` mTLS channels to other services with deadlines and retry policy
- `types`   callable shapes shared across the kit

Server model (chosen by measurement, see bench/kit.py): the thread-pool `grpc.server`
with synchronous SQLAlchemy. Every in-flight call holds one worker thread.
"""

__all__: list[str] = []
