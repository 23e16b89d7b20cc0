"""A table's training and validation rows as one training split, for the model that is exported.

The search needs its validation rows to choose; once the config is chosen they are just more
rows to learn from (20% of a table of 4,000 rows is a lot). `with_validation_rows` gives the same
table with training = training + validation, its preprocessing (every numeric transform's
ColumnTransformer, the piecewise-linear bins included) fitted afresh on those rows. The test rows
are untouched. The validation split stays as it was, so the engine can still report an epoch's
score, but it is no longer held out: nothing may be chosen on it. The regression target's
standardization (`TargetScale`) stays as fitted on the training rows: it only sets the loss's
scale, and the model's answers are read back in the target's own units.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from search.data.dataset import Dataset
from search.data.tables import Table, encoded


def with_validation_rows(data: Dataset) -> Dataset:
    """`data` (a table's) trained on its training and validation rows, preprocessing refitted
    on them; encoded with `data`'s numeric transform (`variant` gives the others)."""
    if data.table is None:
        raise ValueError("with_validation_rows takes a table's dataset")
    old: Table = data.table
    frames = dict(old.frames)
    frames["train"] = pd.concat([old.frames["train"], old.frames["val"]], ignore_index=True)
    table = Table(frames, list(old.numeric), list(old.categorical), old.target_name, list(old.class_values))
    empty = torch.empty(0, device=data.device)
    merged = dataclasses.replace(
        data, table=table, y_train=torch.cat([data.y_train, data.y_val]), numeric="",
        x_train=empty, x_val=empty, x_test=empty,
    )  # fmt: skip
    return encoded(merged, data.numeric or "standard")
