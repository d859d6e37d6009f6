"""What hubcull must remember across restarts: warnings sent, and keeps asked for.

A small SQLite file (the standard library's ``sqlite3``), written as things happen and
read once at start. A warning is never sent twice because hubcull restarted, and a
user's keep outlives a restart. Everything else hubcull knows it reads again from the
Hub.

The file is never allowed to stop culling: if it cannot be read (corrupt, from a newer
version, a disk error), it is moved aside, logged, and a fresh one is started; if it
cannot be written, hubcull goes on with what it holds in memory and says so once.
Writes are small and rare (a warning, a keep), so they are made on the event loop.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .events import StopAnswered, StopConfirmed, UserDeleted
from .model import Server, StopOutcome
from .policy import Marks

SCHEMA_VERSION = 1
Key = tuple[str, str]  # (user, server name)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS warnings (
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    cull_at TEXT NOT NULL,      -- the cull the warning announced
    warned_at TEXT NOT NULL,
    PRIMARY KEY (user, server)
);
CREATE TABLE IF NOT EXISTS keeps (
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    started TEXT,               -- the server's start: a later start is a new server
    kept_until TEXT NOT NULL,
    kept_by TEXT NOT NULL,
    kept_at TEXT NOT NULL,
    PRIMARY KEY (user, server)
);
"""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class WarningSent:
    """A warning sent: which cull it announced, and when."""

    cull_at: datetime
    warned_at: datetime


@dataclass(frozen=True, slots=True)
class Keep:
    """A user's request to keep a server until a moment, for as long as it runs."""

    kept_until: datetime
    kept_by: str
    kept_at: datetime
    started: datetime | None  # the server's start when it was kept


class StateStore:
    """Warnings and keeps, in memory and in the state file."""

    def __init__(self, path: str | None, log: logging.Logger | None = None) -> None:
        self.path = path
        self.log = log or logging.getLogger("hubcull")
        self.warnings: dict[Key, WarningSent] = {}
        self.keeps: dict[Key, Keep] = {}
        self._db: sqlite3.Connection | None = None
        self._write_failed = False
        if path:
            self._open(path)

    # --- opening, and surviving a bad file ---------------------------------------------

    def _open(self, path: str) -> None:
        try:
            self._db = self._connect(path)
            self._load()
        except (sqlite3.DatabaseError, ValueError, TypeError, OSError) as e:
            if self._db is not None:
                self._db.close()
                self._db = None
            self.warnings.clear()
            self.keeps.clear()
            aside = self._move_aside(path)
            self.log.error(
                "The state file %s cannot be read (%s): %s; starting a new one, so warnings "
                "already sent may be sent again and keeps are forgotten",
                path,
                e,
                f"moved to {aside}" if aside else "removed",
            )
            try:
                self._db = self._connect(path)
            except (sqlite3.DatabaseError, OSError) as e2:
                self._db = None
                self.log.error(
                    "Cannot create the state file %s (%s): warnings and keeps are kept in "
                    "memory only until hubcull restarts",
                    path,
                    e2,
                )

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=5)
        db.executescript(SCHEMA)
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version[0]) > SCHEMA_VERSION:
            raise ValueError(f"written by a newer hubcull (schema {version[0]})")
        return db

    @staticmethod
    def _move_aside(path: str) -> str | None:
        aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            os.replace(path, aside)
            return aside
        except FileNotFoundError:
            return None
        except OSError:
            try:
                os.unlink(path)
            except OSError:
                pass
            return None

    def _load(self) -> None:
        assert self._db is not None
        for user, server, cull_at, warned_at in self._db.execute(
            "SELECT user, server, cull_at, warned_at FROM warnings"
        ):
            self.warnings[(user, server)] = WarningSent(_dt(cull_at), _dt(warned_at))  # type: ignore[arg-type]
        for user, server, started, until, by, at in self._db.execute(
            "SELECT user, server, started, kept_until, kept_by, kept_at FROM keeps"
        ):
            self.keeps[(user, server)] = Keep(_dt(until), by, _dt(at), _dt(started))  # type: ignore[arg-type]

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection | None]:
        """The connection to write with (None: memory only); a failure is said once."""
        if self._db is None:
            yield None
            return
        try:
            yield self._db
        except sqlite3.Error as e:
            if not self._write_failed:
                self._write_failed = True
                self.log.error(
                    "Cannot write the state file %s (%s): going on with what is in memory",
                    self.path,
                    e,
                )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- warnings ----------------------------------------------------------------------

    def warned(self, user: str, server: str, cull_at: datetime, at: datetime) -> None:
        key = (user, server)
        self.warnings[key] = WarningSent(cull_at, at)
        with self._writing() as db:
            if db is not None:
                db.execute(
                    "INSERT OR REPLACE INTO warnings (user, server, cull_at, warned_at) "
                    "VALUES (?, ?, ?, ?)",
                    (*key, _iso(cull_at), _iso(at)),
                )

    # --- keeps -------------------------------------------------------------------------

    def keep(self, key: Key, keep: Keep) -> None:
        self.keeps[key] = keep
        with self._writing() as db:
            if db is not None:
                db.execute(
                    "INSERT OR REPLACE INTO keeps (user, server, started, kept_until, kept_by, "
                    "kept_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        *key,
                        _iso(keep.started),
                        _iso(keep.kept_until),
                        keep.kept_by,
                        _iso(keep.kept_at),
                    ),
                )

    # --- forgetting ----------------------------------------------------------------------

    def forget(self, key: Key) -> None:
        """The server stopped: its warning and its keep end with it."""
        had = self.warnings.pop(key, None) is not None
        had = self.keeps.pop(key, None) is not None or had
        if had:
            with self._writing() as db:
                if db is not None:
                    db.execute("DELETE FROM warnings WHERE user = ? AND server = ?", key)
                    db.execute("DELETE FROM keeps WHERE user = ? AND server = ?", key)

    def forget_keep(self, key: Key) -> bool:
        if self.keeps.pop(key, None) is None:
            return False
        with self._writing() as db:
            if db is not None:
                db.execute("DELETE FROM keeps WHERE user = ? AND server = ?", key)
        return True

    def retain(self, listed: set[Key], since: datetime) -> None:
        """After a complete pass that began at ``since``: servers it did not list have
        stopped (unless warned or kept after it began: it may have read them before)."""
        stale = {k for k, w in self.warnings.items() if k not in listed and w.warned_at < since}
        stale |= {k for k, kp in self.keeps.items() if k not in listed and kp.kept_at < since}
        for key in stale:
            self.forget(key)

    # --- what the engine asks (engine/marks.py) -----------------------------------------

    def marks(self, user: str, server: Server) -> Marks:
        key = (user, server.name)
        sent = self.warnings.get(key)
        kept = self.keeps.get(key)
        if kept is not None and kept.started != server.started:
            self.forget_keep(key)  # a keep ends with its server: this is a new start
            kept = None
        return Marks(
            warned_cull_at=None if sent is None else sent.cull_at,
            warned_at=None if sent is None else sent.warned_at,
            kept_until=None if kept is None else kept.kept_until,
            kept_by=None if kept is None else kept.kept_by,
        )

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """A stopped server's warning and keep end with it."""
        return {
            StopAnswered: self._answered,
            StopConfirmed: lambda e: self.forget((e.user, e.server)),
            UserDeleted: self._user_deleted,
        }

    def _answered(self, e: StopAnswered) -> None:
        if e.outcome is not StopOutcome.STOPPING:
            self.forget((e.user, e.server))

    def _user_deleted(self, e: UserDeleted) -> None:
        for key in [k for k in (*self.warnings, *self.keeps) if k[0] == e.user.name]:
            self.forget(key)
