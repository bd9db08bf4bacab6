"""``minapp-async tables`` and ``minapp-async outbox``: the engine's data tables and the
messages functions sent, read and changed in its state file.

They open the SQLite state file directly (``--state FILE``, or ``DIR/.minapp/state.sqlite3``
for ``--functions DIR``, the file ``serve`` keeps), so they work whether or not the engine is
running: SQLite's own locking keeps a running engine and these commands apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._options import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Command

if TYPE_CHECKING:
    from ..engine._tables import Tables

__all__ = ["OUTBOX", "TABLES"]

#: Where ``serve --functions DIR`` keeps its state (tables included).
STATE_FILE: Final = Path(".minapp") / "state.sqlite3"
_BUSY_TIMEOUT_MS: Final = 5000


def _state_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="the engine's state file (default: DIR/.minapp/state.sqlite3 of --functions)",
    )
    where.add_argument(
        "--functions",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="the functions folder 'serve' runs (default: the current folder)",
    )


def _state_path(args: argparse.Namespace) -> Path:
    state: Path | None = args.state
    functions: Path = args.functions
    return state if state is not None else functions / STATE_FILE


class _Failed(Exception):
    """A message for stderr and an exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@contextlib.contextmanager
def _database(path: Path, *, create: bool) -> Iterator[sqlite3.Connection]:
    if not create and not path.is_file():
        raise _Failed(
            f"no state file at {str(path)!r}: run 'minapp-async serve --functions DIR' first, "
            "or name it with --state",
            EXIT_USAGE,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        yield db
    except sqlite3.OperationalError as exc:
        raise _Failed(f"state file {str(path)!r}: {exc}") from None
    finally:
        db.close()


def _tables(db: sqlite3.Connection) -> Tables:
    from ..engine._tables import Tables

    # Seeding names its table: an unknown one is created, as a first write does in the engine.
    return Tables(db, auto_create=True)


# -- tables ---------------------------------------------------------------------------------


def _tables_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the tables and their row counts")
    _state_arguments(listing)
    load = actions.add_parser("import", help="add the records of a JSON-lines file to a table")
    load.add_argument("table", metavar="TABLE")
    load.add_argument("file", type=Path, metavar="FILE", help="one JSON object per line")
    _state_arguments(load)
    dump = actions.add_parser("export", help="print a table's records as JSON lines")
    dump.add_argument("table", metavar="TABLE")
    dump.add_argument(
        "file", nargs="?", type=Path, metavar="FILE", help="write here instead of stdout"
    )
    _state_arguments(dump)
    reset = actions.add_parser("reset", help="delete a table's records (or every table's)")
    reset.add_argument("table", nargs="?", metavar="TABLE")
    reset.add_argument("--drop", action="store_true", help="delete the tables themselves too")
    _state_arguments(reset)


def _run_tables(args: argparse.Namespace) -> int:
    from ..engine._baas import read_jsonl, write_jsonl
    from ..engine._tables import TableError

    path = _state_path(args)
    try:
        rows: list[dict[str, Any]] = []
        if args.action == "import":  # read first: a bad file leaves no state file behind
            try:
                rows = read_jsonl(args.file)
            except OSError as exc:
                raise _Failed(f"cannot read {str(args.file)!r}: {exc}", EXIT_USAGE) from None
            except ValueError as exc:
                raise _Failed(str(exc), EXIT_USAGE) from None
        with _database(path, create=args.action == "import") as db:
            tables = _tables(db)
            if args.action == "list":
                for table in tables.list_tables(limit=1000)["objects"]:
                    count = tables.count(table["name"])
                    sys.stdout.write(f"{table['name']}\t{count}\n")
            elif args.action == "import":
                count = tables.import_records(args.table, rows)
                sys.stderr.write(f"imported {count} records into {args.table}\n")
            elif args.action == "export":
                rows = tables.export_records(args.table)
                if args.file is None or str(args.file) == "-":
                    for row in rows:
                        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    write_jsonl(args.file, rows)
                    sys.stderr.write(f"exported {len(rows)} records to {args.file}\n")
            else:
                tables.reset(args.table, drop=args.drop)
    except TableError as exc:
        sys.stderr.write(f"minapp-async tables {args.action}: {exc.message}\n")
        return EXIT_ERROR
    except _Failed as exc:
        sys.stderr.write(f"minapp-async tables {args.action}: {exc.message}\n")
        return exc.status
    return EXIT_OK


TABLES: Final = Command(
    add_arguments=_tables_arguments,
    run=_run_tables,
    epilog="""\
The data tables functions read and write with BaaS.TableObject, in the engine's state file.

examples:
  minapp-async tables list --functions functions
  minapp-async tables import prize prizes.jsonl --functions functions
  minapp-async tables export lottery_record --functions functions > records.jsonl
  minapp-async tables reset lottery_record --functions functions
  minapp-async tables reset --drop --state /tmp/state.sqlite3
""",
)


# -- outbox ---------------------------------------------------------------------------------


def _outbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        metavar="KIND",
        help="only this kind, e.g. wechat.template_message, sms_message, email",
    )
    parser.add_argument("--clear", action="store_true", help="empty the outbox (after printing)")
    _state_arguments(parser)


def _run_outbox(args: argparse.Namespace) -> int:
    from ..engine._baas_ops import Outbox

    path = _state_path(args)
    try:
        with _database(path, create=False) as db:
            outbox = Outbox(db)
            for message in outbox.messages(args.kind):
                sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
            if args.clear:
                outbox.clear()
    except _Failed as exc:
        sys.stderr.write(f"minapp-async outbox: {exc.message}\n")
        return exc.status
    return EXIT_OK


OUTBOX: Final = Command(
    add_arguments=_outbox_arguments,
    run=_run_outbox,
    epilog="""\
Messages functions sent (template and subscribe messages, SMS, email), one JSON object a line:
{"seq", "kind", "data", "created_at"}. Nothing leaves the machine.

examples:
  minapp-async outbox --functions functions
  minapp-async outbox --kind wechat.template_message --clear
""",
)
