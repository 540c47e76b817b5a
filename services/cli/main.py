"""`poly`: the operator's command line.

poly certs [--force]   development CA and one certificate per component
poly up                start every service, wait until healthy, supervise
poly serve SERVICE     run one service in this process (a container's command)
poly migrate SERVICE…  apply services' database migrations, then exit (a deploy job)
poly status            each component's health
poly bus ACTION        a service's outbox and dead letters; declare the broker's topology
poly admin create      the first admin account (or make an account admin)
poly keys rotate|list  signing keys of the auth service
poly payments reconcile  the payments ledger against its outside provider's records
poly trace WHAT        one trace as a waterfall, from the spans `poly up` keeps
poly completion SHELL  a bash or zsh completion script

Only argparse and `kit.config` load up front; each command imports what it needs when it
runs (`services.cli.commands`), so ``poly --help``, ``poly --version`` and ``poly status``
answer at once: no SQLAlchemy, Alembic or cryptography, and gRPC only for `status`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.cli.exits import CONFIGURATION_HINT, USAGE
from services.kit import config
from services.kit.telemetry_settings import LOG_FORMATS

__all__ = ["EPILOG", "build_parser", "main"]

_ENABLE_COMPLETION = """\
shell completion (add the line to ~/.bashrc or ~/.zshrc to keep it):
  bash:  source <(poly completion bash)
  zsh:   eval "$(poly completion zsh)"      # after compinit
"""

EPILOG = f"""\
exit status:
  0  success (for `poly status`: every component SERVING)
  1  failure: a component not SERVING, a database, broker or file that cannot be used
  2  usage: a bad command line or POLY_* environment variable

configuration: POLY_* environment variables; README.md, section Configuration, lists them.

{_ENABLE_COMPLETION}"""


_STATUS_COMPONENTS = (*config.SERVICES, "gateway")


class _Version(argparse.Action):
    """``--version``: looks the installed version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("polyservice")
        except PackageNotFoundError:
            found = "unknown (not installed; run `pip install -e .`)"
        print(f"poly {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; shell completion is generated from it."""
    parser = argparse.ArgumentParser(
        prog="poly",
        description="Polyservice operator commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    certs = commands.add_parser("certs", help="create the development CA and component certificates")
    certs.add_argument("--force", action="store_true", help="re-issue component certificates (rotation)")
    up = commands.add_parser(
        "up",
        help="start all services, wait for health, supervise until Ctrl-C",
        description="Start all services, wait for health, supervise until Ctrl-C. The services always\n"
        "log JSON to poly up, which shows it in the --log-format you choose.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="console: one readable line per event, prefixed with its component; json: each "
        "component's JSON lines unchanged, one object per line, `poly up`'s own with service "
        "poly (default: POLY_LOG_FORMAT, else console on a terminal and json otherwise)",
    )
    status = commands.add_parser(
        "status",
        help="print each component's health; exit 0 only if all are SERVING",
        description="Ask each component (or only those named) for its health, services over the gRPC\n"
        "health protocol with mTLS as the cli identity, the edge by /readyz; exit 0 only if every\n"
        "one asked is SERVING (a container's health check: poly status orders).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Checked in main: argparse refuses an empty list when `choices` is given with nargs="*".
    status.add_argument(
        "components", nargs="*", metavar="COMPONENT", help=f"{', '.join(_STATUS_COMPONENTS)} (default: all)"
    )
    serve = commands.add_parser(
        "serve",
        help="run one service in this process until SIGTERM (a container's command)",
        description="Run one service in this process, as `python -m services.SERVICE` does: it\n"
        "serves until SIGTERM or Ctrl-C, then drains in-flight calls for POLY_GRACE_SECONDS.\n"
        "The edge is `poly gateway`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("service", choices=config.SERVICES)
    migrate = commands.add_parser(
        "migrate",
        help="apply services' database migrations, then exit (a deploy job)",
        description="Apply each SERVICE's Alembic migrations to its database\n"
        "(POLY_<SERVICE>_DATABASE_URL) up to the newest, then exit: the one-shot job that runs\n"
        "before services that start with POLY_DB_MIGRATE=false. Applying them again changes nothing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument("services", nargs="+", choices=[*config.SERVICES, "all"], metavar="SERVICE")
    commands.add_parser(
        "gateway", help="serve the HTTP/JSON edge in front of any gRPC backends (poly gateway --help)"
    )
    migration = commands.add_parser("migration", help="autogenerate a service's next migration")
    migration.add_argument("service", choices=config.SERVICES)
    migration.add_argument("-m", "--message", required=True, help="what the migration changes")
    bus = commands.add_parser(
        "bus",
        help="inspect a service's outbox, re-drive dead letters, declare the broker's topology",
        description="status|dead|redrive SERVICE: a service's outbox and its dead letters.\n"
        "declare: declare, idempotently, the whole RabbitMQ topology the event contract implies\n"
        "(exchanges, queues, bindings) on the broker at POLY_BUS_URL, as every service does at\n"
        "start; for a deploy job.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bus.add_argument("action", choices=["status", "dead", "redrive", "declare"])
    bus.add_argument("service", nargs="?", choices=config.SERVICES, help="every action but declare")
    bus.add_argument(
        "--event",
        action="append",
        dest="events",
        metavar="ID",
        help="redrive only this event (repeatable); default: every dead letter",
    )
    admin = commands.add_parser("admin", help="create the first admin account")
    admin_commands = admin.add_subparsers(dest="action", required=True)
    create = admin_commands.add_parser("create", help="create an admin account, or make an account admin")
    create.add_argument("--email", required=True, help="the account's email; created if it does not exist")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    keys = commands.add_parser("keys", help="rotate or list the auth service's signing keys")
    keys.add_argument(
        "action",
        choices=["rotate", "list"],
        help="rotate: add a key (published now, signing after POLY_AUTH_JWKS_MIN_REFRESH_SECONDS); "
        "list: the published keys and their roles",
    )
    payments = commands.add_parser(
        "payments",
        help="compare the payments ledger with the outside provider's records",
        description="reconcile: compare the payments of the configured provider (POLY_PAYMENTS_PROVIDER)\n"
        "created in a time range with the provider's own records, and list every difference:\n"
        "states, captured and refunded amounts, payments the provider has no record of, holds the\n"
        "ledger does not know of (where the provider can list them), payments still PENDING after\n"
        "an hour. It reads both sides and changes neither.",
        epilog="exit status: 0 no difference, 1 differences (or the provider or database failed), 2 usage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    payments.add_argument("action", choices=["reconcile"])
    payments.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="ISO 8601 date or time, UTC unless it says (default: a day before --until)",
    )
    payments.add_argument(
        "--until", type=_moment, metavar="TIME", help="ISO 8601 date or time (default: now)"
    )
    payments.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")
    _add_trace(commands)
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (see the end of poly --help)",
        description="Print a completion script for SHELL, generated from poly's own arguments\n"
        "(static: nothing runs when you press TAB).",
        epilog=_ENABLE_COMPLETION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")
    return parser


def _moment(text: str) -> dt.datetime:
    """An ISO 8601 date or date and time; UTC when it names no offset."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _add_trace(commands: Any) -> None:
    trace = commands.add_parser(
        "trace",
        help="show one trace as a waterfall, found by trace id, X-Request-Id or resource name",
        description="Show one trace as a waterfall, found by trace id, X-Request-Id or resource name.\n\n"
        "Reads the spans `poly up` keeps in POLY_HOME/traces/ (OTLP JSON lines, written about a\n"
        "second after a call ends): one row per span, each under its parent, with service, start,\n"
        "duration, a bar on the trace's time scale, status and error message.\n\n"
        "WHAT is a trace id (32 hex digits, the trace_id of a log line), an X-Request-Id (a\n"
        "response header of the edge), or a resource name such as orders/abc. When several\n"
        "traces match, a resource name shows the one that created it (else the earliest), an\n"
        "X-Request-Id the most recent; --list WHAT lists them, newest first.",
        epilog="examples:\n  poly trace 4bf92f3577b34da6a3ce929d0e0e4736\n  poly trace orders/abc\n"
        "  poly trace --list -n 5\n\nexit status: 0 found, 1 nothing matches, 2 usage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trace.add_argument("what", nargs="?", metavar="WHAT", help="trace id, X-Request-Id or resource name")
    home = trace.add_argument(
        "--home", type=Path, metavar="DIR", help="read DIR/traces (default: POLY_HOME, else .poly)"
    )
    home.complete = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}  # shtab.DIRECTORY, unimported
    trace.add_argument(
        "--list", dest="listing", action="store_true", help="list recent traces (WHAT's, if given)"
    )
    trace.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="traces --list shows (20)")
    trace.add_argument("--json", dest="as_json", action="store_true", help="print the spans as JSON")


def _range(since: dt.datetime | None, until: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    end = until or dt.datetime.now(dt.UTC)
    return since or end - dt.timedelta(days=1), end


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gateway"]:  # its own arguments, and no POLY_* settings needed
        from gateway.__main__ import main as gateway_main

        return gateway_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":  # the service reads its own settings and reports its own errors
        from services.cli import commands

        return commands.run_serve(args.service)
    if args.command == "bus" and args.events and args.action != "redrive":
        parser.error(f"--event goes with `poly bus redrive`, not `poly bus {args.action}`")
    if args.command == "bus" and (args.action == "declare") == (args.service is not None):
        parser.error(
            "`poly bus declare` takes no SERVICE: it declares every service's queues"
            if args.service
            else f"`poly bus {args.action}` needs a SERVICE: one of {', '.join(config.SERVICES)}"
        )
    if args.command == "status" and (unknown := sorted(set(args.components) - set(_STATUS_COMPONENTS))):
        parser.error(f"unknown component {unknown[0]!r} (choose from {', '.join(_STATUS_COMPONENTS)})")
    if args.command == "payments" and args.since and args.until and args.since >= args.until:
        parser.error("--since must be before --until")
    if args.command == "trace" and (args.limit < 1 or not (args.what or args.listing)):
        parser.error("--limit must be at least 1" if args.limit < 1 else "`poly trace` needs WHAT, or --list")
    from services.cli import commands

    if args.command == "completion":  # needs no settings: works whatever the environment
        return commands.run_completion(parser, args.shell)
    from services.cli import system_settings

    try:
        system = system_settings.load()
    except config.ConfigError as error:
        print(f"poly: {error}\nfix or unset these variables; {CONFIGURATION_HINT}", file=sys.stderr)
        return USAGE
    settings = system.settings
    run: dict[str, Callable[[], int]] = {
        "certs": lambda: commands.run_certs(system, args.force),
        "status": lambda: commands.run_status(settings, args.components),
        "migration": lambda: commands.run_migration(args.service, args.message),
        "migrate": lambda: commands.run_migrate(
            config.SERVICES if "all" in args.services else list(dict.fromkeys(args.services))
        ),
        "bus": lambda: (
            commands.run_bus_declare(settings)
            if args.action == "declare"
            else commands.run_bus(args.action, args.service, args.events)
        ),
        "admin": lambda: commands.run_admin_create(args.email, args.password_stdin),
        "keys": lambda: commands.run_keys(args.action),
        "payments": lambda: commands.run_reconcile(*_range(args.since, args.until), as_json=args.as_json),
        "trace": lambda: commands.run_trace(
            args.home or settings.home,
            args.what,
            listing=args.listing,
            limit=args.limit,
            as_json=args.as_json,
        ),
    }
    if args.command in run:
        return run[args.command]()
    from services.cli.supervisor import Supervisor

    return Supervisor(system, log_format=args.log_format or settings.telemetry.log_format).run()


if __name__ == "__main__":
    sys.exit(main())
