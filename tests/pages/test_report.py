"""search.report: edge warnings, the page's sections, the command's errors, and the page in a browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from search.pages.report import (
    best_table,
    extra_sections,
    importance_figure,
    learning_curves_figure,
    write_report,
)
from search.report import main
from search.tuning.space import Param, parse_space
from search.tuning.space_edges import edge_warnings, study_space
from search.tuning.trials import best_trials

SPACE = parse_space(
    {
        "n_layers": {"low": 1, "high": 3},
        "width": {"low": 16, "high": 256, "log": True},
        "dropout": {"low": 0.0, "high": 0.5},
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
        "momentum": 0.9,
        "optimizer": ["sgd", "adam"],
    },
    where="test",
)
LR = FloatDistribution(1e-4, 1e-1, log=True)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[2]


def trial(value, state=TrialState.COMPLETE, **params):
    dists = {k: LR if k == "lr" else IntDistribution(16, 256, log=True) for k in params}
    return create_trial(state=state, value=value, params=params, distributions=dists)


def make_study(url: str, name: str, trials, *, space=None) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    study.set_user_attr("space", space or {"lr": {"low": 1e-4, "high": 0.1, "log": True}})
    study.set_user_attr("epochs", 3)
    for t in trials:
        study.add_trial(t)
    return study


# ---------------------------------------------------------------- which trials are "the best"


def test_best_trials_are_the_top_tenth_of_complete_trials_but_at_least_five():
    trials = [trial(v / 100) for v in range(100)] + [trial(None, TrialState.PRUNED, lr=0.01)]
    best = best_trials(trials)
    assert [t.value for t in best] == [v / 100 for v in range(99, 89, -1)]
    assert [t.value for t in best_trials(trials[:20])] == [0.19, 0.18, 0.17, 0.16, 0.15]


def test_best_trials_of_a_minimized_study_are_the_lowest():
    assert [t.value for t in best_trials([trial(v) for v in (3, 1, 2)], maximize=False)] == [1, 2, 3]


# ---------------------------------------------------------------- edge warnings (pure)


def test_lr_crowding_the_upper_bound_is_reported_with_a_hint_to_widen():
    best = [{"lr": v} for v in (0.1, 0.095, 0.09, 0.08, 0.001)]
    [w] = edge_warnings(best, SPACE)
    assert (w.param, w.bound, w.value, w.hits, w.total) == ("lr", "upper", 0.1, 4, 5)
    assert w.message().startswith("best lr values are at the upper bound 0.1")
    assert w.message().endswith("widen the range")


def test_a_crowded_lower_bound_is_reported_too():
    [w] = edge_warnings([{"lr": v} for v in (1e-4, 1.2e-4, 1.5e-4)], SPACE)
    assert (w.bound, w.value) == ("lower", 1e-4)


def test_log_ranges_are_compared_in_log_space():
    # 0.05..0.07 sit in the top tenth of [1e-4, 0.1] in log space, mid-range on a linear scale.
    best = [{"lr": v} for v in (0.05, 0.06, 0.07)]
    assert [w.bound for w in edge_warnings(best, SPACE)] == ["upper"]
    linear = {"lr": Param("lr", "float", low=1e-4, high=0.1)}
    assert edge_warnings(best, linear) == []


def test_values_spread_over_the_range_give_no_warning():
    assert edge_warnings([{"lr": v} for v in (1e-4, 1e-3, 1e-2, 0.1, 3e-3)], SPACE) == []


def test_per_layer_widths_are_judged_against_the_width_range():
    best = [{"width_0": 250, "width_1": 240}, {"width_0": 256, "width_2": 17}, {"width_0": 230}]
    [w] = edge_warnings(best, SPACE)
    assert (w.param, w.bound, w.value, w.hits, w.total) == ("width", "upper", 256, 4, 5)


def test_a_bound_that_is_the_knobs_hard_limit_is_not_reported():
    assert edge_warnings([{"dropout": 0.0}] * 5, SPACE) == []  # dropout cannot go below 0


def test_fixed_and_choice_knobs_and_unknown_params_are_ignored():
    best = [{"momentum": 0.9, "optimizer": "sgd", "mystery": 1.0}] * 5
    assert edge_warnings(best, SPACE) == []


def test_fewer_than_three_best_values_say_nothing():
    assert edge_warnings([{"lr": 0.1}, {"lr": 0.1}], SPACE) == []


def test_a_small_int_range_needs_a_stronger_majority_than_chance():
    # n_layers in 1..3: a third of random draws land on 3, so 3 of 5 is no signal; 5 of 5 is.
    assert edge_warnings([{"n_layers": n} for n in (3, 3, 3, 1, 2)], SPACE) == []
    assert [w.bound for w in edge_warnings([{"n_layers": 3}] * 5, SPACE)] == ["upper"]


def test_without_a_stored_space_the_ranges_come_from_optunas_distributions():
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.5, lr=0.01, width_0=32, width_1=64))
    space = study_space(study, study.trials)
    assert space["lr"].log and (space["lr"].low, space["lr"].high) == (1e-4, 1e-1)
    assert (space["width"].low, space["width"].high) == (16, 256) and "width_1" not in space


# ---------------------------------------------------------------- figures and sections


def test_learning_curves_draw_pruned_trials_dashed_and_ending_early(digits_study):
    trials = digits_study.load().trials
    fig = learning_curves_figure(trials, epochs=digits_study.epochs)
    by_trial = {int(re.match(r"trial (\d+)", tr.hovertemplate).group(1)): tr for tr in fig.data}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the fixture study should have pruned trials"
    for t in pruned:
        line = by_trial[t.number]
        assert line.line.dash == "dash" and len(line.x) < digits_study.epochs
        assert line.marker.symbol == "x" and line.marker.size[-1] > 0  # an x where it stopped
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(by_trial[t.number].x) == digits_study.epochs for t in complete)
    best = max(complete, key=lambda t: t.value)
    assert fig.data[-1].name == f"best (trial {best.number})"  # drawn last, on top


def test_best_table_lists_at_most_ten_trials_best_first_with_their_attrs(digits_study):
    trials = digits_study.load().trials
    rows = re.findall(r"<tr><td>.*?</tr>", best_table(trials))
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert 1 <= len(rows) == min(10, len(complete))
    first = re.findall(r"<td>(.*?)</td>", rows[0])
    assert first[1] == str(complete[0].number) and first[2] == f"{complete[0].value:.4f}"
    assert "lr=" in first[3] and first[4].startswith("64-") and first[5].replace(",", "").isdigit()


def test_importances_need_enough_complete_trials():
    study = optuna.create_study(direction="maximize")
    for v in (0.1, 0.2):
        study.add_trial(trial(v, lr=v / 10, width_0=32))
    fig, note = importance_figure(study, study.trials)
    assert fig is None and "at least 5 complete trials" in note


def test_importances_of_a_single_parameter_become_a_note():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 0.1, log=True), n_trials=8)
    fig, note = importance_figure(study, study.trials)
    assert fig is None and "Only 1 searched parameter (lr)" in note


def test_importances_of_the_digits_study_are_a_bar_chart(digits_study):
    study = digits_study.load()
    fig, note = importance_figure(study, study.trials)
    assert fig is not None and note == "" and "lr" in fig.data[0].y


def test_extra_sections_embed_the_pictures_found_in_the_study_folder(tmp_path):
    assert extra_sections(tmp_path) == []
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, format="PNG")
    (tmp_path / "errors.png").write_bytes(buf.getvalue())
    [html] = extra_sections(tmp_path)
    assert f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"' in html


# ---------------------------------------------------------------- the page and the command


def test_the_page_is_one_offline_file_with_plotly_embedded_once(digits_study, tmp_path):
    out = tmp_path / "page.html"
    rep = write_report(storage_url=digits_study.storage_url, results_dir=digits_study.results_dir, out=out)
    page = out.read_text()
    assert rep.path == out and rep.study_name == "digits" and rep.n_trials == digits_study.trials
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", page)  # no CDN, no fetches
    for anchor in ("best", "history", "curves", "importances", "parallel", "slices"):
        assert f'<section id="{anchor}">' in page


def test_the_command_writes_results_study_report_html_and_embeds_pictures(digits_study_copy, capsys):
    folder = digits_study_copy.results_dir / "digits"
    Image.new("RGB", (8, 8)).save(folder / "predictions.png")
    argv = ["--storage", digits_study_copy.storage_url, "--results-dir", str(digits_study_copy.results_dir)]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {folder / 'report.html'} (study digits,")
    assert '<section id="predictions">' in (folder / "report.html").read_text()


def test_the_command_and_the_page_warn_about_a_crowded_bound(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'edge.db'}"
    make_study(url, "edgy", [trial(0.5 + i / 100, lr=0.1 - i * 1e-3) for i in range(6)])
    out = tmp_path / "edgy.html"
    assert main(["--storage", url, "--study-name", "edgy", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("warning: best lr values are at the upper bound 0.1 (5 of 5)")
    assert "best lr values are at the upper bound 0.1" in out.read_text()


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_an_unknown_study_is_a_one_line_error_naming_the_known_ones(digits_study, capsys):
    err = one_line_error(capsys, ["--storage", digits_study.storage_url, "--study-name", "nope"])
    assert "no study named 'nope'" in err and "known studies: digits" in err


def test_a_study_without_a_complete_trial_is_a_one_line_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, "fresh", [trial(None, TrialState.PRUNED, lr=0.01), trial(None, TrialState.FAIL)])
    err = one_line_error(capsys, ["--storage", url, "--study-name", "fresh"])
    assert "no finished (complete) trial" in err and "1 pruned, 1 fail" in err


def test_several_studies_need_a_study_name(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, "a", [trial(0.5, lr=0.01)])
    make_study(url, "b", [trial(0.5, lr=0.01)])
    assert "pick one with --study-name: a, b" in one_line_error(capsys, ["--storage", url])


@pytest.mark.parametrize("kind", ["missing", "directory", "not-sqlite", "not-optuna", "malformed"])
def test_a_storage_that_is_not_a_study_database_is_a_one_line_error(tmp_path, capsys, kind):
    path = tmp_path / "x.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-sqlite":
        path.write_text("hello")
    elif kind == "not-optuna":
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE t (x)")
    url = "sqlite:/// nope ://" if kind == "malformed" else f"sqlite:///{path}"
    one_line_error(capsys, ["--storage", url])
    assert kind not in ("missing", "malformed") or not path.exists()  # a report creates nothing


def test_an_unwritable_out_path_is_a_one_line_error(digits_study, tmp_path, capsys):
    err = one_line_error(capsys, ["--storage", digits_study.storage_url, "--out", str(tmp_path)])
    assert "cannot write the report to" in err


# ---------------------------------------------------------------- in a real browser


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",  # offline
        "--hide-scrollbars", "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_the_page_renders_every_plot_in_headless_chromium_without_errors(digits_study, tmp_path):
    page = tmp_path / "report.html"
    write_report(storage_url=digits_study.storage_url, results_dir=digits_study.results_dir, out=page)
    n_figures = page.read_text().count('class="plotly-graph-div"')
    url = page.as_uri()

    dom = chromium(tmp_path / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert "data-js-error" not in html_tag, html_tag  # the page's own error hook fired
    console = re.findall(r":CONSOLE[^\]]*\] (.*)", dom.stderr)
    assert not [m for m in console if re.search(r"uncaught|error", m, re.I)], console
    assert n_figures >= 5
    assert len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom.stdout)) == n_figures
    assert len(re.findall(r'class="main-svg"', dom.stdout)) >= 2 * n_figures
    assert 'class="point"' in dom.stdout  # the history's markers were drawn, not just the axes

    shot = tmp_path / "report.png"
    run = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,3000", url)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        assert len(im.convert("L").resize((140, 300)).getcolors(256) or ()) > 20  # not a blank page
    try:  # for people and CI artifacts; a read-only checkout must not fail the test
        (REPO / "results" / "test-artifacts").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, REPO / "results" / "test-artifacts" / "report.png")
    except OSError:
        pass
