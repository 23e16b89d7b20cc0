"""`python -m search.export`: turn a study's best trial into files a user can take away.

Writes into results/<study>/ (or --out): best.json, model.pt, model.txt, test_report.txt/.json,
trials.csv, predictions.png and errors.png (search.outputs.exporting says what each holds).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna
from tqdm import tqdm

from search.cli import ArgumentParser, run_main, wrote
from search.outputs.exporting import PROG, export_study
from search.storage.connect import DEFAULT_STORAGE, check_storage
from search.training.device import resolve_device, split_cpu_threads

# ---------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Export a study's best trial: best.json, model.pt, "
        "model.txt, test_report.{txt,json} and trials.csv.",
    )
    p.add_argument(
        "--study-name", metavar="NAME", default=None, help="the study (default: the only one in the storage)"
    )
    p.add_argument(
        "--storage", metavar="URL", default=DEFAULT_STORAGE, help="the Optuna storage URL of the search"
    )
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RESULTS_DIR/<study>/)")
    p.add_argument(
        "--results-dir", metavar="DIR", default="results", help="where the search kept the best weights"
    )
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--data-dir", metavar="DIR", default=None, help="dataset directory (default: the search's)"
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the best config with its seed instead of using the search's weights",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar while retraining")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    storage_url = check_storage(args.storage)
    if device.type == "cpu":
        split_cpu_threads(1)  # the thread count run.py trains with: the same float sums
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    bar = tqdm(desc="retraining", unit="epoch", disable=args.no_progress or None, dynamic_ncols=True)

    def on_epoch(m) -> None:
        bar.update(1)
        bar.set_postfix(val_acc=f"{m.val_acc:.4f}", refresh=False)

    try:
        done = export_study(
            storage_url=storage_url,
            study_name=args.study_name,
            out_dir=args.out,
            results_dir=args.results_dir,
            device=device,
            data_dir=args.data_dir,
            retrain=args.retrain,
            argv=argv,
            on_epoch=on_epoch,
        )
    finally:
        bar.close()
    ev = done.evaluation
    print(f"study {done.study}: best trial {done.trial.number}, validation accuracy {done.trial.value:.4f}")
    print(done.weights.note)
    print(f"test accuracy {ev.accuracy:.4f} ({ev.n_correct} of {ev.n} test images)")
    print(wrote(done.files, done.out_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
