"""MO-ASHA: at a rung, a trial goes on only if it is among the first n // 3 + 1 of the n trials
that reached it (and the first front's two ends always are), ranked by Pareto front, then
crowding distance, then score (search.tuning.pareto)."""

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.schema import ATTR_EPOCH_SCORES, ATTR_PARAMS
from search.tuning.pareto import ParetoPruner, Point, crowding, front_ranks, ranked, survivors
from search.tuning.strategy import make_pruner
from search.tuning.trials import pareto_front

# Nine trials at the rung of epoch 1: (score there, parameters).
FRONT = {
    "A": (0.90, 1000),
    "B": (0.80, 100),
    "C": (0.70, 10),
    "D": (0.85, 2000),  # dominated by A
    "E": (0.60, 500),  # dominated by B, C and H
    "F": (0.95, 5000),
    "G": (0.50, 5),
    "H": (0.75, 300),  # dominated by B
    "I": (0.40, 8000),  # dominated by every other
}
NUMBER = {name: i for i, name in enumerate(FRONT)}
NAME = {i: name for name, i in NUMBER.items()}


def _points() -> list[Point]:
    return [Point(NUMBER[n], s, c) for n, (s, c) in FRONT.items()]


def test_the_hand_built_front_is_sorted_and_cut_as_the_design_notes_say():
    points = _points()
    ranks = {NAME[p.number]: r for p, r in zip(points, front_ranks(points), strict=True)}
    assert {n for n, r in ranks.items() if r == 0} == {"A", "B", "C", "F", "G"}
    assert {n for n, r in ranks.items() if r == 1} == {"D", "H"}  # the first front removed
    assert (ranks["E"], ranks["I"]) == (2, 3)  # then H's removal frees E, E's frees I
    # The first front's crowding distances: the ends (G: cheapest, F: best) are infinite; A's
    # neighbours lie (0.95 - 0.80) / 0.45 apart in score and (5000 - 100) / 4995 in cost.
    first = [p for p in points if ranks[NAME[p.number]] == 0]
    distance = {NAME[p.number]: d for p, d in zip(first, crowding(first), strict=True)}
    assert distance["F"] == distance["G"] == math.inf
    assert distance["A"] == pytest.approx(0.15 / 0.45 + 4900 / 4995)
    assert distance["C"] == pytest.approx(0.30 / 0.45 + 95 / 4995)
    assert distance["B"] == pytest.approx(0.20 / 0.45 + 990 / 4995)
    # F and G tie at infinity: the higher score first. Then A (1.31), C (0.69), B (0.64).
    assert [NAME[p.number] for p in ranked(points)][:5] == ["F", "G", "A", "C", "B"]
    # 9 trials, reduction factor 3: the first 9 // 3 + 1 = 4 go on; B, on the front but crowded, stops.
    assert {NAME[n] for n in survivors(points, 3)} == {"F", "G", "A", "C"}


def _study(states: dict[str, TrialState]) -> optuna.Study:
    """A two-objective study holding the hand-built trials, as the storage would: their scores
    per epoch in the user attr, their parameter count in n_params."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for name, (score, n_params) in FRONT.items():
        state = states.get(name, TrialState.PRUNED)
        study.add_trial(
            create_trial(
                state=state,
                values=[score + 0.01, n_params] if state == TrialState.COMPLETE else None,
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs={ATTR_EPOCH_SCORES: {"1": score, "2": score + 0.01}, ATTR_PARAMS: n_params},
            )
        )
    return study


@pytest.mark.parametrize("judged", list(FRONT))
def test_the_pruner_judges_each_trial_against_the_others_at_the_rung(judged):
    study = _study({"A": TrialState.COMPLETE, "D": TrialState.COMPLETE})
    pruner = ParetoPruner(cost="params", max_resource=9, min_resource=1, reduction_factor=3)
    assert pruner.rungs == (1, 3)
    score, cost = FRONT[judged]
    stops = pruner.decide(study, NUMBER[judged], {1: score}, cost)
    assert stops == (judged not in {"F", "G", "A", "C"})
    assert not pruner.decide(study, NUMBER[judged], {1: score, 2: score}, cost)  # 2 is no rung


def test_failed_trials_do_not_count_and_peers_do():
    study = _study({"F": TrialState.FAIL, "G": TrialState.FAIL})  # their retries carry their reports
    pruner = make_pruner("halving", 9, cost="params")
    assert isinstance(pruner, ParetoPruner)
    # 7 trials at the rung: the first 3 go on, the front A, C (its ends) and B; H (front 2) stops.
    assert not pruner.decide(study, NUMBER["A"], {1: 0.90}, 1000)
    assert not pruner.decide(study, NUMBER["C"], {1: 0.70}, 10)
    assert not pruner.decide(study, NUMBER["B"], {1: 0.80}, 100)
    assert pruner.decide(study, NUMBER["H"], {1: 0.75}, 300)
    # A stack's member not yet in the storage is judged with its peers: alone at the rung it goes
    # on; against two peers that dominate it, it stops.
    empty = optuna.create_study(directions=["maximize", "minimize"])
    fresh = ParetoPruner(cost="params", max_resource=9)
    assert not fresh.decide(empty, 0, {1: 0.5}, 100)
    peers = {1: ({1: 0.9}, 50.0), 2: ({1: 0.8}, 60.0), 3: ({2: 0.99}, 1.0)}  # 3 has not reached epoch 1
    assert fresh.decide(empty, 0, {1: 0.5}, 100, peers)
    assert fresh.decide(empty, 0, {1: math.nan}, 100)  # a NaN score stops


def test_both_ends_of_the_first_front_go_on_even_where_a_third_would_keep_one():
    accurate, cheap = Point(0, 0.90, 6_400_000), Point(1, 0.50, 800_000)
    assert survivors([accurate, cheap], 3) == {0, 1}  # neither dominates: both are the front's ends
    better = Point(2, 0.60, 700_000)
    assert survivors([better, Point(3, 0.50, 800_000)], 3) == {2}  # one dominates: it alone goes on
    # the same with a trial judged against the storage: the cheaper trial arrives second and goes on
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(
        create_trial(
            state=TrialState.RUNNING,
            params={},
            distributions={},
            user_attrs={ATTR_EPOCH_SCORES: {"4": 0.90}, ATTR_PARAMS: 6_400_000},
        )  # fmt: skip
    )
    pruner = ParetoPruner(cost="params", max_resource=24, min_resource=4)
    assert not pruner.decide(study, 1, {4: 0.50}, 800_000)
    assert pruner.decide(study, 1, {4: 0.50}, 7_000_000)  # dominated: stops


def test_make_pruner_with_two_objectives():
    assert isinstance(make_pruner("none", 9, cost="latency"), optuna.pruners.NopPruner)
    for name in ("median", "halving", "hyperband"):
        pruner = make_pruner(name, 20, cost="latency", min_epochs=2)
        assert isinstance(pruner, ParetoPruner) and pruner.rungs == (2, 6, 18)


def test_pareto_front_of_complete_trials_cheapest_first():
    study = _study({n: TrialState.COMPLETE for n in FRONT})
    assert [NAME[t.number] for t in pareto_front(study.trials)] == ["G", "C", "B", "A", "F"]
