"""Database URLs as users write them (``postgresql://...``) mapped to the driver we ship (psycopg 3)."""

from __future__ import annotations

import sqlalchemy as sa

POSTGRES_DRIVER = "psycopg"
"""SQLAlchemy's name for psycopg 3 (the `postgres` extra installs it); plain `postgresql://` would mean psycopg2."""


def sqlalchemy_url(url: str) -> str:
    """Return `url` with psycopg 3 as the driver of a `postgresql://` or `postgres://` URL; others unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    return f"postgresql+{POSTGRES_DRIVER}://{rest}"


def is_postgresql(url: str) -> bool:
    """Return whether `url` names a PostgreSQL database (any driver)."""
    try:
        return sa.engine.make_url(sqlalchemy_url(url)).get_backend_name() == "postgresql"
    except sa.exc.ArgumentError:
        return False


def redacted(url: str) -> str:
    """Return `url` with its password hidden, for logs and messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
