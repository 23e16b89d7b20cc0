"""Two ways of training timed fairly on a shared machine: alternated, the order swapped each round.

A busy neighbour slows whichever fit runs beside it; alternating the variants round by round,
and swapping which goes first, spreads that over both, and the median of the rounds' ratios is
the figure (the middle half of the ratios says how far one round is to be trusted).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def alternate(
    variants: list[tuple[str, Callable[[], float]]], *, rounds: int, progress=lambda line: None
) -> dict[str, list[float]]:
    """Each variant's seconds per round: `variants` in order on even rounds, reversed on odd."""
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(rounds):
        for name, run in variants if r % 2 == 0 else variants[::-1]:
            times[name].append(run())
            progress(f"round {r + 1}/{rounds} {name}: {times[name][-1]:.3f} s per epoch")
    return times


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def quartiles(values: list[float]) -> tuple[float, float]:
    """The inclusive first and third quartiles; one value is both."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]
