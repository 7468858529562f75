"""Where a memory store lives: a folder of SQLite partitions (the default) or a Redis server.

``--store PATH`` is a folder; ``--store redis://HOST:PORT/DB/NAME`` (``rediss://`` for TLS) is the
store NAME on that Redis server (DB defaults to 0, NAME to ``memories``). Credentials never go in
the address, which is printed in logs and visible in ``ps``: the password is read from the
environment variable ``CMREC_REDIS_PASSWORD`` (and an ACL user name from ``CMREC_REDIS_USERNAME``).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cmrec.store.state import StoreError

PASSWORD_ENV = "CMREC_REDIS_PASSWORD"
USERNAME_ENV = "CMREC_REDIS_USERNAME"
DEFAULT_NAME = "memories"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class RedisLocation:
    """A store on a Redis server: address, database number and store name (the key namespace).

    Its text form (`str`) never holds a credential; `password` and `username` come from the
    environment when the store is opened.
    """

    host: str
    port: int = 6379
    db: int = 0
    name: str = DEFAULT_NAME
    tls: bool = False

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}/{self.name}"

    @property
    def password(self) -> str | None:
        return os.environ.get(PASSWORD_ENV) or None

    @property
    def username(self) -> str | None:
        return os.environ.get(USERNAME_ENV) or None

    def with_name(self, name: str) -> RedisLocation:
        return RedisLocation(self.host, self.port, self.db, _checked_name(name, str(self)), self.tls)


StoreLocation = Path | RedisLocation


def parse_store(text: str | Path) -> StoreLocation:
    """``redis://`` / ``rediss://`` addresses -> `RedisLocation`; anything else is a folder path."""
    if isinstance(text, Path) or not re.match(r"^[a-z][a-z0-9+.-]*://", str(text)):
        return Path(text)
    parts = urlsplit(str(text))
    if parts.scheme not in ("redis", "rediss"):
        raise StoreError(f"--store {text}: a store is a folder or a redis:// or rediss:// address")
    if parts.password is not None or parts.username is not None:
        raise StoreError(
            f"--store {parts.scheme}://...@{parts.hostname}: do not put credentials in the store address "
            f"(it is printed in logs and visible to other users in `ps`); set {PASSWORD_ENV} "
            f"(and {USERNAME_ENV} for an ACL user) in the environment instead"
        )
    if parts.query or parts.fragment:
        raise StoreError(f"--store {text}: a Redis store address takes no ?query or #fragment")
    if not parts.hostname:
        raise StoreError(f"--store {text}: no host; the form is redis://HOST:PORT/DB/NAME")
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise StoreError(f"--store {text}: bad port ({exc})") from exc
    path = [p for p in parts.path.split("/") if p]
    if len(path) > 2:
        raise StoreError(f"--store {text}: the path is /DB/NAME (e.g. redis://host:6379/0/memories)")
    db_text = path[0] if path else "0"
    if not db_text.isdigit():
        raise StoreError(f"--store {text}: the database number must be an integer, got {db_text!r}")
    name = _checked_name(path[1] if len(path) > 1 else DEFAULT_NAME, str(text))
    return RedisLocation(parts.hostname, port, int(db_text), name, parts.scheme == "rediss")


def _checked_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise StoreError(
            f"--store {where}: store name {name!r} must be 1-100 letters, digits, '_', '.' or '-'"
        )
    return name


def store_argument(text: str) -> StoreLocation:
    """argparse ``type=`` of ``--store``: a bad address is a usage error (exit 2)."""
    try:
        return parse_store(text)
    except StoreError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--store {text}: ")) from exc


STORE_HELP = (
    "memory store: a folder of SQLite partitions, or redis://HOST:PORT/DB/NAME (rediss:// for TLS; "
    f"password from ${PASSWORD_ENV})"
)
