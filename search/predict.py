"""`python -m search.predict`: an exported table model's predictions for new rows
(search.artifacts.predict does the work).

    python -m search.predict --model results/diamonds-price --data new.csv --out predictions.csv

The rows are matched to the training columns by name; missing values and unseen categories are
handled as in training. The CSV holds a `prediction` column, and for classification one
`proba_<class>` column per class.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search.artifacts.predict import predict_file
from search.cli import ArgumentParser, run_main
from search.schema import PREDICTIONS_CSV


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.predict",
        description="Predict new rows with a table study's exported model (python -m search.export).",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="the export's folder: results/<study>")
    p.add_argument("--data", required=True, metavar="PATH", help="a CSV or Parquet table of rows")
    p.add_argument("--out", metavar="PATH", help=f"the CSV to write (default: DIR/{PREDICTIONS_CSV})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    path, n = predict_file(model=args.model, data=args.data, out=args.out, device=args.device)
    print(f"predicted {n} row(s); wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("python -m search.predict", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
