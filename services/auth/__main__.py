"""The auth service, declared: ``python -m services.auth`` serves it (`kit.app.run`)."""

import logging
import threading
from pathlib import Path

from poly.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from services.auth import events, forms, keys, passwords, relying, store, tokens
from services.auth.accounts import Accounts
from services.auth.authorize import Authorize
from services.auth.clients import Clients
from services.auth.codes import Codes
from services.auth.federated import FederatedSignIn
from services.auth.oauth import OAuthServer
from services.auth.service import AuthServicer
from services.auth.sessions import Sessions
from services.auth.settings import IdentitySettings, read
from services.auth.signin import SignIn
from services.auth.throttle import Throttle
from services.kit import app, authn, federation


def wire(context: app.Context[IdentitySettings]) -> app.Parts:
    settings, own = context.settings, context.service_settings
    auth_store = store.AuthStore(context.engine, context.outbox)
    try:
        encryption_key = keys.load_key_encryption_key(own.key_encryption_key_file)
        ring = tokens.KeyRing(
            auth_store, encryption_key, activation_delay=settings.auth.jwks_min_refresh_seconds
        )
        ring.ensure()
        ring.current()  # fails now, not at the first login, if the key cannot be opened
    except keys.KeyEncryptionError as error:
        logging.getLogger("poly.auth").error(str(error))
        raise SystemExit(1) from None
    # Its own keys come straight from its database (a cheap read): auth never calls itself.
    external = federation.trusted_issuers(settings.auth, timeout=settings.client_deadline_seconds)
    verifier = authn.Verifier(
        authn.KeySet(ring.jwks, max_age=1.0, min_refresh=0.0), settings.auth, external=external
    )
    transactions = auth_store.transaction
    hasher = passwords.Argon2Hasher(own)  # one for every part: its slots bound argon2's memory
    minter = tokens.JwtMinter(ring, settings.auth, own.access_token_seconds)
    throttle = Throttle(transactions, own)
    sessions = Sessions(transactions, minter, own)
    signin = SignIn(transactions, hasher, throttle, sessions, own.password_grant)
    clients = Clients(transactions, hasher, minter, throttle, own)
    codes = Codes(transactions, sessions)
    oauth = OAuthServer(transactions, codes, sessions, clients, minter, settings.auth.issuer)
    guard = forms.FormGuard(forms.derive_key(encryption_key), settings.auth.issuer)
    callback = f"{settings.auth.issuer}/oauth2/federation/callback"
    upstreams = {
        external.alias: relying.Upstream(external, callback, timeout=settings.client_deadline_seconds)
        for external in settings.auth.external
        if external.client_id
    }
    for upstream in upstreams.values():  # the sign-in page's CSP names their sign-in pages once known
        threading.Thread(target=upstream.warm, name=f"discover-{upstream.alias}", daemon=True).start()
    federated = FederatedSignIn(transactions, upstreams) if upstreams else None
    servicer = AuthServicer(
        accounts=Accounts(transactions, hasher, throttle, passwords.password_problem),
        signin=signin,
        sessions=sessions,
        clients=clients,
        ring=ring,
        verifier=verifier,
        settings=settings,
        oauth=oauth,
        authorize=Authorize(oauth, signin, guard, federated),
    )
    return app.Parts(
        servicer=servicer,
        handlers=events.handlers(lambda connection: store.SqlRepository(connection, None)),
        verifier=verifier,
    )


SERVICE = app.Service(
    name="auth",
    api=auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
    add_servicer=auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
    migrations=Path(__file__).with_name("migrations"),
    bus_tables=store.BUS,
    settings=read,
    wire=wire,
)

if __name__ == "__main__":
    app.run(SERVICE)
