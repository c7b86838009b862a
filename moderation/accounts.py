"""Moderator accounts for the web app: names and scrypt password hashes in ``moderator_accounts``.

Only the table's owner writes accounts (``moderation accounts ...``); the
deployed ``moderator`` role the web app runs as may only read them, to check
a login. A hash is one string, ``scrypt$N$r$p$SALT$KEY`` (base64 salt and
key), so its cost can be raised later without breaking older hashes. A
disabled account keeps its row (its name stays on past decisions) but cannot
log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from moderation import db
from moderation.errors import AccountError
from moderation.timeutil import utc, utc_now, utc_or_none

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_NAME = 128
#: scrypt cost: 2**14 iterations, block size 8, no parallelism (16 MiB, tens of milliseconds per check).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
KEY_BYTES = 32
SALT_BYTES = 16


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``, as one string."""
    _check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)])


def check_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the hash; constant-time compare, False for a malformed hash."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key, validate=True)
        found = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)


def add_account(engine: Engine, name: str, password: str, now: datetime | None = None) -> None:
    """Create an account; :class:`AccountError` if the name is taken or the name or password is unfit."""
    name = _check_name(name)
    row = {"name": name, "password_hash": hash_password(password),
           "created_at": utc(now) if now is not None else utc_now(), "disabled": False}
    a = db.moderator_accounts.c
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderator_accounts)
        if conn.execute(select(a.name).where(a.name == name)).first() is not None:
            raise AccountError(f"account {name!r} already exists (use set-password to change its password)")
        conn.execute(db.moderator_accounts.insert().values(**row))


def set_password(engine: Engine, name: str, password: str) -> None:
    """Give an existing account a new password (and enable it again)."""
    encoded = hash_password(password)
    _update(engine, name, password_hash=encoded, disabled=False)


def disable_account(engine: Engine, name: str) -> None:
    """Stop an account from logging in; its row and past decisions stay."""
    _update(engine, name, disabled=True)


def verify(engine: Engine, name: str, password: str) -> bool:
    """Whether ``name`` may log in with ``password``: False for an unknown or disabled account.

    An unknown name still costs one scrypt, so timing does not tell which
    names exist.
    """
    a = db.moderator_accounts.c
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.moderator_accounts)
        row = conn.execute(select(a.password_hash, a.disabled).where(a.name == (name or "").strip())).first()
    if row is None:
        check_password(password or "", _DUMMY_HASH)
        return False
    matches = check_password(password or "", row[0])
    return matches and not row[1]


def list_accounts(engine: Engine) -> list[dict[str, Any]]:
    """Every account's name, creation time and whether it is disabled (never the hash), by name."""
    a = db.moderator_accounts.c
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.moderator_accounts)
        rows = conn.execute(select(a.name, a.created_at, a.disabled).order_by(a.name)).mappings().all()
    return [{"name": r["name"], "created_at": utc_or_none(r["created_at"]), "disabled": bool(r["disabled"])}
            for r in rows]


def _update(engine: Engine, name: str, **values: Any) -> None:
    name = _check_name(name)
    a = db.moderator_accounts.c
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderator_accounts)
        changed = conn.execute(db.moderator_accounts.update().where(a.name == name).values(**values)
                               .execution_options(preserve_rowcount=True)).rowcount
    if not changed:
        raise AccountError(f"no account named {name!r} (create it with `moderation accounts add {name}`)")


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME or not name.isprintable() or any(c.isspace() for c in name):
        raise AccountError(f"an account name is 1-{MAX_NAME} printable characters without spaces, not {name!r}")
    return name


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * n * r + 2**20)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


#: Checked against when the name is unknown, so that case costs what a real check costs.
_DUMMY_HASH = "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(b"\0" * SALT_BYTES),
                        _b64(b"\0" * KEY_BYTES)])
