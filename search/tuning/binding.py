"""What a study is bound to: its dataset, split, epoch budget and space.

The runner records these as the study's user attrs when it creates the study; resuming with other
values is refused (one study never mixes incomparable trials), and export and retraining read
them back to rebuild the very data the trials were scored on.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.data.datasets import Dataset, load_dataset
from search.data.tables import TableSpec
from search.errors import UserError
from search.schema import (
    BINDING,
    STUDY_DATA_DIR,
    STUDY_DATASET,
    STUDY_EPOCHS,
    STUDY_FILE,
    STUDY_METRIC,
    STUDY_OBJECTIVES,
    STUDY_SEED,
    STUDY_SPACE,
    STUDY_SPLIT_SEED,
    STUDY_TABLE,
    STUDY_TASK,
    STUDY_VAL_FRACTION,
)  # fmt: skip
from search.tuning.study_file import StudySpec


def study_attrs(
    spec: StudySpec,
    data_dir: str | None,
    seed: int,
    *,
    task: str = "classification",
    metric: str = "accuracy",
) -> dict[str, Any]:
    """What a study is bound to: export and retraining read these back to rebuild the data."""
    table = spec.table.to_dict() if spec.table is not None else None
    return {
        STUDY_TABLE: table,
        STUDY_TASK: task,
        STUDY_METRIC: metric,
        STUDY_DATASET: spec.dataset,
        STUDY_DATA_DIR: str(data_dir) if data_dir else None,
        STUDY_VAL_FRACTION: spec.val_fraction,
        STUDY_SPLIT_SEED: spec.split_seed,
        STUDY_EPOCHS: spec.epochs,
        STUDY_SEED: seed,
        STUDY_SPACE: spec.raw_space,
        STUDY_FILE: str(spec.path),
        STUDY_OBJECTIVES: list(spec.objectives),
    }


def load_bound_dataset(
    binding: dict[str, Any], *, data_dir: str | None, device
) -> tuple[Dataset, str | None]:
    """The dataset and split a study (or its best.json) is bound to, from `data_dir` if given,
    else from where the search read it. Returns the data and the directory it came from."""
    data_dir = data_dir if data_dir is not None else binding.get(STUDY_DATA_DIR)
    table = binding.get(STUDY_TABLE)
    data = load_dataset(
        binding[STUDY_DATASET],
        table=TableSpec.from_dict(table) if table else None,
        data_dir=data_dir,
        device=device,
        val_fraction=float(binding[STUDY_VAL_FRACTION]),
        split_seed=int(binding[STUDY_SPLIT_SEED]),
    )
    return data, data_dir


def check_resumable(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Refuse to resume `study` with a binding other than the one it was created with."""
    stored = study.user_attrs
    # A study from before objectives were recorded has the one objective, the score.
    was, now = list(stored.get(STUDY_OBJECTIVES, ["score"])), list(attrs.get(STUDY_OBJECTIVES, ["score"]))
    if was != now:
        raise UserError(
            f"study {study.study_name!r} was created with objectives {was}, not {now}; "
            "pass --study-name NEW to start another study"
        )
    for key in BINDING:
        if key in stored and stored[key] != attrs.get(key):
            raise UserError(
                f"study {study.study_name!r} was created with a different {key} "
                f"({_short(stored[key])} vs now {_short(attrs[key])}); "
                "pass --study-name NEW to start another study"
            )


def study_binding(study: optuna.Study) -> dict[str, Any]:
    attrs = study.user_attrs
    # An image study from before tables were read holds no `table` attr: it has none to hold.
    missing = [
        k
        for k in BINDING
        if k not in attrs and not (k == STUDY_TABLE and attrs.get(STUDY_DATASET) != "table")
    ]
    if missing:
        raise UserError(
            f"study {study.study_name!r} lacks {', '.join(missing)} in its user attrs: "
            "it was not made by python -m search.run, so its data cannot be rebuilt"
        )
    return attrs


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
