"""`poly`: the operator's command line.

poly certs [--force]   development CA and one certificate per component
poly up                start every service, wait until healthy, supervise
poly status            each component's health
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.kit import config, tls

__all__ = ["main"]


def _certs(settings: config.Settings, force: bool) -> int:
    directory = settings.tls.ca_file.parent
    try:
        issued = tls.ensure_certificates(
            directory,
            config.COMPONENTS,
            force=force,
            trust_domain=settings.tls.trust_domain,
            namespace=settings.tls.namespace,
        )
    except tls.CertificateError as error:
        print(f"poly certs: {error}", file=sys.stderr)
        return 2
    for path in issued.written:
        print(f"wrote {path}")
    for path in issued.kept:
        print(f"kept  {path} (exists; --force re-issues the component certificates)")
    return 0


def _status(settings: config.Settings) -> int:
    from services.cli.probe import health_status

    if not settings.tls.cert_file.exists():
        print(f"poly status: no certificate at {settings.tls.cert_file}; run `poly certs`", file=sys.stderr)
        return 2
    healthy = True
    for name in config.SERVICES:
        state = health_status(settings, name)
        healthy &= state == "SERVING"
        print(f"{name:<14} {settings.peers[name]:<18} {state}")
    return 0 if healthy else 1


def _migration(service: str, message: str) -> int:
    import importlib

    from services.kit import db

    package = importlib.import_module(f"services.{service}")
    directory = Path(package.__file__ or "").with_name("migrations")
    try:
        created = db.generate_revision(directory, message)
    except db.DatabaseError as error:
        print(f"poly migration: {error}", file=sys.stderr)
        return 1
    print(f"wrote {created} — read it before committing")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poly", description="Polyservice operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help="create the development CA and component certificates")
    certs.add_argument("--force", action="store_true", help="re-issue component certificates (rotation)")
    commands.add_parser("up", help="start all services, wait for health, supervise until Ctrl-C")
    commands.add_parser("status", help="print each component's health")
    migration = commands.add_parser("migration", help="autogenerate a service's next migration")
    migration.add_argument("service", choices=config.SERVICES)
    migration.add_argument("-m", "--message", required=True, help="what the migration changes")
    args = parser.parse_args(argv)
    try:
        settings = config.load("cli")
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if args.command == "certs":
        return _certs(settings, args.force)
    if args.command == "status":
        return _status(settings)
    if args.command == "migration":
        return _migration(args.service, args.message)
    from services.cli.supervisor import Supervisor

    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
