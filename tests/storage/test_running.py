"""The one module that touches a running trial's storage still finds Optuna's internals."""

import optuna
from helpers import needs_internals

from search.storage import running


@needs_internals
def test_the_private_door_still_opens():
    study = optuna.create_study()
    trial = study.ask()
    frozen = study.trials[0]
    try:
        running.set_user_attr(study, frozen, "k", 1)
    except AttributeError as e:
        raise AssertionError(
            f"Optuna {optuna.__version__} moved {running.OPTUNA_INTERNAL}: "
            f"search/storage/running.py must follow it ({e})"
        ) from None
    assert study.trials[0].user_attrs["k"] == 1 and trial.number == frozen.number
