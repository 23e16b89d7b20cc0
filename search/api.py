"""The Python API: what the commands do, as functions for a notebook or a script.

    import search
    study = search.optimize(study="digits", trials=50)        # an optuna.Study
    search.export_best(study_name="digits")                   # the paths written
    best = search.load_best(study_name="digits")              # config, model, normalization
    best.model(best.normalize(images))                        # logits

Every function is keyword-only and calls the same library code as its command; they print
nothing but progress bars (`tqdm.auto`: a widget in Jupyter, text elsewhere). A bad argument
raises `search.UserError` with the same one-line message the command would print.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image
from tqdm.auto import tqdm

from search.artifacts import ensemble
from search.artifacts import export as exporting
from search.artifacts.evaluation import evaluate_test, predict_logits
from search.artifacts.pictures import predictions_grid, sample_grid
from search.artifacts.predict import Predictor, Preprocess
from search.data.datasets import Dataset
from search.data.tables import read_table, table_spec
from search.device import resolve_device
from search.errors import UserError
from search.files import atomic_write
from search.schema import RESULTS_DIR, study_dir
from search.storage.connect import DEFAULT_STORAGE, check_storage, open_storage
from search.training.config import TrainConfig
from search.tuning.finished import open_finished
from search.tuning.run import bar_events, bar_total, prepare_run
from search.tuning.runner import run_search
from search.tuning.study_file import load_study
from search.tuning.trials import value_of


def optimize(
    *,
    study: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str = DEFAULT_STORAGE,
    study_name: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    jobs: int = 1,
    seed: int = 0,
    results_dir: str | Path = RESULTS_DIR,
    stack: int | None = None,
    objectives: list[str] | tuple[str, ...] | None = None,
    max_params: int | None = None,
    max_latency_ms: float | None = None,
    progress: bool = True,
    data=None,
    target: str | None = None,
    test=None,
    task: str | None = None,
    metric: str | None = None,
) -> optuna.Study:
    """`python -m search.run`: add `trials` finished trials to the study (created or resumed; 100,
    or with a `timeout` alone as many as fit in it);
    `cifar10` by default, or with `data` and `target` the table study of a table: a CSV or
    Parquet path, a pandas DataFrame or a 2-D NumPy array (`test` likewise). A DataFrame or array
    is written once to results/<study>/data/ as Parquet, so export and retraining find it again.
    `objectives` (["score", "params"] or ["score", "latency"]: a two-objective study), `max_params`
    and `max_latency_ms` override the study file's, as `run`'s flags do.

    Interrupting it (Ctrl-C, or a notebook's stop button) ends the running trial FAIL, queues it
    to resume, and returns the study: no trial is left RUNNING.
    """
    table = None
    if data is not None or target is not None:
        if data is None or target is None:
            raise UserError("data and target go together: the table and the column to predict")
        name = study_name or (f"{Path(data).stem}-{target}" if isinstance(data, (str, Path)) else "table")
        folder = study_dir(results_dir, name) / "data"
        train_path = _on_disk(data, folder / "train.parquet")
        test_path = None if test is None else _on_disk(test, folder / "test.parquet")
        table = table_spec(train_path, target, test=test_path, task=task, metric=metric)
        study_name = name
    opts = prepare_run(
        table=table,
        study=study, trials=trials, timeout=timeout, storage=storage, study_name=study_name,
        data_dir=data_dir, device=device, jobs=jobs, seed=seed, results_dir=results_dir, stack=stack,
        objectives=objectives, max_params=max_params, max_latency_ms=max_latency_ms,
    )  # fmt: skip
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with tqdm(total=bar_total(opts), desc=opts.study_name, unit="trial", disable=not progress) as bar:
            run_search(opts, on_event=bar_events(bar))
    finally:
        optuna.logging.set_verbosity(verbosity)
    return optuna.load_study(
        study_name=opts.study_name, storage=open_storage(opts.storage_url, heartbeat_s=None)
    )


def _on_disk(table, path: Path) -> str:
    """A path to the table: its own, or where an in-memory one is written (if not there already)."""
    if isinstance(table, (str, Path)):
        return str(table)
    frame = read_table(table)
    frame.columns = [str(c) for c in frame.columns]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    if not path.is_file() or path.read_bytes() != buffer.getvalue():
        atomic_write(path, buffer.getvalue())
    return str(path)


def export_best(
    *,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    results_dir: str | Path = RESULTS_DIR,
    out: str | Path | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    retrain: bool = False,
    progress: bool = True,
    max_params: int | None = None,
    max_latency_ms: float | None = None,
) -> list[Path]:
    """`python -m search.export`: the best trial's files (best.json, model.pt, reports, pictures);
    `max_params`, `max_latency_ms`: the best trial within them, as `export`'s flags."""
    with tqdm(desc="retraining", unit="epoch", disable=not progress) as bar:
        done = exporting.export_study(
            storage_url=check_storage(storage), study_name=study_name, out_dir=out,
            results_dir=results_dir, device=resolve_device(device), data_dir=data_dir, retrain=retrain,
            on_epoch=lambda m: bar.update(1), max_params=max_params, max_latency_ms=max_latency_ms,
        )  # fmt: skip
    return [done.out_dir / name for name in done.files]


def write_report(
    *,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    results_dir: str | Path = RESULTS_DIR,
    out: str | Path | None = None,
) -> list[Path]:
    """`python -m search.report`: the study's self-contained HTML page."""
    from search.pages import report as reporting  # plotly: loaded for the page only

    return [
        reporting.write_report(
            storage_url=storage, study_name=study_name, results_dir=results_dir, out=out
        ).path
    ]


@dataclass(frozen=True)
class BestModel:
    """A study's best trial, ready to use. `predict(rows)` takes a table study's raw rows (a
    DataFrame, an array or a file) or an image study's images [N, C, H, W]; `model(normalize(
    images))` gives an image model's class logits."""

    study: str
    trial_number: int
    value: float  # its validation score in the search (the study's metric)
    config: TrainConfig
    model: torch.nn.Module  # in eval mode
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units: the training split's statistics
    std: tuple[float, ...]
    classes: tuple[str, ...]
    data: Dataset  # the split it was searched on (its test split scores the model)
    preprocess: Preprocess | None = None  # a table study's fitted preprocessing
    ensemble: dict[int, float] | None = None  # trial -> weight, when `model` is the study's ensemble

    def predict(self, rows):
        """Labels (or, for regression, values in the target's units) for raw rows or images."""
        if self.preprocess is not None and not isinstance(rows, torch.Tensor):
            return Predictor(self.model, self.preprocess, self.data.device).predict(rows)
        return np.asarray(self.classes, dtype=object)[self._outputs(rows).argmax(1).cpu().numpy()]

    def predict_proba(self, rows) -> np.ndarray:
        """Class probabilities [N, classes]."""
        if self.preprocess is not None and not isinstance(rows, torch.Tensor):
            return Predictor(self.model, self.preprocess, self.data.device).predict_proba(rows)
        return self._outputs(rows).softmax(1).double().cpu().numpy()

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        rows = self.normalize(x) if x.dim() == 4 else x.to(self.data.device)
        return predict_logits(self.model, rows)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] (uint8 0-255, or float 0-1) as the model's input rows [N, C*H*W]."""
        x = torch.as_tensor(images)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        device = next(self.model.parameters()).device
        return ((x - mean) / std).reshape(len(x), -1).to(device)


def load_best(
    *,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    results_dir: str | Path = RESULTS_DIR,
    device: str = "cpu",
    data_dir: str | None = None,
) -> BestModel:
    """The best trial's config and weights (the search's checkpoint, checked against the trial's
    validation value; retrained from its seed where there is none), with the normalization its
    inputs need; `model` is the study's ensemble instead where export would write one (the same
    selection, on validation; never for a two-objective study, whose best is its best score on
    the Pareto front)."""
    study = open_finished(storage, study_name)
    name, trial = study.name, study.best()
    data, _ = study.load_data(device=resolve_device(device), data_dir=data_dir)
    config = study.replay(trial, data)
    found = exporting.checkpoint_weights(study_dir(results_dir, name), trial, config, data)
    if not isinstance(found, exporting.Weights):
        found = exporting.retrain_weights(trial, config, data, why=found)
    model, numeric, members = found.model.eval(), config.numeric, None
    folder = study_dir(results_dir, name)
    value = value_of(trial)
    # A two-objective study exports one trial on its front, never the ensemble (its cost is its
    # members' together): search.artifacts.export.
    two = len(study.study.directions) > 1
    selection, ens = (None, None) if two else ensemble.choose(folder, study.completed(), data, value)
    if ens is not None and selection is not None:
        model, numeric, members = ens, selection.numeric, selection.weights
    pre = Preprocess.of(data, numeric) if data.table is not None else None
    return BestModel(
        name, trial.number, value, config, model, data.mean, data.std, data.classes, data, pre, members
    )


def samples(
    *, study: str = "cifar10", n: int = 16, seed: int = 0, data_dir: str | None = None
) -> Image.Image:
    """`python -m search.show data`: n captioned training images of a study, as a PIL image."""
    from search.data.datasets import load_dataset

    spec = load_study(study)
    data = load_dataset(
        spec.dataset, data_dir=data_dir, val_fraction=spec.val_fraction, split_seed=spec.split_seed
    )
    return sample_grid(data, n=n, split="train", seed=seed)


def predictions(best: BestModel, *, n: int = 32, seed: int = 0) -> Image.Image:
    """n test images captioned "true / pred" by `best`'s model (wrong ones in red), as a PIL image."""
    if best.data.image_shape is None:
        raise UserError("predictions draws images; a table study's pictures come with export_best")
    ev = evaluate_test(best.model, best.data, best.config.numeric)
    images = best.data.denormalize(best.data.x_test)
    return predictions_grid(images, ev.targets, ev.predictions, best.classes, n=n, seed=seed)
