"""``abgate db``: the schema (migrate, status) and the daily partitions of the logs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from abgate.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_database_flags,
    error,
    local_database,
)


def cmd_db(args: argparse.Namespace) -> int:
    from abgate.db.embedded import database_url

    if args.db_command == "partitions" and (
        args.ensure_days < 0
        or (args.drop_older_than_days is not None and args.drop_older_than_days < 1)
    ):
        raise UsageError("--ensure-days must be >= 0 and --drop-older-than-days >= 1")
    local_database(args.database_url, args.pg_data)
    try:
        with database_url(args.database_url, args.pg_data) as url:
            if args.db_command == "partitions":
                return _partitions(url, args)
            return _migrations(url, args)
    except OSError as exc:
        error(f"UNAVAILABLE: cannot reach PostgreSQL: {exc.strerror or exc}")
        return EXIT_FAILURE


def _migrations(url: str, args: argparse.Namespace) -> int:
    import asyncio

    from abgate.db.migrate import applied, available, migrate

    if args.db_command == "migrate":
        names = asyncio.run(migrate(url))
        done = asyncio.run(applied(url))
        if args.json:
            print(json.dumps({"applied_now": names, "applied": done}))
        else:
            print(f"applied now: {', '.join(names) or 'nothing (up to date)'}")
        return EXIT_OK
    done = asyncio.run(applied(url))
    pending = [m.name for m in available() if m.name not in done]
    if args.json:
        print(json.dumps({"applied": done, "pending": pending}))
    else:
        print(f"applied: {', '.join(done) or '-'}\npending: {', '.join(pending) or '-'}")
    return EXIT_OK


def _partitions(url: str, args: argparse.Namespace) -> int:
    import asyncio
    import datetime as dt

    import asyncpg

    from abgate.db import partitions as parts
    from abgate.db.migrate import migrate

    async def run() -> dict[str, Any]:
        await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            created = await parts.ensure_partitions(conn, days_ahead=args.ensure_days)
            dropped: list[str] = []
            if args.drop_older_than_days is not None:
                today = dt.datetime.now(dt.UTC).date()
                cutoff = today - dt.timedelta(days=args.drop_older_than_days)
                dropped = await parts.drop_partitions_before(conn, cutoff)
            listed = await parts.list_partitions(conn)
        finally:
            await conn.close()
        return {
            "created": created,
            "dropped": dropped,
            "partitions": [{"name": p.name, "rows_estimate": p.rows} for p in listed],
        }

    result = asyncio.run(run())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"created: {', '.join(result['created']) or '-'}")
        print(f"dropped: {', '.join(result['dropped']) or '-'}")
        for p in result["partitions"]:
            print(f"  {p['name']} (~{max(p['rows_estimate'], 0)} rows)")
    return EXIT_OK


def add_db_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("db", help="database schema: migrate, status")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (
        ("migrate", "apply pending migrations"),
        ("status", "list migrations"),
        ("partitions", "create upcoming daily partitions of predictions; drop old ones"),
    ):
        q = dbsub.add_parser(name, help=text)
        add_database_flags(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "partitions":
            q.add_argument("--ensure-days", type=int, default=7, help="days ahead to prepare")
            q.add_argument("--drop-older-than-days", type=int, default=None,
                           help="retention: drop daily partitions older than this")  # fmt: skip
        q.set_defaults(func=cmd_db)
