"""The Python API: keyword-only functions that do what the commands do, and return values."""

import numpy as np
import optuna
import pytest
import torch
from helpers import one_torch_thread
from optuna.trial import TrialState

import search
from search.artifacts.evaluation import evaluate_test
from search.data.datasets import load_raw


def test_the_api_is_listed_and_keyword_only():
    assert set(search.__all__) >= {
        "optimize",
        "export_best",
        "write_report",
        "load_best",
        "samples",
        "predictions",
    }
    for name in ("optimize", "export_best", "write_report", "load_best"):
        with pytest.raises(TypeError):
            getattr(search, name)("digits")


def test_optimize_returns_the_study_it_searched(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    with one_torch_thread("search.tuning.run"):
        study = search.optimize(study="digits", trials=4, storage=url, results_dir=tmp_path, device="cpu",
                                progress=False)  # fmt: skip
    assert isinstance(study, optuna.Study) and study.study_name == "digits"
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and study.best_value > 0.5
    assert [t.number for t in optuna.load_study(study_name="digits", storage=url).trials] == [0, 1, 2, 3]


def test_an_interrupted_optimize_returns_control_and_leaves_no_running_trial(tmp_path, monkeypatch):
    from search.tuning import stacking

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stacking, "fit_stacked", interrupted)
    study = search.optimize(study="digits", trials=3, storage=f"sqlite:///{tmp_path}/s.db",
                            results_dir=tmp_path, device="cpu", progress=False)  # fmt: skip
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and states[0] == TrialState.FAIL
    assert study.trials[0].user_attrs["reason"] == "interrupted"


def test_export_report_and_load_best_return_what_they_wrote_and_loaded(digits_study_copy):
    s = digits_study_copy
    with one_torch_thread("search.cli"):
        paths = search.export_best(
            storage=s.storage_url, results_dir=s.results_dir, device="cpu", progress=False
        )
    assert {p.name for p in paths} >= {"best.json", "model.pt", "test_report.json"} and all(
        p.is_file() for p in paths
    )
    (page,) = search.write_report(storage=s.storage_url, results_dir=s.results_dir)
    assert page.name == "report.html" and page.is_file()
    best = search.load_best(storage=s.storage_url, results_dir=s.results_dir)
    assert not best.model.training and best.trial_number == s.load().best_trial.number
    # The test images straight from the files, through best.normalize: the model's accuracy on
    # them must be the test accuracy of the data pipeline the search used.
    raw = load_raw("digits")
    images = torch.as_tensor(raw.test_x).permute(0, 3, 1, 2)  # uint8 [N, C, H, W]
    with torch.inference_mode():
        pred = best.model(best.normalize(images)).argmax(1).numpy()
    ours = float(np.mean(pred == raw.test_y))
    assert ours == pytest.approx(evaluate_test(best.model, best.data).accuracy, abs=1e-12)


def test_pictures_come_back_as_pil_images(digits_study):
    best = search.load_best(storage=digits_study.storage_url, results_dir=digits_study.results_dir)
    grid = search.predictions(best, n=8)
    assert grid.mode == "RGB" and grid.width > 0
    assert search.samples(study="digits", n=4).mode == "RGB"


def test_the_export_command_module_is_the_export_function_too(digits_study_copy):
    import search.export  # binds the command module to the package's `export`

    s = digits_study_copy
    paths = search.export_best(storage=s.storage_url, results_dir=s.results_dir, device="cpu", progress=False)
    assert any(p.name == "best.json" for p in paths)


def test_the_python_api_loads_without_plotly():
    # plotly draws the report page only: load_best and predict must work where it is missing
    import subprocess
    import sys

    code = "import sys, search.api; sys.exit('plotly' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
