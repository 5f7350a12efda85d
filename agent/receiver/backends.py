"""The receiver's storage backends, chosen by ``--db`` (see :mod:`agent.receiver.storage`)."""

from __future__ import annotations

from pathlib import Path

from agent.receiver.storage import SqlStorage


def open_storage(db: str | Path, *, create: bool = True) -> SqlStorage:
    """The backend for ``db``: a ``postgresql://`` (or ``postgres://``) URL, else a SQLite file."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        from agent.receiver.pg_backend import PgStorage

        return PgStorage(text, create=create)
    from agent.receiver.sqlite_backend import SqliteStorage

    return SqliteStorage(db, create=create)
