"""`python -m search.bench`: how fast training runs, and how well the search spends its time.

    python -m search.bench                  the notebook's DataLoader loop against search's fit
    python -m search.bench --suite          the one-call GPU check (bench, then timed searches)
    python -m search.bench --augment        what flips, shifts, one-cycle and label smoothing cost
    python -m search.bench --precision      an epoch under float32 against bf16 autocast
    python -m search.bench --quality        TPE + pruning against random at the same wall time
    python -m search.bench --stack          a search at stack 1, 4, 16 and 64: trials per hour, best
    python -m search.bench --storage-load --storage postgresql://...   16 workers, direct and proxied

Each writes its figures as JSON with --json PATH (search.perf holds the measurements and their flags).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search.artifacts.provenance import collect
from search.cli import ArgumentParser, run_main
from search.device import resolve_device
from search.perf.bench import add_arguments, measure, request_from_args, write_json

PROG = "python -m search.bench"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Seconds per training epoch: the notebook's DataLoader loop against "
        "search.training.fit.fit, same device, data, model and batch size; or, with one of the "
        "measurement flags below, another measurement.",
    )
    add_arguments(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    request = request_from_args(args)
    result, table = measure(request, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:  # what produced the figures travels with them
        result["provenance"] = collect(prog=PROG, argv=argv, device=resolve_device(args.device))
        write_json(result, args.json)
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
