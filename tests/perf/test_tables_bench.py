"""search.bench --tables: every model meets the reference split's test rows once, and the search's
figure is its export's."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split

from search.perf.tables import format_tables, run_tables_bench


def test_the_trees_figure_is_the_reference_splits_and_the_search_figure_is_its_exports(tmp_path):
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = x.iloc[:, :6].assign(kind=np.where(y == 1, "b", "m"))
    frame.to_csv(tmp_path / "cancer.csv", index=False)
    r = run_tables_bench(budget_s=3, tables=(("cancer.csv", "kind"),), root=tmp_path,
                         peers=("hgb", "realmlp", "search"))  # fmt: skip
    (row,) = r["tables"]
    features, target = frame.drop(columns=["kind"]), frame["kind"]
    x_tr, x_te, y_tr, y_te = train_test_split(
        features, target, test_size=0.2, random_state=0, stratify=target
    )
    trees = HistGradientBoostingClassifier(random_state=0).fit(x_tr, y_tr)
    assert row["hgb"]["accuracy"] == float((trees.predict(x_te) == y_te).mean())
    assert row["n_test"] == len(x_te) and row["task"] == "classification"
    assert 0.5 < row["search"]["accuracy"] <= 1.0 and row["search"]["budget_s"] == 3
    assert "skipped" in row["realmlp"] or 0.5 < row["realmlp"]["accuracy"] <= 1.0
    text = format_tables(r)
    assert "cancer.csv -> kind" in text and "hgb" in text and "search" in text
