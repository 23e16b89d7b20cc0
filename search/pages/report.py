"""One self-contained HTML page about a study, readable offline: the library behind `search.report`.

The page embeds plotly.js once (no CDN, so it opens from a laptop on a plane or from a CI
artifact) and shows: the optimization history, every trial's learning curve (pruned ones dashed
and ending early), parallel coordinates, parameter importances, slice plots and the best trials.
It also warns when the best trials crowd a bound of a range: the optimum may lie outside it.
A two-objective study (search.tuning.costs) gets its Pareto front drawn by Optuna's
`plot_pareto_front`; every other figure plots its validation score, the first objective.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from search.errors import UserError
from search.files import atomic_write
from search.pages.sections import extra_sections, short_params
from search.schema import (
    ATTR_ARCH,
    ATTR_EPOCH_SCORES,
    ATTR_PARAMS,
    ATTR_SECONDS,
    REPORT_HTML,
    RESULTS_DIR,
    STUDY_DATASET,
    STUDY_EPOCHS,
    STUDY_METRIC,
    STUDY_OBJECTIVES,
    study_dir,
)
from search.storage.connect import redacted
from search.tuning.finished import open_finished
from search.tuning.space_edges import EdgeWarning, edge_warnings, study_space
from search.tuning.trials import (
    baseline_gain,
    best_trials,
    complete_trials,
    counts_text,
    state_counts,
    value_of,
)

MIN_IMPORTANCE_TRIALS = 5  # below this, importances are noise: the page shows a note instead
N_BEST_ROWS = 10
SLICE_COLUMNS = 4  # Optuna draws one 300 px panel per param; 4 fit beside each other on a screen
# >>> Images another command writes into results/<study>/; extra_sections() embeds them. <<<
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# ---------------------------------------------------------------- figures and sections


def epoch_scores(t: FrozenTrial) -> dict[int, float]:
    """A trial's validation score per epoch: its intermediate values, or a two-objective
    trial's `epoch_scores` attr (Optuna keeps no intermediate values there)."""
    if t.intermediate_values:
        return dict(t.intermediate_values)
    raw = t.user_attrs.get(ATTR_EPOCH_SCORES)
    return {int(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def learning_curves_figure(
    trials: Sequence[FrozenTrial],
    *,
    epochs: int | None = None,
    maximize: bool = True,
    metric: str = "accuracy",
) -> go.Figure:
    """The validation score per epoch of every trial; pruned ones dashed red, ending in an x."""
    fig = go.Figure()
    styles = {
        TrialState.COMPLETE: ("complete", dict(color="rgba(31,119,180,0.55)", width=1.5)),
        TrialState.PRUNED: (
            "pruned (stopped early)",
            dict(color="rgba(214,39,40,0.8)", width=1.5, dash="dash"),
        ),
    }
    other = ("failed / running", dict(color="rgba(127,127,127,0.8)", width=1, dash="dot"))
    top = best_trials(trials, maximize=maximize, minimum=1)
    best = top[0] if top else None
    shown: set[str] = set()
    for t in sorted(trials, key=lambda t: t is best):  # the best trial last: drawn on top
        curve = epoch_scores(t)
        if not curve:
            continue
        steps = sorted(curve)
        label, line = styles.get(t.state, other)
        if t is best:
            label, line = f"best (trial {t.number})", dict(color="rgb(44,160,44)", width=3.5)
        ends = t.state == TrialState.PRUNED
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[curve[s] for s in steps],
                name=label,
                legendgroup=label,
                showlegend=label not in shown,
                mode="lines+markers" if ends else "lines",
                line=line,
                marker=dict(symbol="x", size=[0] * (len(steps) - 1) + [10], color=line["color"]),
                hovertemplate=f"trial {t.number} ({t.state.name.lower()})<br>"
                "epoch %{x}: %{y:.4f}<extra></extra>",
            )
        )
        shown.add(label)
    last = epochs or max((max(epoch_scores(t)) for t in trials if epoch_scores(t)), default=1)
    fig.update_layout(
        title=f"Learning curves: validation {metric} per epoch",
        xaxis=dict(title="epoch", range=[0.5, last + 0.5], dtick=1),
        yaxis=dict(title=f"validation {metric}"),
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def importance_figure(
    study: optuna.Study, trials: Sequence[FrozenTrial], target=None
) -> tuple[go.Figure | None, str]:
    """A bar chart of PED-ANOVA importances (Optuna 5's default) for the value (or `target`),
    or why there is none."""
    complete = complete_trials(trials)
    searched = sorted({n for t in complete for n, d in t.distributions.items() if not d.single()})
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, (
            f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete "
            f"trials; this study has {len(complete)}."
        )
    if len(searched) < 2:
        listed = ", ".join(searched) or "none"
        return None, f"Only {len(searched)} searched parameter ({listed}): nothing to rank."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imp = optuna.importance.get_param_importances(study, target=target)
    if any("will be equal" in str(w.message) for w in caught) or len(set(imp.values())) < 2:
        return None, "Too few distinct trials to tell the parameters' importances apart."
    names = list(imp)[::-1]  # plotly draws the first bar at the bottom; the most important on top
    fig = go.Figure(
        go.Bar(
            x=[imp[n] for n in names], y=names, orientation="h", hovertemplate="%{y}: %{x:.3f}<extra></extra>"
        )
    )
    fig.update_layout(
        title="Parameter importances (PED-ANOVA: how much each parameter's "
        "distribution in the best 10% differs from all trials)",
        xaxis_title="importance (sums to 1)",
        height=max(350, 28 * len(names) + 150),
    )
    return fig, ""


def best_table(trials: Sequence[FrozenTrial], *, maximize: bool = True) -> str:
    rows = []
    for rank, t in enumerate(best_trials(trials, maximize=maximize, fraction=0, minimum=N_BEST_ROWS), 1):
        a = t.user_attrs
        cells = (
            rank,
            t.number,
            f"{value_of(t):.4f}",
            short_params(t.params),
            a.get(ATTR_ARCH, ""),
            f"{a[ATTR_PARAMS]:,}" if isinstance(a.get(ATTR_PARAMS), int) else "",
            f"{a[ATTR_SECONDS]:.2f}" if isinstance(a.get(ATTR_SECONDS), (int, float)) else "",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>" for h in ("#", "trial", "value", "params", "architecture", "n_params", "train s")
    )
    return f'<table class="best"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# ---------------------------------------------------------------- the page


@dataclass
class Report:
    path: Path
    study_name: str
    n_trials: int
    warnings: list[EdgeWarning] = field(default_factory=list)


def write_report(
    *,
    storage_url: str,
    study_name: str | None = None,
    results_dir: str | Path = RESULTS_DIR,
    out: str | Path | None = None,
) -> Report:
    finished = open_finished(storage_url, study_name)  # read-only: a report never changes a file
    name, study, trials, url = finished.name, finished.study, finished.trials, finished.storage_url
    if len(study.directions) > 2:
        raise UserError(f"study {name!r} has {len(study.directions)} objectives; the report draws one or two")
    counts = {k.lower(): n for k, n in state_counts(trials).items()}
    if not counts["complete"]:
        raise UserError(
            f"study {name!r} has no finished (complete) trial yet ({counts_text(trials)}); "
            "run python -m search.run first"
        )
    folder = study_dir(results_dir, name)
    path = Path(out) if out else folder / REPORT_HTML
    # Two objectives: the score (maximized), then a cost.
    maximize = len(study.directions) > 1 or study.direction == optuna.study.StudyDirection.MAXIMIZE
    found = edge_warnings(
        [t.params for t in best_trials(trials, maximize=maximize)], study_space(study, trials)
    )
    page = render_page(
        study, trials, counts=counts, url=url, edges=found, extras=extra_sections(folder), maximize=maximize
    )
    try:
        atomic_write(path, page)  # a browser reloading the page never sees half of it
    except OSError as e:
        raise UserError(f"cannot write the report to {path}: {e.strerror or e}") from None
    return Report(path, name, len(trials), found)


def _figure_html(fig: go.Figure, anchor: str) -> str:
    fig.update_layout(margin=dict(t=60), template="plotly_white")
    return fig.to_html(include_plotlyjs=False, full_html=False, config=PLOT_CONFIG, div_id=anchor)


def render_page(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    *,
    counts: Mapping[str, int],
    url: str,
    edges: Sequence[EdgeWarning],
    extras: Sequence[str],
    maximize: bool,
) -> str:
    vis = optuna.visualization
    esc = html.escape
    metric = study.user_attrs.get(STUDY_METRIC, "accuracy")
    two = len(study.directions) > 1
    # Optuna's plots need a target for a two-objective study: its score.
    score: dict = dict(target=value_of, target_name=f"validation {metric}") if two else {}

    def section(anchor: str, title: str, body: str) -> str:
        return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'

    imp, note = importance_figure(study, trials, target=value_of if two else None)
    params = sorted({n for t in trials if t.state == TrialState.COMPLETE for n in t.params})
    slices = []
    for i in range(0, len(params), SLICE_COLUMNS):
        fig = vis.plot_slice(study, params=params[i : i + SLICE_COLUMNS], **score)
        if len(params[i : i + SLICE_COLUMNS]) == 1:
            fig.update_layout(width=450)  # Optuna leaves a lone panel as wide as the page
        slices.append(_figure_html(fig, f"slice-{i}"))
    curves = learning_curves_figure(
        trials, epochs=study.user_attrs.get(STUDY_EPOCHS), maximize=maximize, metric=metric
    )
    front = []
    if two:
        cost = (study.user_attrs.get(STUDY_OBJECTIVES) or ["score", "cost"])[1]
        names = [f"validation {metric}", {"params": "parameters", "latency": "latency (ms)"}.get(cost, cost)]
        fig = vis.plot_pareto_front(study, target_names=names)
        front = [section("pareto", "Pareto front (score against cost)", _figure_html(fig, "pareto-plot"))]
    sections = [
        section("best", f"Best trials (top {N_BEST_ROWS})", best_table(trials, maximize=maximize)),
        *front,
        section(
            "history",
            "Optimization history",
            _figure_html(vis.plot_optimization_history(study, **score), "history-plot"),
        ),
        section("curves", "Learning curves", _figure_html(curves, "curves-plot")),
        section(
            "importances",
            "Parameter importances",
            _figure_html(imp, "importances-plot") if imp else f'<p class="note">{esc(note)}</p>',
        ),
        section(
            "parallel",
            "Parallel coordinates",
            _figure_html(vis.plot_parallel_coordinate(study, **score), "parallel-plot"),
        ),
        section("slices", "Slice plots", "".join(slices)),
    ]
    sections.extend(extras)
    return PAGE.format(
        title=esc(f"Study {study.study_name}"),
        plotlyjs=get_plotlyjs(),
        summary=_summary(study, trials, counts=counts, url=url, edges=edges, maximize=maximize),
        sections="\n".join(sections),
    )


def _summary(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    *,
    counts: Mapping[str, int],
    url: str,
    edges: Sequence[EdgeWarning],
    maximize: bool,
) -> str:
    esc, attrs = html.escape, study.user_attrs
    best = best_trials(trials, maximize=maximize, minimum=1)[0]
    states = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    seconds = sum(float(t.user_attrs.get(ATTR_SECONDS) or 0) for t in trials)
    warn_items = "".join(f"<li>{esc(w.message())}</li>" for w in edges)
    return (
        f"<p>Dataset <b>{esc(str(attrs.get(STUDY_DATASET, '?')))}</b>, "
        f"{esc(str(attrs.get(STUDY_EPOCHS, '?')))} epochs per trial; {len(trials)} trials ({states}); "
        f"{seconds:.0f} s of training.<br>Best: trial {best.number}, value <b>{value_of(best):.4f}</b>"
        + (" (the best score on the Pareto front)" if len(study.directions) > 1 else "")
        + f", {esc(str(best.user_attrs.get(ATTR_ARCH, '')))}<br>"
        + (f"{esc(gain)}<br>" if (gain := baseline_gain(trials, value_of(best))) else "")
        + f'<span class="muted">storage {esc(redacted(url))}; '
        f"written {datetime.now().isoformat(timespec='seconds')}</span></p>"
        + (f'<div class="warn"><b>Search space</b><ul>{warn_items}</ul></div>' if edges else "")
    )


# A page error (from plotly or ours) is written onto <html>, so a headless browser test sees it.
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>
window.addEventListener("error", function (e) {{
  document.documentElement.setAttribute("data-js-error", String(e.message || e)); }});
window.addEventListener("unhandledrejection", function (e) {{
  document.documentElement.setAttribute("data-js-error", String(e.reason)); }});
</script>
<script>{plotlyjs}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }}
section {{ margin: 2em 0; }} h2 {{ border-bottom: 1px solid #ddd; }}
.muted {{ color: #777; font-size: 0.9em; }} .note {{ color: #555; font-style: italic; }}
.warn {{ background: #fff4e0; border-left: 4px solid #f0a020; padding: 0.5em 1em; }}
table.best {{ border-collapse: collapse; font-size: 0.85em; }}
table.best td, table.best th {{ border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }}
table.best th {{ white-space: nowrap; }} table.best tr.winner td {{ font-weight: bold; }}
table.best td:nth-child(4) {{ max-width: 520px; }} img {{ max-width: 100%; }}
</style></head>
<body><h1>{title}</h1>
{summary}
{sections}
</body></html>
"""
