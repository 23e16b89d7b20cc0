"""Where trials are kept: SQLite by default, any Optuna RDB URL (PostgreSQL, MySQL) for many workers,
and `grpc://HOST:PORT` for Optuna's gRPC proxy in front of one (search.storage.proxy) beyond that.

Choices, and why:
- SQLite with several local workers: WAL journal (readers such as optuna-dashboard never block
  writers), a long busy timeout, and `BEGIN IMMEDIATE` transactions: a transaction that will
  write takes the lock when it starts, so it waits for it (up to the timeout) rather than
  failing with "database is locked" when it upgrades from reading to writing halfway through.
- Heartbeats on every RDB storage: a worker that dies mid-trial (SIGKILL, power loss) leaves a
  RUNNING trial that the next worker marks FAIL and re-queues with the same params.
- Every check of a URL happens before anything is written, so bad input never touches a database.
- Search workers wrap this storage in `search.storage._batched.BatchedStorage`: a trial's writes go
  out in three transactions instead of about thirty (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from search.errors import UserError, first_line
from search.schema import STUDY_DERIVED_FROM
from search.storage import _batched, proxy

DEFAULT_STORAGE = "sqlite:///results/search.db"
SQLITE_BUSY_TIMEOUT_S = 600  # a worker waits this long for the write lock before failing
DEFAULT_HEARTBEAT_S = 30  # a dead worker's trial is re-queued ~2 heartbeats after it died
MAX_RETRIES = 3  # re-queue a crashed trial at most this often


def redacted(url: str) -> str:
    """The URL as it may be shown or recorded: any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def normalize_url(url: str) -> str:
    """Parse the URL (one-line error if malformed); pick the installed PostgreSQL driver."""
    if proxy.is_proxy_url(url):
        return proxy.canonical(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise UserError(
            f"--storage {url!r} is not a storage URL; e.g. {DEFAULT_STORAGE} or postgresql://user@host/dbname"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the `postgres` extra installs psycopg 3.
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_storage(url: str) -> str:
    """Validate a storage URL without writing anything; return the URL to use."""
    url = normalize_url(url)
    if proxy.is_proxy_url(url):
        return proxy.check_reachable(url)
    path = sqlite_path(url)
    if path is not None:
        if path.is_dir():
            raise UserError(f"--storage {url}: {path} is a directory, not an SQLite file")
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise UserError(f"--storage {url}: {path} is not an SQLite database")
        return url
    if make_url(url).get_backend_name() == "sqlite":
        return url
    try:
        engine = sqlalchemy.create_engine(url, **_connect_args(url))  # imports the driver
    except ImportError as e:
        raise UserError(f"--storage {redacted(url)}: {driver_hint(url, e)}") from None
    except Exception as e:  # an unknown dialect, a malformed URL
        raise UserError(f"--storage {redacted(url)}: {first_line(e)}") from None
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except ImportError as e:
        raise UserError(f"--storage {redacted(url)}: {driver_hint(url, e)}") from None
    except Exception as e:
        raise UserError(f"--storage {redacted(url)}: cannot connect: {first_line(e)}") from None
    finally:
        engine.dispose()
    return url


# What to install for each backend's default driver (SQLAlchemy's choice when the URL names none).
DRIVER_PACKAGES = {
    "postgresql": "pip install -e '.[postgres]' (psycopg 3)",
    "mysql": "pip install mysqlclient, or PyMySQL with a mysql+pymysql:// URL",
    "mariadb": "pip install mariadb, or PyMySQL with a mariadb+pymysql:// URL",
    "oracle": "pip install oracledb",
    "mssql": "pip install pyodbc",
}


def driver_hint(url: str, e: ImportError) -> str:
    """The missing driver's name and the package that brings it."""
    backend = make_url(url).get_backend_name()
    missing = getattr(e, "name", None) or first_line(e)
    install = DRIVER_PACKAGES.get(backend, "install the SQLAlchemy driver this URL names")
    return f"the {backend} driver ({missing}) is not installed: {install}"


def _connect_args(url: str) -> dict:
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if backend == "mysql":
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def _sqlite_engine_kwargs() -> dict:
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}}


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """Take SQLite's write lock when a transaction starts (SQLAlchemy's pysqlite recipe).

    The driver's own BEGIN is off (isolation_level=None in connect_args), so this event owns it.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")  # WAL stays durable across app crashes

    @sqlalchemy.event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks were attached are dropped


def open_storage(url: str, *, heartbeat_s: int | None = DEFAULT_HEARTBEAT_S) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url` (already checked), with heartbeats for crash recovery: an
    RDBStorage, or for grpc:// the proxy's client, whose heartbeats the serve process watches."""
    if proxy.is_proxy_url(url):
        return proxy.open_proxy(url, heartbeat_s=heartbeat_s)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL is a property of the file: set it once, before SQLAlchemy opens it.
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    engine_kwargs = _sqlite_engine_kwargs() if is_sqlite else _connect_args(url)
    with warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna; the warning tells our users nothing.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat = {}
        if heartbeat_s:
            heartbeat = dict(
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=make_retry_callback(),
            )
        storage = _create_rdb_storage(url, engine_kwargs, heartbeat)
    if is_sqlite:
        _begin_immediate(storage.engine)
    return storage


def open_worker_storage(
    url: str, *, heartbeat_s: int | None = DEFAULT_HEARTBEAT_S, batched: bool = True
) -> optuna.storages.BaseStorage:
    """A search worker's storage: `open_storage`'s, with the trial's writes batched
    (search.storage._batched) where this Optuna allows it and the URL is a database's."""
    storage = open_storage(url, heartbeat_s=heartbeat_s)
    if batched and _batched.available() and isinstance(storage, optuna.storages.RDBStorage):
        storage = _batched.BatchedStorage(storage)
    return storage


def make_retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a failed trial: a WAITING copy with its params and user attrs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def _create_rdb_storage(url: str, engine_kwargs: dict, heartbeat: dict) -> optuna.storages.RDBStorage:
    """Workers that start together on a fresh database race to create Optuna's tables; the
    losers see an integrity or "already exists" error once, and succeed on a second look."""
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=dict(engine_kwargs), **heartbeat)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def dashboard_command(url: str) -> str:
    if proxy.is_proxy_url(url):
        return proxy.dashboard_command(url)
    return f"optuna-dashboard {redacted(url)}"


# ---------------------------------------------------------------------------- reading only


def open_readonly(url: str) -> optuna.storages.BaseStorage:
    """The storage at `url` (already checked), opened so that nothing can be written to it (through
    the gRPC proxy, nothing in the caller writes, but the proxy cannot enforce it)."""
    if proxy.is_proxy_url(url):
        return proxy.open_proxy(url)
    path, shown = sqlite_path(url), redacted(url)
    if make_url(url).get_backend_name() == "sqlite":
        if path is None:
            raise UserError(f"--storage {url}: an in-memory database holds no studies")
        if not path.is_file():
            raise UserError(f"--storage {url}: {path} does not exist; run python -m search.run first")
        # SQLite's URI form with mode=ro: the driver itself refuses every write.
        database = "file:" + urllib.parse.quote(str(path.resolve()))
        url = URL.create("sqlite", database=database, query={"mode": "ro", "uri": "true"}).render_as_string()
    engine = sqlalchemy.create_engine(url)
    try:
        has_studies = sqlalchemy.inspect(engine).has_table("studies")
    except Exception as e:  # an unreadable file, a lost connection: name it in one line
        raise UserError(f"--storage {shown}: cannot read: {first_line(e)}") from None
    finally:
        engine.dispose()
    if not has_studies:
        raise UserError(f"--storage {shown} holds no Optuna studies")
    try:
        # skip_table_creation: an RDBStorage otherwise creates any missing table on open.
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except RuntimeError as e:  # a schema from another Optuna version
        raise UserError(f"--storage {shown}: {first_line(e)}") from None


def choose_study(storage: optuna.storages.BaseStorage, name: str | None) -> str:
    """`name` if the storage holds it; with no name, the only study there is (not counting the
    studies derived from another, such as search.audit's `<study>-audit`)."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    names = sorted(s.study_name for s in summaries)
    if not names:
        raise UserError("the storage holds no studies; run python -m search.run first")
    if name is None:
        searched = [s.study_name for s in summaries if STUDY_DERIVED_FROM not in s.user_attrs]
        if len(searched) == 1:
            return searched[0]
        if len(names) > 1:
            raise UserError(
                f"the storage holds {len(names)} studies; pick one with --study-name: " + ", ".join(names)
            )
        return names[0]
    if name not in names:
        raise UserError(f"no study named {name!r} in the storage; known studies: {', '.join(names)}")
    return name
