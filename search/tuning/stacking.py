"""A worker's trials, K at a time: asked together, trained as one stacked model, told one by one.

`run_stack` asks Optuna for a stack's trials (ask and tell; TPE's constant liar keeps trials
that run together apart), trains them with `fit_stacked`, and reports, prunes and tells each on
its own, so each trial in the storage looks like one trained alone, plus the attrs `stack_id`
(the number of its stack's first trial), `stack_size` and `stack_padding`.

The members of a stack must share depth, batch size and input whitening (search.training.stacked).
The first trial is sampled freely; the others are sampled with those params fixed to the first's
(Optuna's `PartialFixedSampler`), so the sampler's choices never split a stack into singletons:
TPE picks those few params once per stack and every other param per trial. On a CPU a stack's
trials are then split by width into sub-stacks trained one after another, where the padding to
the widest member would cost more than the extra steps (search.training.stack_plan); each
sub-stack's trials are told before the next trains, so its pruner sees them as finished. A trial that arrives
with its own params (a retry, the baseline) and does not fit trains in a stack of its own.
Stacked trials save no resume state: a retried one starts over.

The median pruner judges a stack's members against each other too: at each epoch its reference
is the completed trials' values and those of the members that reported the same epoch, as if
they had run one after another. Without that, a study's first stack could prune nothing (no
trial is complete until it ends) and every stack would wait on the ones before it. The trials
that completed in a sub-stack trained earlier join that reference too. Successive
halving and Hyperband see the members' values through the storage, as they see any running trial.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import described
from search.training.device import free_memory
from search.training.stack_plan import split_by_width
from search.training.stacked import fit_stacked, stack_capacity, stack_key
from search.training.trainer import EpochMetrics
from search.tuning._running_trials import fail_stale, heartbeats
from search.tuning.objective import ATTR_REASON, Begun, Objective
from search.tuning.space import stack_params
from search.tuning.strategy import should_prune

ATTR_STACK_ID = "stack_id"  # the number of the first trial of the stack it trained in
ATTR_STACK_SIZE = "stack_size"  # trials in that stack when it started
ATTR_STACK_PADDING = "stack_padding"  # share of the stack's matmul work spent on padding


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
    `interrupted`, for the runner to retry."""
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
            groups.setdefault(stack_key(m.begun.config), []).append(m)
        data = objective.data
        for group in groups.values():
            configs = [m.begun.config for m in group]
            earlier: list[dict[int, float]] = []  # what this group's completed sub-stacks reported
            for part in split_by_width(configs, data.in_features, data.n_classes, data.device):
                sub = [group[i] for i in sorted(part)]  # in the order they were asked
                stacks.append((len(sub), _train(study, objective, sub, tell_done, earlier)))
                earlier += [m.begun.reported for m in sub if m.trial.number in completed]
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
        return _Member(trial, objective.begin(trial, resumable=False))
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
) -> float:
    """Train one stack and tell its trials; returns the share of its work spent on padding.
    `earlier`: the reports of trials that completed in the sub-stacks trained before this one
    (not yet in the pruner's snapshot, which was read when the trials were asked)."""
    configs = [m.begun.config for m in group]
    for m in group:
        m.trial.set_user_attr(ATTR_STACK_ID, min(g.trial.number for g in group))
        m.trial.set_user_attr(ATTR_STACK_SIZE, len(group))

    def on_epoch(metrics: dict[int, EpochMetrics]) -> list[int]:
        for i, m in metrics.items():  # every member reports before any is judged
            group[i].trial.report(m.val_acc, m.epoch)
            group[i].begun.reported[m.epoch] = m.val_acc
        stop = []
        for i in metrics:
            member = group[i]
            peers = [group[j].begun.reported for j in metrics if j != i] + earlier
            if member.begun.prunable and should_prune(member.trial, member.begun.reported, peers=peers):
                stop.append(i)
        return stop

    try:
        with heartbeats(study, [m.trial for m in group]):
            results = fit_stacked(configs, objective.data, on_epoch=on_epoch)
    except Exception as e:  # the stack failed (OOM splitting ran out, a bug): each member fails
        free_memory(objective.data.device)
        for m in group:
            m.trial.set_user_attr(ATTR_REASON, described(e))
            on_told(study.tell(m.trial, state=TrialState.FAIL))
        return 0.0
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
