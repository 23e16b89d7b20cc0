"""`python -m search.serve`: Optuna's gRPC storage proxy in front of one database, for many workers.

The proxy (Optuna's `run_grpc_proxy_server`) holds a few database connections and one trial cache
for every worker that passes `--storage grpc://HOST:PORT`, instead of each worker holding its own
and re-reading the study from the database before each trial. Beside it, this process fails and
retries the trials of workers that stopped beating (search.storage.silent): the
proxy forwards none of Optuna's heartbeats, and every beat passes through here.

SQLite is refused behind it: a file on one machine is for the workers of that machine, which open
it directly (`--jobs N`); putting a network hop in front of its one write lock gains nothing.
"""

from __future__ import annotations

import signal
import socket
import threading
import warnings
from collections.abc import Callable
from contextlib import closing

import optuna
from sqlalchemy.engine import make_url

from search.errors import UserError, described
from search.storage import _batched, proxy
from search.storage.connect import check_storage, normalize_url, open_storage, redacted
from search.storage.silent import Silent, SilentTrials

CHECK_EVERY_S = 5.0  # how often the serve process looks for silent trials
READY_TIMEOUT_S = 30.0


def servable_url(url: str) -> str:
    """The checked URL of the database to serve; SQLite and another proxy refused in one line,
    before anything is opened."""
    url = normalize_url(url)
    if proxy.is_proxy_url(url):
        raise UserError(f"--storage {url}: a proxy serves a database (postgresql://...), not another proxy")
    if make_url(url).get_backend_name() == "sqlite":
        raise UserError(
            f"--storage {redacted(url)}: SQLite is one file on one machine; its workers open it "
            "directly (python -m search.run --jobs N), a proxy in front of its one write lock gains "
            "nothing. Serve PostgreSQL or MySQL"
        )
    return check_storage(url)


def served_storage(url: str) -> optuna.storages.BaseStorage:
    """The database behind the proxy (`url` from `servable_url`).

    Optuna's proxy documentation asks for its trial cache behind the proxy; `BatchedStorage` is
    that cache, holding back the writes to running trials until the next read of the study, as it
    does in a worker (every trial through the proxy is created by this process). Measured with 16
    storage-only workers (docs/benchmarks.md, the storage load): 38.7 trials/s against 21.6 with
    Optuna's cache alone, since the server's Python, not the database, is what limits the proxy.
    """
    backend = open_storage(url, heartbeat_s=None)
    assert isinstance(backend, optuna.storages.RDBStorage)  # servable_url refuses proxy URLs
    if _batched.available():
        return _batched.BatchedStorage(backend)
    return optuna.storages.get_storage(backend)


def check_port_free(host: str, port: int) -> None:
    """gRPC binds with SO_REUSEPORT, so a second proxy on a busy port would quietly share it;
    a plain bind fails on a port anyone holds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with closing(socket.socket(family, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(
    storage: optuna.storages.BaseStorage,
    *,
    host: str,
    port: int,
    on_ready: Callable[[str], None] = lambda url: None,
    on_silent: Callable[[Silent], None] = lambda s: None,
    on_error: Callable[[str], None] = lambda message: None,
    check_every_s: float = CHECK_EVERY_S,
) -> str:
    """Serve `storage` at grpc://host:port until SIGINT or SIGTERM; returns which one stopped it.

    `on_ready` gets the URL workers pass once the proxy answers; `on_silent` each trial failed and
    retried for its worker's silence; `on_error` what went wrong looking for them (the proxy keeps
    serving, and the next look tries again).
    """
    check_port_free(host, port)
    stop, got = threading.Event(), []

    def on_signal(signum, frame) -> None:
        got.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = start_proxy(storage, host, port)
        on_ready(proxy.url_of(host, port))
        silent = SilentTrials()
        while not stop.wait(check_every_s):
            if not server.is_alive():
                raise RuntimeError(f"the gRPC proxy stopped: {server.error}")
            try:
                for s in silent.check(storage):
                    on_silent(s)
            except Exception as e:  # a database blip: the next look tries again
                on_error(described(e))
    finally:
        stop_holding = getattr(storage, "stop_holding", None)
        if stop_holding is not None:  # the proxy answers until the process exits: hold nothing
            stop_holding()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return "SIGTERM" if got[0] == signal.SIGTERM else "SIGINT"


class _ServerThread(threading.Thread):
    """Optuna's proxy server, which blocks its caller until the process ends (a daemon thread:
    stopping the process stops it; clients of a stopped proxy see their calls fail)."""

    def __init__(self, storage, host: str, port: int):
        super().__init__(name="grpc-proxy", daemon=True)
        self.storage, self.host, self.port = storage, host, port
        self.error: str | None = None

    def run(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.run_grpc_proxy_server(self.storage, host=self.host, port=self.port)
        except Exception as e:
            self.error = described(e)


def start_proxy(storage, host: str, port: int) -> _ServerThread:
    """Optuna's proxy serving `storage` on a daemon thread, once it answers."""
    server = _ServerThread(storage, host, port)
    server.start()
    reach = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    client = proxy.open_proxy(proxy.url_of(reach, port))
    try:
        for _ in range(int(READY_TIMEOUT_S / 0.5)):
            try:
                client.wait_server_ready(timeout=0.5)
                return server
            except ConnectionError:
                if not server.is_alive():
                    break
    finally:
        client.close()
    raise UserError(f"the gRPC proxy did not start on {host}:{port}: {server.error or 'no answer'}")
