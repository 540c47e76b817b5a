"""`poly`: the operator's command line.

poly certs [--force]   development CA and one certificate per component
poly up                start every service, wait until healthy, supervise
poly status            each component's health
"""

from __future__ import annotations

import argparse
import sys

from services.kit import config, tls

__all__ = ["main"]


def _certs(settings: config.Settings, force: bool) -> int:
    directory = settings.tls.ca_file.parent
    issued = tls.ensure_certificates(
        directory,
        config.COMPONENTS,
        force=force,
        trust_domain=settings.tls.trust_domain,
        namespace=settings.tls.namespace,
    )
    for path in issued.written:
        print(f"wrote {path}")
    for path in issued.kept:
        print(f"kept  {path} (exists; --force re-issues the component certificates)")
    return 0


def _status(settings: config.Settings) -> int:
    from services.cli.probe import health_status

    healthy = True
    for name in config.SERVICES:
        state = health_status(settings, name)
        healthy &= state == "SERVING"
        print(f"{name:<14} {settings.peers[name]:<18} {state}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poly", description="Polyservice operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help="create the development CA and component certificates")
    certs.add_argument("--force", action="store_true", help="re-issue component certificates (rotation)")
    commands.add_parser("up", help="start all services, wait for health, supervise until Ctrl-C")
    commands.add_parser("status", help="print each component's health")
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
    from services.cli.supervisor import Supervisor

    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
