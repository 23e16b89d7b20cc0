"""split_by_width: which members of a stack train together, by a per-step cost model."""

import itertools
import random

import torch

from search.training.config import TrainConfig
from search.training.plan import MIN_SAVING, split_by_width, step_seconds

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _configs(widths, batch_size=128):
    return [TrainConfig(hidden=tuple(w), batch_size=batch_size) for w in widths]


def _cost(configs, groups):
    return sum(step_seconds([configs[i] for i in g], 64, 10) for g in groups)


def test_narrow_and_wide_members_train_in_separate_sub_stacks_on_a_cpu():
    configs = _configs([(16, 16)] * 6 + [(1024, 1024)] * 6)
    groups = split_by_width(configs, 64, 10, CPU)
    assert sorted(map(sorted, groups)) == [list(range(6)), list(range(6, 12))]
    assert _cost(configs, groups) < (1 - MIN_SAVING) * step_seconds(configs, 64, 10)


def test_a_gpu_stack_stays_whole_however_uneven_its_widths():
    configs = _configs([(16, 16)] * 6 + [(1024, 1024)] * 6)
    assert [sorted(g) for g in split_by_width(configs, 64, 10, CUDA)] == [list(range(12))]


def test_equal_widths_never_split():
    configs = _configs([(200, 100)] * 40)
    assert [sorted(g) for g in split_by_width(configs, 64, 10, CPU)] == [list(range(40))]


def test_the_plan_is_the_cheapest_split_of_the_members_sorted_by_size():
    """Against every way of cutting the sorted members into runs, enumerated."""
    rng = random.Random(3)
    for _ in range(5):
        configs = _configs(
            [(rng.choice([16, 64, 256, 1024]), rng.choice([16, 64, 256, 1024])) for _ in range(9)]
        )
        order = sorted(range(9), key=lambda i: (step_seconds([configs[i]], 64, 10), i))
        one = step_seconds(configs, 64, 10)
        best = one
        for cuts in itertools.chain.from_iterable(
            itertools.combinations(range(1, 9), r) for r in range(1, 9)
        ):
            bounds = (0, *cuts, 9)
            groups = [order[a:b] for a, b in itertools.pairwise(bounds)]
            best = min(best, _cost(configs, groups))
        groups = split_by_width(configs, 64, 10, CPU)
        assert sorted(i for g in groups for i in g) == list(range(9))
        planned = _cost(configs, groups)
        if len(groups) == 1:
            assert best > (1 - MIN_SAVING) * one
        else:
            assert abs(planned - best) < 1e-12


def test_a_thousand_members_are_planned_in_runs_and_each_trains_once():
    rng = random.Random(0)
    configs = _configs([(int(16 * 16 ** rng.random()),) for _ in range(1000)])
    groups = split_by_width(configs, 64, 10, CPU)
    assert sorted(i for g in groups for i in g) == list(range(1000))
    assert len(groups) > 1
