"""`python -m search.serve`: Optuna's gRPC storage proxy in front of a database, for many workers.

    python -m search.serve --storage postgresql://user@dbhost/search --host 0.0.0.0 --port 13000
    python -m search.run --study cifar10 --trials 50 --storage grpc://proxyhost:13000   # each machine

It prints the grpc:// URL workers pass, serves until Ctrl-C or SIGTERM (exit 130, 143), and
meanwhile fails and retries the trials of workers that stopped beating (search.storage.serve).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import optuna

from search.cli import EXIT_SIGINT, EXIT_SIGTERM, ArgumentParser, positive_int, run_main
from search.storage.connect import dashboard_command, redacted
from search.storage.proxy import DEFAULT_PORT
from search.storage.serve import servable_url, serve, served_storage

PROG = "python -m search.serve"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Serve a PostgreSQL (or MySQL) storage to many workers through Optuna's gRPC proxy; "
        "workers pass the grpc:// URL it prints as --storage.",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        required=True,
        help="the database behind it, e.g. postgresql://user@host/db",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port to listen on")
    return p


def _port(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1 to 65535)")
    return port


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = servable_url(args.storage)
    storage = served_storage(url)

    def ready(grpc_url: str) -> None:
        print(grpc_url)
        print(f"workers: python -m search.run --storage {grpc_url} ...")
        print(f"dashboard: {dashboard_command(url)}")
        print(f"serving {redacted(url)}; Ctrl-C or SIGTERM stops it", flush=True)

    def silent(s) -> None:
        print(f"trial {s.number} of {s.study}: {s.silent_s:.0f} s without a heartbeat from {s.worker}; "
              "failed and queued again", flush=True)  # fmt: skip

    def error(message: str) -> None:
        print(f"{PROG}: warning: looking for silent trials: {message}", file=sys.stderr, flush=True)

    stopped = serve(storage, host=args.host, port=args.port, on_ready=ready, on_silent=silent, on_error=error)
    print(f"stopped by {stopped}", flush=True)
    return EXIT_SIGTERM if stopped == "SIGTERM" else EXIT_SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
