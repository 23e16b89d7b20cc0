"""How a worker runs its trials, K at a time: asked together, trained as one model, told one by one.

A lone trial is a stack of one: the search has one way to run a trial, and every trial saves its
state and resumes after a crash. `run_stack` asks Optuna for a stack's trials (TPE's constant liar
keeps trials that run together apart), trains them with `fit_stacked`, and reports, prunes and tells
each on its own, so each looks in the storage like a trial trained alone, plus `stack_id`,
`stack_size` and `stack_padding`. The first trial is sampled freely, the others with the params
that shape the stack (depth, batch size, whitening) fixed to the first's (`PartialFixedSampler`),
so TPE never splits a stack into singletons. On a CPU a stack may then train as sub-stacks split by
width (search.training.plan), each told before the next trains. Retries of a crashed stack resume
together; a retry or the baseline that fits no stack trains alone.

The median pruner judges a stack's members against each other too, as if they had run one after
another: at each epoch its reference is the completed trials' values, the members' that reported
the same epoch and those that completed in an earlier sub-stack. Without that, a study's first
stack could prune nothing. Successive halving and Hyperband read the members through the storage.
A two-objective study's pruner (search.tuning.pareto) is handed the same peers, with their costs,
and every member of an earlier sub-stack (pruned ones too, as successive halving counts them).

A config over a hard limit (search.tuning.costs) is rejected while it is asked: told PRUNED with
its reason, it joins no stack.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.device import free_memory
from search.errors import described
from search.schema import ATTR_REASON, ATTR_STACK_ID, ATTR_STACK_PADDING, ATTR_STACK_SIZE
from search.storage.running import fail_stale, heartbeats
from search.training.fit import EpochMetrics, fit_stacked
from search.training.plan import split_by_width, stack_capacity, stack_key
from search.tuning import interrupts
from search.tuning.objective import Begun, Objective, Rejected
from search.tuning.pareto import ParetoPruner
from search.tuning.space import stack_params
from search.tuning.strategy import should_prune


@dataclass
class _Member:
    trial: optuna.Trial
    begun: Begun


def run_stack(
    study: optuna.Study,
    objective: Objective,
    size: int,
    *,
    claim: Callable[[int], int],
    on_told: Callable[[FrozenTrial], None],
    interrupted: list[int],
) -> list[tuple[int, float]]:
    """Ask up to `size` trials (the first slot is held; `claim(n)` grants up to n more), train
    them stacked, tell each; returns each stack's (size, padding share). A trial whose sampling
    fails is told FAIL; a failed stack fails its members. On Ctrl-C the members' numbers go to
    `interrupted`, for the runner to retry, with their latest states saved."""
    fail_stale(study)
    members: list[_Member] = []
    stacks: list[tuple[int, float]] = []
    told: set[int] = set()
    completed: set[int] = set()

    def tell_done(frozen: FrozenTrial) -> None:
        told.add(frozen.number)
        if frozen.state == TrialState.COMPLETE:
            completed.add(frozen.number)
        on_told(frozen)

    try:
        first = _ask(study, objective, tell_done)
        if first is None:
            return stacks
        members.append(first)
        size = min(size, stack_capacity(first.begun.config, objective.data))
        more = claim(size - 1) if size > 1 else 0
        if more:
            base = study.sampler
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.sampler = optuna.samplers.PartialFixedSampler(stack_params(first.trial.params), base)
            try:
                for _ in range(more):
                    m = _ask(study, objective, tell_done)
                    if m is not None:
                        members.append(m)
            finally:
                study.sampler = base
        groups: dict[tuple, list[_Member]] = {}
        for m in members:
            groups.setdefault(stack_key(m.begun.config, m.begun.start_epoch), []).append(m)
        data = objective.data
        for group in groups.values():
            configs = [m.begun.config for m in group]
            earlier: list[dict[int, float]] = []  # what this group's completed sub-stacks reported
            before: list[_Member] = []  # every member of this group's earlier sub-stacks
            split = data.variant(configs[0].numeric)  # numeric is in the stack key
            sizes = (split.in_features, data.n_classes, data.device)
            for part in split_by_width(configs, *sizes, numeric_features=split.numeric_features):
                sub = [group[i] for i in sorted(part)]  # in the order they were asked
                stacks.append((len(sub), _train(study, objective, sub, tell_done, earlier, before)))
                earlier += [m.begun.reported for m in sub if m.trial.number in completed]
                before += sub
    except KeyboardInterrupt:
        for m in (m for m in members if m.trial.number not in told):
            m.trial.set_user_attr(ATTR_REASON, "interrupted")
            interrupted.append(m.trial.number)
        raise
    return stacks


def _ask(study: optuna.Study, objective: Objective, on_told) -> _Member | None:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for study.optimize; `heartbeats` starts them.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    try:
        return _Member(trial, objective.begin(trial))
    except Rejected as e:  # over a hard limit: never trained, and not a failure
        trial.set_user_attr(ATTR_REASON, str(e))
        on_told(study.tell(trial, state=TrialState.PRUNED))
        return None
    except Exception as e:
        trial.set_user_attr(ATTR_REASON, described(e))
        on_told(study.tell(trial, state=TrialState.FAIL))
        return None


def _train(
    study: optuna.Study,
    objective: Objective,
    group: list[_Member],
    on_told,
    earlier: list[dict[int, float]],
    before: list[_Member],
) -> float:
    """Train one stack and tell its trials; returns the share of its work spent on padding.
    `earlier`: the reports of trials that completed in the sub-stacks trained before this one
    (not yet in the pruner's snapshot, which was read when the trials were asked); `before`:
    every member of those sub-stacks (a two-objective study's pruner counts pruned ones too)."""
    configs = [m.begun.config for m in group]
    for m in group:
        m.trial.set_user_attr(ATTR_STACK_ID, min(g.trial.number for g in group))
        m.trial.set_user_attr(ATTR_STACK_SIZE, len(group))

    def on_epoch(metrics: dict[int, EpochMetrics]) -> list[int]:
        for i, m in metrics.items():  # every member reports before any is judged
            objective.report(group[i].trial, group[i].begun, m.epoch, m.val_score)
        interrupts.check()  # a signal a finalizer swallowed mid-epoch stops the stack here
        if objective.deadline is not None and time.time() >= objective.deadline:
            for i in metrics:  # the run's time is up: every member ends after this epoch
                group[i].begun.out_of_time = True
            return list(metrics)
        stop = []
        pruner = study.pruner
        for i in metrics:
            member = group[i]
            if not member.begun.prunable:
                continue
            if member.begun.cost is not None:  # two objectives: MO-ASHA, or no pruner at all
                beside = [group[j] for j in metrics if j != i] + before
                peers = {p.trial.number: (p.begun.reported, p.begun.cost or 0.0) for p in beside}
                if isinstance(pruner, ParetoPruner) and pruner.decide(
                    study, member.trial.number, member.begun.reported, member.begun.cost, peers
                ):
                    stop.append(i)
                continue
            peers_reported = [group[j].begun.reported for j in metrics if j != i] + earlier
            if should_prune(member.trial, member.begun.reported, peers=peers_reported):
                stop.append(i)
        return stop

    def on_state(i, state) -> None:
        if group[i].begun.keeper is not None:
            group[i].begun.keeper.offer(state)

    keepers = [m.begun.keeper for m in group if m.begun.keeper is not None]
    try:
        with heartbeats(study, [m.trial for m in group]):
            results = fit_stacked(
                configs, objective.data, on_epoch=on_epoch, on_state=on_state,
                resume=[m.begun.resume for m in group],
            )  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep each member's last epoch for its retry
        for k in keepers:
            k.flush()
        raise
    except Exception as e:  # the stack failed (OOM splitting ran out, a bug): each member fails
        free_memory(objective.data.device)
        for k in keepers:
            k.discard()  # a failure is not retried: nothing will resume its state
        for m in group:
            m.trial.set_user_attr(ATTR_REASON, described(e))
            on_told(study.tell(m.trial, state=TrialState.FAIL))
        return 0.0
    for k in keepers:
        k.discard()  # every member ended: nothing left to resume
    for m, result in zip(group, results, strict=True):
        m.trial.set_user_attr(ATTR_STACK_PADDING, round(result.stack_padding, 4))
        try:
            value = objective.end(m.trial, m.begun, result)
        except optuna.TrialPruned:
            frozen = study.tell(m.trial, state=TrialState.PRUNED)
        except Exception as e:  # saving the best weights failed, say
            m.trial.set_user_attr(ATTR_REASON, described(e))
            frozen = study.tell(m.trial, state=TrialState.FAIL)
        else:
            frozen = study.tell(m.trial, value)
        on_told(frozen)
    return results[0].stack_padding if results else 0.0
