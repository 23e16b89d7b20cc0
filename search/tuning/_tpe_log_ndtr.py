"""TPE's log Φ(x) on SciPy's compiled `log_ndtr` instead of Optuna's per-element Python loop.

Optuna's truncated-normal helper computes log Φ(x) with `np.frompyfunc` over a Python function
(optuna#5478): a third of TPE's own time per trial here. SciPy's `log_ndtr` is the same function
and algorithm (they agree to 1e-12, tests/tuning/test_tpe_log_ndtr.py) and comes with scikit-learn.
The swap replaces a private attribute of `optuna.samplers._tpe._truncnorm`: an Optuna without it
is left alone, and the test then fails, naming the Optuna version.
"""

from __future__ import annotations

from search.optuna_versions import internals_allowed

OPTUNA_INTERNAL = "optuna.samplers._tpe._truncnorm._log_ndtr"


def use_compiled_log_ndtr() -> bool:
    """Swap SciPy's `log_ndtr` into TPE; returns whether the swap is in place (never where
    Optuna's internals are off, search.optuna_versions)."""
    if not internals_allowed():
        return False
    try:
        from optuna.samplers._tpe import _truncnorm
        from scipy.special import log_ndtr
    except ImportError:
        return False
    if not callable(getattr(_truncnorm, "_log_ndtr", None)):
        return False
    _truncnorm._log_ndtr = log_ndtr
    return True
