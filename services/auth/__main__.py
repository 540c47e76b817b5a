"""Entry point: ``python -m services.auth``. Reads settings once, then wires and serves."""

import logging
from pathlib import Path

from poly.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from services.auth import events, keys, passwords, store, tokens
from services.auth.domain import IdentityProvider
from services.auth.service import AuthServicer
from services.kit import authn, authz, bus, config, db, server, telemetry

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("auth")
    telemetry.setup_or_exit(settings)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    try:
        events_node = bus.node(settings, engine, store.BUS, events.HANDLERS)
        auth_store = store.AuthStore(db.session_factory(engine), events_node.outbox)
        try:
            encryption_key = keys.load_key_encryption_key(settings.auth.key_encryption_key_file)
            ring = tokens.KeyRing(
                auth_store, encryption_key, activation_delay=settings.auth.jwks_min_refresh_seconds
            )
            ring.ensure()
            ring.current()  # fails now, not at the first login, if the key cannot be opened
        except keys.KeyEncryptionError as error:
            logging.getLogger("poly.auth").error(str(error))
            raise SystemExit(1) from None
        # Its own keys come straight from its database (a cheap read): auth never calls itself.
        verifier = authn.Verifier(authn.KeySet(ring.jwks, max_age=1.0, min_refresh=0.0), settings.auth)
        provider = IdentityProvider(
            auth_store.transaction,
            passwords.Argon2Hasher(settings.auth),
            tokens.JwtMinter(ring, settings.auth),
            settings.auth,
            passwords.password_problem,
        )
        servicer = AuthServicer(provider, ring, verifier, settings)
        descriptor = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]
        registrations = [
            server.registration(
                descriptor, auth_service_pb2_grpc.add_AuthServiceServicer_to_server, servicer
            ),
            events_node.registration,
        ]
        server.serve(
            settings,
            registrations,
            middlewares=authz.service_middlewares(settings, verifier, registrations),
            background=[events_node],
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
