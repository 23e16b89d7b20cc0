"""`python -m search.retrain --config best.json`: retrain an exported config from scratch, then test it.

On the search's train split (the trial's seed reproduces its validation accuracy on the CPU), or
with `--full` on train + validation; `--seeds K` reports the test accuracy as mean ± std.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search import cli
from search.artifacts.evaluation import best_config, read_best
from search.posthoc.retrain import PROG, mean_line, retrain, seed_line
from search.schema import ATTR_DEVICE, RETRAIN_DIR
from search.training.fit import EpochMetrics

# ---------------------------------------------------------------------------- command line


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog=PROG,
        description="Retrain an exported config from scratch and evaluate it once on the test split.",
    )
    p.add_argument(
        "--config", metavar="BEST_JSON", required=True, help="best.json written by python -m search.export"
    )
    p.add_argument(
        "--epochs", metavar="N", type=cli.positive_int, default=None, help="override the config's epochs"
    )
    p.add_argument(
        "--seeds", metavar="K", type=cli.positive_int, default=1, help="train K times: seeds seed..seed+K-1"
    )
    p.add_argument("--full", action="store_true", help="train on train + validation (final model)")
    p.add_argument(
        "--ensemble", action="store_true",
        help="retrain every member of the exported ensemble (ensemble.pt beside --config) per seed",
    )  # fmt: skip
    p.add_argument(
        "--out", metavar="DIR", default=None, help=f"output folder (default: {RETRAIN_DIR}/ beside --config)"
    )
    cli.add_training_flags(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    best = read_best(args.config)  # fail on a bad file before choosing a device or loading data
    epochs = args.epochs or best_config(best, where=args.config).epochs
    device = cli.training_device(args.device)
    with cli.progress_bar(
        "retraining", "epoch", hidden=args.no_progress, total=None if args.ensemble else args.seeds * epochs
    ) as bar:

        def on_epoch(seed: int, m: EpochMetrics) -> None:
            bar.set_description(f"seed {seed}", refresh=False)
            bar.update(1)

        done = retrain(
            args.config, device=device, epochs=args.epochs, seeds=args.seeds, full=args.full,
            out_dir=args.out, data_dir=args.data_dir, argv=argv, on_epoch=on_epoch, ensemble=args.ensemble,
        )  # fmt: skip
    value, first, metric = done.best["value"], done.runs[0].seed, done.runs[0].evaluation.metric
    lines = [seed_line(run) for run in done.runs] + [mean_line(*done.test_mean_std, len(done.runs), metric)]
    if done.reproduced is True:
        lines.append(f"seed {first} reproduced the trial's validation {metric} {value:.4f} exactly")
    elif done.reproduced is False:
        device_then = done.best.get("trial_user_attrs", {}).get(ATTR_DEVICE, "?")
        lines.append(
            f"seed {first} did not reproduce the trial's validation {metric} {value:.4f} "
            f"(the search trained on {device_then}, this on {device})"
        )
    return cli.finish(lines, done.files, done.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
