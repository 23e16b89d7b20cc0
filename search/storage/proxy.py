"""`grpc://HOST:PORT`: a storage reached through Optuna's gRPC proxy (`python -m search.serve`).

With many workers, each holding its own database connections and re-reading the study before
each trial, one PostgreSQL server becomes the bottleneck; Optuna's proxy holds the connections
once and serves every worker from one cache. A worker's client is `search.storage._beats`'s
`BeatingProxy`, whose heartbeats the serve process watches (the proxy forwards none of Optuna's).

What the proxy cannot do: open a database read-only. Commands that only read (export, report,
compare) read through it as through any storage; nothing in them writes, but the driver does not
enforce it as SQLite's `mode=ro` does.
"""

from __future__ import annotations

import urllib.parse
import warnings

import optuna

from search.errors import UserError
from search.optuna_versions import internals_allowed
from search.storage._grpc_check import require_grpc

SCHEME = "grpc"
DEFAULT_PORT = 13000
REACH_TIMEOUT_S = 5.0  # how long a check waits for the proxy to answer


def is_proxy_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SCHEME}://")


def address(url: str) -> tuple[str, int]:
    """(host, port) of a grpc://HOST:PORT URL; one-line error for anything else after grpc://."""
    example = f"e.g. grpc://127.0.0.1:{DEFAULT_PORT}, as python -m search.serve prints it"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise UserError(f"--storage {url!r} is not a gRPC proxy URL; {example}")
    return host, port


def canonical(url: str) -> str:
    return url_of(*address(url))


def url_of(host: str, port: int) -> str:
    return f"{SCHEME}://[{host}]:{port}" if ":" in host else f"{SCHEME}://{host}:{port}"


def check_reachable(url: str) -> str:
    """The canonical URL, once the proxy behind it answers; one line saying how to start it if not."""
    url = canonical(url)
    require_grpc()
    host, port = address(url)
    client = _client(host, port)
    try:
        client.wait_server_ready(timeout=REACH_TIMEOUT_S)
    except ConnectionError:
        raise UserError(
            f"cannot reach the gRPC storage proxy at {url}; start it with "
            f"python -m search.serve --storage postgresql://USER@DBHOST/DBNAME --host {host} --port {port}"
        ) from None
    finally:
        client.close()
    return url


def _client(host: str, port: int, heartbeat_s: int | None = None) -> optuna.storages.GrpcStorageProxy:
    from search.storage._beats import beating_client  # imports gRPC, which only grpc:// needs

    with warnings.catch_warnings():
        # The proxy is marked experimental in Optuna; the warning tells our users nothing.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_s:
            return beating_client(
                host=host, port=port, heartbeat_s=heartbeat_s, internals=internals_allowed()
            )
        return optuna.storages.GrpcStorageProxy(host=host, port=port)


def open_proxy(url: str, *, heartbeat_s: int | None = None) -> optuna.storages.GrpcStorageProxy:
    """A client of the proxy at `url` (already checked); with `heartbeat_s`, one whose running
    trials beat every `heartbeat_s` seconds, so the serve process can retry a dead worker's."""
    host, port = address(url)
    return _client(host, port, heartbeat_s)


def dashboard_command(url: str) -> str:
    """optuna-dashboard's command line takes database URLs only; its Python entry point takes
    any storage, the proxy's client included."""
    host, port = address(url)
    return (
        'python -c "import optuna, optuna_dashboard; optuna_dashboard.run_server('
        f"optuna.storages.GrpcStorageProxy(host='{host}', port={port}), port=8080)\""
    )
