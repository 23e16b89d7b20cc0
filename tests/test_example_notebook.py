"""The example notebooks, English and Spanish, run top to bottom on digits and write what they say."""

import ast
from pathlib import Path

import pytest

nbclient = pytest.importorskip(
    "nbclient", reason="the notebook extra is not installed: pip install -e '.[notebook]'"
)
nbformat = pytest.importorskip("nbformat")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENGLISH = EXAMPLES / "search_mlp.ipynb"
SPANISH = EXAMPLES / "busqueda_mlp.ipynb"

# Each notebook with the lines it prints itself; "precision" is scikit-learn's report, the same in both.
NOTEBOOKS = [
    pytest.param(ENGLISH, ("best validation accuracy", "precision", "skipping CIFAR-10"), id="english"),
    pytest.param(SPANISH, ("mejor exactitud de validación", "precision", "se omite CIFAR-10"), id="spanish"),
]


@pytest.mark.parametrize("notebook", [ENGLISH, SPANISH], ids=["english", "spanish"])
def test_the_committed_notebook_holds_no_outputs(notebook):
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def _called(source):
    """The dotted names a cell calls (comments and string text ignored, f-string expressions kept)."""
    return {ast.unparse(node.func) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)}


def test_the_spanish_notebook_runs_what_the_english_one_runs():
    english = nbformat.read(ENGLISH, as_version=4)
    spanish = nbformat.read(SPANISH, as_version=4)
    assert [c.cell_type for c in spanish.cells] == [c.cell_type for c in english.cells]
    assert spanish.metadata.kernelspec == english.metadata.kernelspec
    for number, (en, es) in enumerate(zip(english.cells, spanish.cells, strict=True)):
        if en.cell_type == "code":
            assert _called(es.source) == _called(en.source), f"cell {number}"


@pytest.mark.slow
@pytest.mark.parametrize(("notebook", "expected"), NOTEBOOKS)
def test_the_notebook_runs_every_cell_and_writes_the_export(notebook, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_TRIALS", "12")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("SEARCH_CIFAR_DIR", raising=False)
    nb = nbformat.read(notebook, as_version=4)
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
    for line in expected:
        assert line in text, line
