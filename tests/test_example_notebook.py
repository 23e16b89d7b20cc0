"""The example notebook runs top to bottom on digits, headlessly, and writes what it says it writes."""

from pathlib import Path

import pytest

nbclient = pytest.importorskip(
    "nbclient", reason="the notebook extra is not installed: pip install -e '.[notebook]'"
)
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "search_mlp.ipynb"


def test_the_committed_notebook_holds_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_notebook_runs_every_cell_and_writes_the_export(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_TRIALS", "12")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("SEARCH_CIFAR_DIR", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # every cell, in order
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    shown = [o for c in code for o in c.outputs if o.output_type in ("display_data", "execute_result")]
    assert sum("image/png" in o.data for o in shown) >= 2  # the samples and the predictions, inline
    out = tmp_path / "results" / "digits"
    for name in ("best.json", "model.pt", "test_report.txt", "predictions.png", "report.html"):
        assert (out / name).is_file(), name
    assert (tmp_path / "notebook.db").is_file()
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "best validation accuracy" in text and "precision" in text and "skipping CIFAR-10" in text
