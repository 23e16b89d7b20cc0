"""search.report's sections for certified.json (search.certify) and audit.json (search.audit)."""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
from contextlib import closing

import pytest
import torch

from search.pages.report import extra_sections, write_report
from search.pages.sections import ensemble_section
from search.posthoc.audit import AUDIT_JSON, audit_study
from search.posthoc.certify import CERTIFIED_JSON, certify_study

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def study_folder(digits_study, tmp_path_factory):
    """A private copy of the shared study, certified (2 configs x 2 seeds) and audited (1 trial)."""
    root = tmp_path_factory.mktemp("extras")
    db = root / "search.db"
    with closing(sqlite3.connect(digits_study.db_path)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    results = root / "results"
    shutil.copytree(digits_study.results_dir, results)
    url = f"sqlite:///{db}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        certify_study(storage_url=url, study_name="digits", top=2, seeds=2, results_dir=results, device=CPU)
        audit_study(storage_url=url, study_name="digits", n=1, results_dir=results, device=CPU)
    finally:
        torch.set_num_threads(threads)
    return url, results, results / "digits"


def section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def rows(part: str) -> list[tuple[str, list[str]]]:
    """(the row's class, its cells as text) for every body row of the section's table."""
    body = part[part.index("<tbody>") :]
    found = re.findall(r"<tr( class=\"(\w+)\")?>(.*?)</tr>", body)
    return [
        (css, [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", cells)]) for _, css, cells in found
    ]


def test_without_the_files_there_are_no_such_sections(tmp_path):
    assert extra_sections(tmp_path) == []


def test_the_certified_section_lists_the_configs_by_certified_rank_and_the_winners_test(study_folder):
    _, _, folder = study_folder
    payload = json.loads((folder / CERTIFIED_JSON).read_text())
    part = section("".join(extra_sections(folder)), "certified")
    table = rows(part)
    assert [int(cells[2]) for _, cells in table] == [c["trial_number"] for c in payload["configs"]]
    assert [int(cells[0]) for _, cells in table] == [1, 2]
    assert [css for css, _ in table] == ["winner", ""]  # the winner's row stands out
    for (_, cells), c in zip(table, payload["configs"], strict=True):
        assert cells[4] == f"{c['val_mean']:.4f} ± {c['val_std']:.4f}"
        assert cells[6] == " ".join(f"{v:.4f}" for v in c["val_score"])
    w = payload["winner"]
    text = html.unescape(part)
    assert f"{w['test_mean']:.4f} ± {w['test_std']:.4f}" in text
    assert f"trial {w['trial_number']} (search rank {w['search_rank']})" in text
    assert "No other config was scored on the test split" in text


def test_the_audit_section_shows_the_counts_the_regret_and_each_audited_trial(study_folder):
    _, _, folder = study_folder
    p = json.loads((folder / AUDIT_JSON).read_text())
    part = section("".join(extra_sections(folder)), "audit")
    text = html.unescape(part)
    n = p["n_audited"]
    assert f"{p['above_median']} of {n}" in text and f"{p['in_top10']} of {n}" in text
    assert f"({p['completed']['median']:.4f})" in text and f"Regret {p['regret']:+.4f}" in text
    table = rows(part)
    assert [int(cells[0]) for _, cells in table] == [r["trial_number"] for r in p["trials"]]
    for (_, cells), r in zip(table, p["trials"], strict=True):
        assert int(cells[1]) == r["pruned_at_epoch"] and cells[3] == f"{r['audited_value']:.4f}"
        assert cells[4] == ("yes" if r["above_median"] else "")


def test_the_report_page_carries_both_sections(study_folder):
    url, results, _ = study_folder
    report = write_report(storage_url=url, study_name="digits", results_dir=results)
    page = report.path.read_text()
    assert '<section id="certified">' in page and '<section id="audit">' in page


def test_a_damaged_file_becomes_a_note_not_a_failed_report(tmp_path):
    (tmp_path / CERTIFIED_JSON).write_text("{not json")
    (tmp_path / AUDIT_JSON).write_text(json.dumps({"format": 1}))  # a key the section needs is missing
    certified, audited = extra_sections(tmp_path)
    assert 'id="certified"' in certified and "cannot be shown" in certified and "JSONDecodeError" in certified
    assert 'id="audit"' in audited and "cannot be shown" in audited and "KeyError" in audited


def test_the_ensemble_section_says_when_the_export_is_cross_fitted():
    e = {"members": [{"trial_number": 3, "picks": 25, "weight": 1.0}], "exported": False, "steps": 25,
         "test_score": None, "single_test_score": 0.5, "pool_weights_bytes": 1e6, "val_score": 0.61,
         "single_trial": 3, "single_val_score": 0.61, "val_gain": 0.0}  # fmt: skip
    alone = ensemble_section({"ensemble": e, "metric": "r2", "test_score": 0.52, "refit": {"folds": 0}})
    assert "exported alone" in alone and "folds" not in alone
    crossed = ensemble_section({"ensemble": e, "metric": "r2", "test_score": 0.52, "refit": {"folds": 5}})
    assert "trained 5 times" in crossed and "test r2 0.5200" in crossed
