"""The lr schedule follows its formula step by step."""

import math

import pytest

from search.training.schedule import lr_factor


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 1 / 10),  # warm-up: 10 of 100 steps, from lr/10 up
        ("constant", 9, 1.0),
        ("constant", 99, 1.0),
        ("cosine", 10, 1.0),  # the peak, right after warm-up
        ("cosine", 55, 0.5),  # half-way through the 90 decay steps: cos(pi/2)
        ("cosine", 40, 0.5 * (1 + math.cos(math.pi * 30 / 90))),
        ("onecycle", 4, 5 / 10),
        ("onecycle", 55, 0.5),
        ("onecycle", 99, 1 / 90),  # the last step, one step short of zero
    ],
)
def test_lr_factor_matches_each_schedules_formula(schedule, step, expected):
    assert lr_factor(schedule, 0.1, step, 100) == pytest.approx(expected)


def test_no_warmup_starts_at_the_full_lr():
    assert lr_factor("cosine", 0.0, 0, 50) == 1.0
    assert lr_factor("onecycle", 0.0, 25, 50) == pytest.approx(0.5)
