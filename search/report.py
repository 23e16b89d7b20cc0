"""`python -m search.report`: one self-contained HTML page about a study, readable offline.

History, learning curves, parallel coordinates, importances, slices, the best trials and warnings
about ranges whose bounds the best trials crowd (search.pages.report draws them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna

from search.cli import ArgumentParser, run_main
from search.pages.report import write_report
from search.schema import REPORT_HTML as REPORT
from search.schema import RESULTS_DIR
from search.storage.connect import DEFAULT_STORAGE


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.report",
        description="Write one self-contained HTML report (works offline) of a study.",
    )
    p.add_argument("--study-name", default=None, help="the Optuna study (default: the only one)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="any Optuna storage URL")
    p.add_argument("--results-dir", default=RESULTS_DIR, help="the page goes to RESULTS_DIR/<study>/")
    p.add_argument("--out", default=None, help=f"write here instead of RESULTS_DIR/<study>/{REPORT}")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    report = write_report(
        storage_url=args.storage, study_name=args.study_name, results_dir=args.results_dir, out=args.out
    )
    print(f"wrote {report.path} (study {report.study_name}, {report.n_trials} trials)")
    for w in report.warnings:
        print(f"warning: {w.message()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("python -m search.report", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
