"""`python -m search.export`: turn a study's best trial into files a user can take away.

Writes into results/<study>/ (or --out): best.json, model.pt, model.txt, test_report.txt/.json,
trials.csv, predictions.png and errors.png (search.artifacts.export says what each holds); with
--quantize int8 and --half also model-int8.pt and model-half.pt (search.artifacts.smaller).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from search import cli
from search.artifacts.evaluation import score_line
from search.artifacts.export import PROG, export_study
from search.artifacts.refit import AUTO_FOLDS, AUTO_MAX_ROWS
from search.artifacts.smaller import QUANTIZE
from search.tuning.trials import value_of

DESCRIPTION = (
    "Export a study's best trial: best.json, model.pt, model.txt, test_report.{txt,json} and trials.csv."
)


def build_parser() -> cli.ArgumentParser:
    p = cli.study_parser(PROG, DESCRIPTION, results="where the search kept the best weights")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RESULTS_DIR/<study>/)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the best config with its seed instead of using the search's weights",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="also write model-int8.pt: the Linear layers dynamically quantized (CPU), with its test "
        "figure, size and latency beside the float model's",
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="also write model-half.pt: the weights in float16, with its test figure, size and latency",
    )
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tables: train the chosen model again on the training and validation rows and export that "
        "(the search's own model is scored on the test split beside it)",
    )
    p.add_argument(
        "--crossfit",
        type=cli.non_negative_int,
        metavar="K",
        default=None,
        help="tables: instead of one refit, train each chosen config K times, each time leaving one fold "
        f"of the training and validation rows out, and export the K models averaged (ensemble.pt; "
        f"K times the refit's training); 0: one refit (default: {AUTO_FOLDS} for a table of at most "
        f"{AUTO_MAX_ROWS:,} training and validation rows, else 0)",
    )
    p.add_argument("--max-params", type=cli.positive_int, metavar="N",
                   help="export the best trial with at most N parameters (never the ensemble)")  # fmt: skip
    p.add_argument("--max-latency-ms", type=cli.milliseconds, metavar="MS",
                   help="export the best trial whose latency the search measured at most MS milliseconds "
                   "(and never the ensemble)")  # fmt: skip
    cli.add_training_flags(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    device = cli.training_device(args.device)
    storage_url = cli.study_storage(args.storage)
    with cli.progress_bar("retraining", "epoch", hidden=args.no_progress) as bar:

        def on_epoch(m) -> None:
            bar.update(1)
            bar.set_postfix(val=f"{m.val_score:.4f}", refresh=False)

        done = export_study(
            storage_url=storage_url, study_name=args.study_name, out_dir=args.out,
            results_dir=args.results_dir, device=device, data_dir=args.data_dir, retrain=args.retrain,
            argv=argv, on_epoch=on_epoch, quantize=args.quantize, half=args.half, refit=args.refit,
            crossfit=args.crossfit,
            max_params=args.max_params, max_latency_ms=args.max_latency_ms,
        )  # fmt: skip
    ev, score = done.evaluation, value_of(done.trial)
    lines = [
        f"study {done.study}: best trial {done.trial.number}, validation {ev.metric} {score:.4f}",
        done.weights.note,
        *done.ensemble_lines,
        score_line(ev),
        *done.smaller_lines,
    ]
    return cli.finish(lines, done.files, done.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
