"""``moderation serve``: the moderators' web page (:mod:`moderation.web`) under uvicorn."""

from __future__ import annotations

import argparse
import os

from moderation.cli.options import db_option, int_at_least

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="serve the moderators' web page (queue, evidence, decisions, stats)",
        description="Serve the moderators' web page. Needs MODERATION_WEB_SECRET (signs the login sessions) "
                    "and moderator accounts in the database; MODERATION_CLAIM_MINUTES sets the claim lease.")
    parser.add_argument("--host", default=os.environ.get("MODERATION_WEB_HOST", DEFAULT_HOST),
                        help=f"address to listen on (default: $MODERATION_WEB_HOST, else {DEFAULT_HOST}; "
                             f"0.0.0.0 in a container)")
    parser.add_argument("--port", type=port, default=None, metavar="PORT",
                        help=f"TCP port (default: $MODERATION_WEB_PORT, else {DEFAULT_PORT})")
    db_option(parser)
    parser.add_argument("--db-url", dest="db", type=str, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_serve)


def port(value: str) -> int:
    number = int_at_least(1)(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, not {number}")
    return number


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from moderation.errors import SettingError
    from moderation.web.app import create_app

    chosen = args.port
    if chosen is None:
        raw = os.environ.get("MODERATION_WEB_PORT", "")
        try:
            chosen = port(raw) if raw else DEFAULT_PORT
        except argparse.ArgumentTypeError as exc:
            raise SettingError(f"MODERATION_WEB_PORT {exc}") from None
    app = create_app(args.db)  # refuses a missing secret or database before the socket opens
    uvicorn.run(app, host=args.host, port=chosen, proxy_headers=True, server_header=False,
                log_level="debug" if args.verbose else "info")
    return 0
