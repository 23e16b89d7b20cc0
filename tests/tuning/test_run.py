"""Preparing a run: how many trials it adds when the user names none."""

from search.tuning.run import DEFAULT_TRIALS, prepare_run


def _prepare(tmp_path, **kw):
    return prepare_run(study="digits", storage=f"sqlite:///{tmp_path}/s.db", device="cpu",
                       results_dir=tmp_path / "results", **kw)  # fmt: skip


def test_a_timeout_alone_lets_the_clock_end_the_run(tmp_path):
    # `--timeout 600` that stopped at the default trial count would leave most of the budget idle
    assert _prepare(tmp_path, timeout=600).trials > 10**6


def test_without_a_timeout_a_run_adds_the_default_trials_or_those_asked_for(tmp_path):
    assert _prepare(tmp_path).trials == DEFAULT_TRIALS == 100
    assert _prepare(tmp_path, trials=7, timeout=600).trials == 7


def test_no_progress_also_silences_the_first_decoding_of_images(tmp_path, capsys, monkeypatch):
    # --no-progress is for logs: a decoding bar's hundreds of redraws must not land in them
    from PIL import Image

    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "cache"))
    for progress in (False, True):  # a tree each: nothing memoized or cached from the other
        root = tmp_path / f"images-{progress}"
        for cls in ("a", "b"):
            (root / "train" / cls).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (4, 4), color=(40 * i, 0, 0)).save(root / "train" / cls / f"{i}.png")
        _prepare(tmp_path, dataset="imagefolder", data_dir=str(root), progress=progress)
        assert ("decoding images" in capsys.readouterr().err) == progress
