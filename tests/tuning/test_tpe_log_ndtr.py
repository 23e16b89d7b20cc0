"""SciPy's log_ndtr stands in for Optuna's per-element one in TPE, agreeing to 1e-12."""

import numpy as np
import optuna
from helpers import needs_internals

from search.tuning._tpe_log_ndtr import OPTUNA_INTERNAL, use_compiled_log_ndtr


@needs_internals
def test_compiled_log_ndtr_agrees_with_optunas_own():
    from optuna.samplers._tpe import _truncnorm

    x = np.concatenate([np.linspace(-60, 60, 4001), np.array([-1e3, -30.5, 0.0, 5.999, 6.001, 40.0])])
    ours = _truncnorm._log_ndtr(x) if use_compiled_log_ndtr() else None
    theirs = np.frompyfunc(_truncnorm._log_ndtr_single, 1, 1)(x).astype(float)
    assert ours is not None, (
        f"Optuna {optuna.__version__} has no {OPTUNA_INTERNAL}: search/tuning/_tpe_log_ndtr.py must follow it"
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-12)
