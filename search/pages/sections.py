"""The report's sections from files beside the study: certified winner, pruning audit, pictures."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.posthoc.audit import finding_lines
from search.schema import AUDIT_JSON, BEST_JSON, CERTIFIED_JSON, ERRORS_PNG, PREDICTIONS_PNG, SAMPLES_PNG

EXTRA_IMAGES = (
    (SAMPLES_PNG, "Training images"),  # search.show data
    (PREDICTIONS_PNG, "Test predictions"),  # search.export
    (ERRORS_PNG, "Most confident mistakes on the test split"),
)


def short_params(params: Mapping[str, Any], *, limit: int | None = None) -> str:
    """`lr=0.0123, optimizer=adam, ...`: floats to 3 significant digits, names sorted."""
    text = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())
    )
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _row(cells: Sequence[Any], *, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _table(names: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    return f'<table class="best"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _interval(ci: Any) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "(one seed)"


def certified_section(p: Mapping[str, Any]) -> str:
    """certified.json (python -m search.certify): the configs by certified rank, the winner's test."""
    w, sb = p["winner"], p["search_best"]
    rows = []
    for c in p["configs"]:
        per_seed = " ".join("diverged" if v is None else f"{v:.4f}" for v in c["val_score"])
        mean = "diverged" if c["diverged"] else f"{c['val_mean']:.4f} ± {c['val_std']:.4f}"
        cells = (c["certified_rank"], c["search_rank"], c["trial_number"], f"{c['search_value']:.4f}", mean,
                 _interval(c["val_ci95"]), per_seed, short_params(c["params"]))  # fmt: skip
        rows.append(_row(cells, css="winner" if c["certified_rank"] == 1 else ""))
    names = ("certified rank", "search rank", "trial", "search value", "validation mean ± std",
             "95% interval", "validation per seed", "params")  # fmt: skip
    if sb["trial_number"] == w["trial_number"]:
        moved = "It is the search's best trial too."
    else:
        moved = f"The search's best, trial {sb['trial_number']}, certified at rank {sb['certified_rank']}."
    intro = (
        f"The top {p['top']} complete trials, each retrained with {p['seeds_per_config']} fresh seeds on "
        f"the search's train split ({p['epochs']} epochs) and ranked by mean validation accuracy. "
        f"The winner, trial {w['trial_number']} (search rank {w['search_rank']}), was chosen on "
        f"validation alone. {moved}"
    )
    test = (
        f"Test accuracy of the winner: {w['test_mean']:.4f} ± {w['test_std']:.4f} (mean ± sample std over "
        f"{len(w['test_score'])} seeds; 95% interval {_interval(w['test_ci95'])}; {w['n_test']} test "
        "images). No other config was scored on the test split."
    )
    return (
        f'<section id="certified"><h2>Certified winner (fresh seeds)</h2><p>{html.escape(intro)}</p>'
        f"<p><b>{html.escape(test)}</b></p>{_table(names, rows)}</section>"
    )


def ensemble_section(best: Mapping[str, Any]) -> str:
    """best.json's ensemble (python -m search.export): members, weights, validation gain, test."""
    e, metric = best["ensemble"], best.get("metric", "accuracy")
    rows = [_row((m["trial_number"], m["picks"], f"{m['weight']:.3f}")) for m in e["members"]]
    verdict = (
        f"Exported: test {metric} {e['test_score']:.4f} for the ensemble, {e['single_test_score']:.4f} "
        "for the best single trial (each scored once, after the choice)."
        if e["exported"]
        else "It does not beat the best single trial on validation, so the trial is exported alone."
    )
    folds = (best.get("refit") or {}).get("folds")
    if folds:
        verdict += (f" Then each chosen config was trained {folds} times, each time leaving one fold of the "
                    f"training and validation rows out, and the export is their average: test {metric} "
                    f"{best['test_score']:.4f}.")  # fmt: skip
    lines = [
        f"Greedy selection with replacement ({e['steps']} steps) over the validation outputs of the "
        f"trials the search kept ({e['pool_weights_bytes'] / 1e6:.1f} MB of half-precision weights).",
        f"Validation {metric}: ensemble {e['val_score']:.4f}, best single trial {e['single_trial']} "
        f"{e['single_val_score']:.4f} ({e['val_gain']:+.4f}).",
        verdict,
    ]
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    table = _table(("trial", "picks", "weight"), rows)
    return f'<section id="ensemble"><h2>Ensemble</h2>{body}{table}</section>'


def audit_section(p: Mapping[str, Any]) -> str:
    """audit.json (python -m search.audit): how often the pruner stopped a config worth keeping."""
    n = p["n_audited"]
    rows = []
    for t in p["trials"]:
        final = "diverged" if t["audited_value"] is None else f"{t['audited_value']:.4f}"
        at = "" if t["value_at_prune"] is None else f"{t['value_at_prune']:.4f}"
        cells = (t["trial_number"], t["pruned_at_epoch"], at, final, "yes" if t["above_median"] else "",
                 "yes" if t["in_top10"] else "", short_params(t["params"]))  # fmt: skip
        rows.append(_row(cells, css="winner" if t["in_top10"] else ""))
    names = ("trial", "pruned at epoch", "value then", f"after {p['epochs']} epochs", "above median",
             "top 10%", "params")  # fmt: skip
    lines = [
        f"{n} of the {p['n_pruner_stopped']} trials the pruner stopped, re-run to the full {p['epochs']} "
        f"epochs with their own params and seed (into the study {p['audit_study']}).",
        *(line[0].upper() + line[1:] + "." for line in finding_lines(p)),
    ]
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return f'<section id="audit"><h2>Pruning audit</h2>{body}{_table(names, rows)}</section>'


def _json_section(path: Path, title: str, render) -> str:
    """`render(payload)` of a JSON file, or a note that says why it cannot be shown."""
    try:
        return render(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # JSON and decode errors: ValueError
        note = f"{path.name} is there but cannot be shown ({type(e).__name__}: {e}); write it again."
        head = f'<section id="{path.stem}"><h2>{html.escape(title)}</h2>'
        return f'{head}<p class="note">{html.escape(note)}</p></section>'


def _has_ensemble(best_json: Path) -> bool:
    try:
        return isinstance(json.loads(best_json.read_text(encoding="utf-8")).get("ensemble"), dict)
    except (OSError, ValueError, AttributeError):
        return False  # an unreadable best.json has no section; export writes it again


def extra_sections(study_dir: str | Path) -> list[str]:
    """EXTENSION POINT: HTML sections for what other commands leave in results/<study>/.

    certified.json (search.certify), audit.json (search.audit) and best.json's ensemble
    (search.export) become tables; each PNG in
    EXTRA_IMAGES that exists is embedded as base64, so the page stays one file.
    """
    sections = []
    tables = (
        (CERTIFIED_JSON, "Certified winner", certified_section),
        (AUDIT_JSON, "Pruning audit", audit_section),
    )
    for name, title, render in tables:
        path = Path(study_dir) / name
        if path.is_file():
            sections.append(_json_section(path, title, render))
    best = Path(study_dir) / BEST_JSON
    if best.is_file() and _has_ensemble(best):
        sections.append(_json_section(best, "Ensemble", ensemble_section))
    for name, title in EXTRA_IMAGES:
        path = Path(study_dir) / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            sections.append(
                f'<section id="{path.stem}"><h2>{html.escape(title)}</h2>'
                f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                "</section>"
            )
    return sections
