"""A payment's cost against its account's history: does the hundredth order cost what the first did?

What is measured
----------------
The payments use cases in this process over their real store (SQLite file, and PostgreSQL
when ``--postgres`` is given), no server: one funded customer account, then an
AuthorizePayment + CapturePayment pair (the saga's two calls until 2026-12-07) again and
again; with ``--sale``, one AuthorizePayment with ``capture`` (a sale, the saga's one call
since) per order instead. At each
history size (the customer's earlier payments, each with its hold and capture entries),
``--sample`` more pairs are timed: CPU milliseconds per pair (this process's
``time.process_time``; a PostgreSQL server's own CPU is not in it) and wall milliseconds per
pair (one pair at a time, so the wall time includes the database server's work). The ratio of the
largest history's cost to the smallest's is the figure: 1.0 means reading an account costs
the same however long its ledger.

Run ``python bench/ledger.py`` (about a minute on SQLite; ``--postgres postgresql://…`` adds a
run on a new database there; ``--histories 10,100,1000,3000,6000``; ``--sale``). Numbers, not
pass/fail. (A "pair" below is one order's payment: the two calls, or the sale.)

Runs (this machine, one core)
-----------------------------
2026-12-06, ``--histories 10,1000,3000 --postgres …``, before and after the account row kept
running totals (before, every read of an account summed all its entries and payments):

| ms per pair (CPU of this process / wall) | 10 earlier payments | 1,000 | 3,000 | 3,000 ÷ 10 |
|---|---:|---:|---:|---:|
| SQLite, before | 3.32 / 3.50 | 4.97 / 5.31 | 7.80 / 8.00 | 2.35 / 2.29 |
| SQLite, after | 3.44 / 3.69 | 3.54 / 3.90 | 3.48 / 3.91 | 1.01 / 1.06 |
| PostgreSQL, before | 4.93 / 7.18 | 4.79 / 7.95 | 4.81 / 8.65 | 0.98 / 1.21 |
| PostgreSQL, after | 5.65 / 7.74 | 6.33 / 8.86 | 5.41 / 8.08 | 0.96 / 1.04 |

(On PostgreSQL the sums ran in the server: the wall time grew, this process's CPU did not.)
An earlier SQLite run went on to 6,000: 13.66 ms before (4.1x the cost at 10), 3.71 after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from services.kit import db  # noqa: E402 - after the path is set
from services.kit.bus import Outbox, consumer_routing  # noqa: E402
from services.kit.config import DatabaseSettings  # noqa: E402
from services.kit.money import Money  # noqa: E402
from services.payments import store  # noqa: E402
from services.payments.accounts import Accounts  # noqa: E402
from services.payments.domain import Payments  # noqa: E402

ORDERS = "spiffe://poly.local/orders"
ADMIN = "users/admin"


def _payments(url: str) -> tuple[Payments, Accounts, Engine]:
    migrations = Path(store.__file__).with_name("migrations")
    engine = db.connect(DatabaseSettings(url=url), migrations=migrations)
    outbox = Outbox(store.BUS, source="payments", routing=consumer_routing())
    transactions = store.PaymentsStore(engine, outbox).transaction
    return Payments(transactions), Accounts(transactions), engine


def measure(url: str, histories: list[int], sample: int, *, sale: bool = False) -> list[dict[str, float]]:
    payments, accounts, engine = _payments(url)
    try:
        account = accounts.open_account(f"users/{uuid.uuid4()}", "EUR")
        accounts.fund(ADMIN, str(uuid.uuid4()), account.id, Money("EUR", 10**12))

        def pair() -> None:
            held = payments.authorize(
                ORDERS,
                str(uuid.uuid4()),
                order=f"orders/{uuid.uuid4()}",
                owner=account.owner,
                account_id="",
                amount=Money("EUR", 100),
                capture=sale,
            )
            if not sale:
                payments.capture(ORDERS, str(uuid.uuid4()), held.id)

        made, rows = 0, []
        for history in histories:
            while made < history:
                pair()
                made += 1
            began, began_wall = time.process_time(), time.perf_counter()
            for _ in range(sample):
                pair()
            spent, waited = time.process_time() - began, time.perf_counter() - began_wall
            made += sample
            rows.append(
                {
                    "history": history,
                    "cpu_ms_per_pair": spent / sample * 1000,
                    "wall_ms_per_pair": waited / sample * 1000,
                }
            )
            cpu, wall = rows[-1]["cpu_ms_per_pair"], rows[-1]["wall_ms_per_pair"]
            print(
                f"  {history:>6} earlier payments: {cpu:.2f} ms CPU, {wall:.2f} ms wall per pair", flush=True
            )
        return rows
    finally:
        engine.dispose()


def _postgres_database(admin_url: str) -> tuple[str, str]:
    name = f"bench_ledger_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def _drop(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--histories", default="10,100,1000,3000", help="earlier payments, ascending")
    parser.add_argument("--sample", type=int, default=50, help="pairs timed at each history")
    parser.add_argument("--postgres", default="", help="admin URL: also run on a new database there")
    parser.add_argument("--sale", action="store_true", help="each order paid by one sale, not a pair")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ledger.json")
    opts = parser.parse_args()
    histories = sorted(int(h) for h in opts.histories.split(","))
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        print("sqlite:")
        results["sqlite"] = measure(
            f"sqlite:///{scratch}/payments.db", histories, opts.sample, sale=opts.sale
        )
    if opts.postgres:
        url, name = _postgres_database(opts.postgres)
        try:
            print("postgresql:")
            results["postgresql"] = measure(
                url.replace("postgresql://", "postgresql+psycopg://"), histories, opts.sample, sale=opts.sale
            )
        finally:
            _drop(opts.postgres, name)
    for backend, rows in results.items():
        first, last = rows[0], rows[-1]
        for key, what in (("cpu_ms_per_pair", "CPU"), ("wall_ms_per_pair", "wall time")):
            ratio, span = last[key] / first[key], f"{first['history']} -> {last['history']} earlier payments"
            print(f"{backend}: {what} per pair x{ratio:.2f} from {span}")
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
