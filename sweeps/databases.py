"""Relational stores a sweep writes to (MLflow's tracking database): checked before Ray starts.

A team's MLflow usually lives in PostgreSQL, reached with a URL such as
`postgresql+psycopg2://mlflow:${POSTGRES_PASSWORD}@db.example.org/mlflow`. The checks here turn
what the driver would otherwise meet minutes later, deep in a traceback, into one sentence
that names the store (its password masked), the cause in plain words and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.store.db_migrations
import sqlalchemy
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

# Engines MLflow can keep its tracking store in, besides sqlite files (mlflow.store.db.db_types).
SERVER_BACKENDS = frozenset({"postgresql", "mysql", "mssql"})
# Tables every MLflow schema has had: a database without them is new to MLflow.
MLFLOW_CORE_TABLES = frozenset({"experiments", "runs"})
USER_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^/@\s]*@")
SECRET_QUERY_KEYS = re.compile(r"([?&](?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)
MASK = "***"

# Driver messages, lower-cased, by what they mean to the user (PostgreSQL via libpq; MySQL).
_NO_DATABASE = re.compile(r'database ".*" does not exist|unknown database')
_BAD_CREDENTIALS = re.compile(
    r'password authentication failed|role ".*" does not exist|no password supplied'
    r"|no pg_hba\.conf entry|access denied for user"
)
_UNREACHABLE = re.compile(
    r"connection refused|could not translate host name|timeout expired|timed out"
    r"|no route to host|network is unreachable|can't connect to"
)


class DatabaseError(RuntimeError):
    """A database store cannot be reached or used; the message never holds its password."""


def masked(url: str) -> str:
    """`url` with its password (in the user part or the query) replaced by `***`; also text
    that holds such URLs, e.g. an error message."""
    try:
        parsed = make_url(url)
        text = parsed.render_as_string(hide_password=True) if parsed.password is not None else url
    except ArgumentError:  # not one URL SQLAlchemy reads: mask each user:password@ part
        text = USER_PASSWORD.sub(rf"\g<1>{MASK}@", url)
    return SECRET_QUERY_KEYS.sub(rf"\g<1>{MASK}", text)


def resolved_uri(uri: str) -> str:
    """`uri` with its `${VAR}` references read from the environment: a store's password is
    written as a reference and stays out of what the sweep folder keeps."""
    return os.path.expandvars(uri)


def has_literal_password(url: str) -> bool:
    """Whether `url` holds a password written into it rather than a `${VAR}` reference."""
    password = make_url(url).password
    return password is not None and not str(password).startswith("$")


def is_database_url(url: str) -> bool:
    """A URL of a database server (PostgreSQL, MySQL, SQL Server), with or without its driver
    named: not a sqlite file, not an http(s) tracking server."""
    try:
        return make_url(url).get_backend_name() in SERVER_BACKENDS
    except ArgumentError:
        return False


def check_database(url: str, purpose: str, timeout_s: float = 5.0) -> None:
    """Connect once; DatabaseError naming `purpose`, the masked URL and why it failed
    (unreachable host or port, credentials refused, no such database, driver not installed).
    Credentials come from the URL only."""
    with _connected(url, purpose, timeout_s):
        pass


def check_mlflow_schema(url: str, timeout_s: float = 5.0) -> None:
    """DatabaseError unless the database is new to MLflow (it creates its tables) or holds
    MLflow's tables at the schema of the installed MLflow.

    An older schema is refused rather than left to MLflow: its store migrates a database
    whose newest tables are missing on its own, which would change a team's shared database
    under the MLflow server the team runs, and it fails on the others only when the sweep
    first logs, after Ray has started."""
    purpose = "MLflow tracking store"
    with _connected(url, purpose, timeout_s) as connection:
        tables = set(sqlalchemy.inspect(connection).get_table_names())
        found = _alembic_revision(connection) if "alembic_version" in tables else None
    if found is None and not tables & MLFLOW_CORE_TABLES:
        return  # empty, or other applications' tables only
    head = mlflow_schema_head()
    if found == head:
        return
    version = mlflow.__version__
    shown = masked(url)
    if found is not None and not _known_revision(found):
        raise DatabaseError(
            f"{purpose} {shown} holds schema revision {found}, which MLflow {version} does not "
            f"know (expected {head}): the database belongs to a newer MLflow or to another "
            f"application; install the MLflow version the team's server runs, or use another "
            f"database"
        )
    what = f"revision {found}" if found else "MLflow tables without a schema revision"
    raise DatabaseError(
        f"{purpose} {shown} has MLflow's tables at an older schema ({what}; MLflow {version} "
        f"expects {head}); back the database up, then upgrade it with: mlflow db upgrade "
        f"{shown} (and run the team's MLflow server at {version} too)"
    )


def mlflow_schema_head() -> str:
    """The schema revision the installed MLflow writes: the head of its own alembic scripts."""
    return _mlflow_migrations().get_current_head()


@functools.cache
def _mlflow_migrations() -> ScriptDirectory:
    return ScriptDirectory(str(Path(mlflow.store.db_migrations.__file__).parent))


def _known_revision(revision: str) -> bool:
    try:
        return _mlflow_migrations().get_revision(revision) is not None
    except CommandError:
        return False


def _alembic_revision(connection: sqlalchemy.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _connected(url: str, purpose: str, timeout_s: float) -> Iterator[sqlalchemy.Connection]:
    """One connection to `url`; a failure to connect or to read through it becomes a
    DatabaseError in plain words."""
    engine = None
    try:
        try:
            parsed = make_url(url)
            engine = sqlalchemy.create_engine(
                parsed,
                connect_args=_timeout_args(parsed, timeout_s),
                poolclass=sqlalchemy.pool.NullPool,  # one check, one connection, none kept
            )
            connection = engine.connect()
        except ImportError as exc:  # the URL's DBAPI module (psycopg, pymysql, ...)
            raise _failure(url, purpose, exc) from None
        with connection:
            yield connection
    except SQLAlchemyError as exc:
        # Not chained: a driver's error object can carry connection parameters, and its text
        # is already in the message, scrubbed.
        raise _failure(url, purpose, exc) from None
    finally:
        if engine is not None:
            engine.dispose()


def _timeout_args(url: URL, timeout_s: float) -> dict[str, int]:
    # libpq and the MySQL drivers take whole seconds; a host that drops packets would
    # otherwise hold the driver for the operating system's TCP timeout (minutes).
    if url.get_backend_name() in ("postgresql", "mysql"):
        return {"connect_timeout": max(1, math.ceil(timeout_s))}
    return {}


def _failure(url: str, purpose: str, exc: BaseException) -> DatabaseError:
    shown = masked(url)
    cause = _cause(url, exc)
    text = cause.lower()
    if isinstance(exc, (ImportError, NoSuchModuleError)):
        return DatabaseError(
            f"{purpose} {shown}: the URL's database driver is not installed ({cause}); for "
            f"PostgreSQL use postgresql+psycopg2://..., the driver this project installs "
            f"(psycopg2-binary)"
        )
    if isinstance(exc, ArgumentError):
        return DatabaseError(f"{purpose} {shown}: not a database URL ({cause})")
    if _NO_DATABASE.search(text):
        return DatabaseError(
            f"{purpose} {shown}: the database does not exist ({cause}); create it "
            f"({_create_hint(url)}) or correct the database name in the URL"
        )
    if _BAD_CREDENTIALS.search(text):
        return DatabaseError(
            f"{purpose} {shown}: authentication failed, wrong user name or password ({cause}); "
            "take them from the environment, e.g. "
            "postgresql+psycopg2://mlflow:${POSTGRES_PASSWORD}@HOST/mlflow"
        )
    if _UNREACHABLE.search(text):
        return DatabaseError(
            f"{purpose} {shown} is unreachable ({cause}); check the host and port in the URL "
            "and that the database server runs and accepts connections from this machine"
        )
    return DatabaseError(f"{purpose} {shown} cannot be used ({cause})")


def _cause(url: str, exc: BaseException) -> str:
    """The driver's own first line (SQLAlchemy's wrapper adds SQL and links), on one line,
    with the URL's password taken out wherever the driver echoed it."""
    original = getattr(exc, "orig", None) or exc
    lines = [line for line in str(original).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else type(original).__name__
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text


def _secrets(url: str) -> list[str]:
    """The URL's passwords: in its user part, and in its query (`?password=`)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in ("password", "passwd", "pwd"):
            found += [value] if isinstance(value, str) else list(value)
    secrets = [str(secret) for secret in found if secret]
    return secrets + [urllib.parse.quote(secret, safe="") for secret in secrets]


def _create_hint(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        host = parsed.host or "localhost"
        user = f" -U {parsed.username}" if parsed.username else ""
        port = f" -p {parsed.port}" if parsed.port else ""
        return f"createdb -h {host}{port}{user} {parsed.database}"
    return f"CREATE DATABASE {parsed.database}"
