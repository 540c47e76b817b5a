"""The Polyservice service kit: one small module per concern, each usable on its own.

- `config`  settings from POLY_* environment variables (the only reader of os.environ)
- `tls`     development CA, SPIFFE certificates, reloading server credentials
- `errors`  domain errors to gRPC statuses with google.rpc details
- `logs`    logs on stderr, JSON or `console`, credentials redacted, trace ids joined
- `console` the one-line readable rendering of a log record (`poly up` shows it too)
- `telemetry` traces (OpenTelemetry), Prometheus metrics and their /metrics endpoint
- `calls`   how a served call ended, as every observer (logs, metrics, traces) sees it
- `db`      one SQLAlchemy engine per service, Alembic migrations on start
- `server`  build and run the gRPC server: mTLS, middleware chain, health, reflection,
            graceful shutdown on SIGTERM
- `clients` mTLS channels to other services with deadlines and retry policy
- `types`   callable shapes shared across the kit
- `bus`     transactional outbox, idempotent inbox, embedded and RabbitMQ transports

Server model (chosen by measurement, see bench/kit.py): the thread-pool `grpc.server`
with synchronous SQLAlchemy. Every in-flight call holds one worker thread.
"""

__all__: list[str] = []
