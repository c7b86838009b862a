"""Account commands: the web app's moderator logins (``moderation accounts add|set-password|disable|list``).

A password is never an argument (it would sit in the shell history and the
process list): it is read from standard input with ``--password-stdin``,
else asked for twice at the terminal. Run these as the database owner: the
``moderator`` role may only read accounts.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from moderation.cli.options import db_option
from moderation.errors import AccountError


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``accounts`` and its actions to the ``moderation`` command."""
    accounts = commands.add_parser("accounts", help="moderator logins for the web app")
    sub = accounts.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create an account (password from stdin or the terminal prompt)")
    add.add_argument("name", metavar="NAME")
    _password_option(add)
    db_option(add)
    add.set_defaults(handler=_add)
    change = sub.add_parser("set-password", help="give an account a new password (enables it again)")
    change.add_argument("name", metavar="NAME")
    _password_option(change)
    db_option(change)
    change.set_defaults(handler=_set_password)
    disable = sub.add_parser("disable", help="stop an account from logging in (its decisions stay)")
    disable.add_argument("name", metavar="NAME")
    db_option(disable)
    disable.set_defaults(handler=_disable)
    listing = sub.add_parser("list", help="accounts, when created, and whether disabled")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    db_option(listing)
    listing.set_defaults(handler=_list)


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input (for scripts)")


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or typed twice at a prompt that does not echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise AccountError("no terminal to ask for the password: pipe it in with --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ; nothing changed")
    return first


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from moderation import db

    return db.make_engine(args.db, must_exist=True)


def _add(args: argparse.Namespace) -> int:
    from moderation.accounts import add_account

    return _write_password(args, add_account, "account {name} created")


def _set_password(args: argparse.Namespace) -> int:
    from moderation.accounts import set_password

    return _write_password(args, set_password, "account {name}: password changed")


def _write_password(args: argparse.Namespace, write: Callable[[Any, str, str], Any], done: str) -> int:
    """Read the password (stdin or prompt) before connecting, so a refused password touches no database."""
    password = read_password(args.password_stdin)
    engine = _engine(args)
    try:
        write(engine, args.name, password)
    finally:
        engine.dispose()
    print(done.format(name=args.name.strip()))
    return 0


def _disable(args: argparse.Namespace) -> int:
    from moderation.accounts import disable_account

    engine = _engine(args)
    try:
        disable_account(engine, args.name)
    finally:
        engine.dispose()
    print(f"account {args.name.strip()} disabled")
    return 0


def _list(args: argparse.Namespace) -> int:
    from moderation.accounts import list_accounts
    from moderation.cli.moderator_commands import render_table

    engine = _engine(args)
    try:
        accounts = list_accounts(engine)
    finally:
        engine.dispose()
    if args.format == "json":
        print(json.dumps([{**a, "created_at": a["created_at"].isoformat() if a["created_at"] else None}
                          for a in accounts], indent=2, ensure_ascii=False))
    elif not accounts:
        print("no accounts: `moderation accounts add NAME`")
    else:
        print(render_table(["name", "created (UTC)", "state"],
                           [[a["name"], a["created_at"].strftime("%Y-%m-%d %H:%M") if a["created_at"] else "",
                             "disabled" if a["disabled"] else "active"] for a in accounts]))
    return 0
