"""TrainConfig is the whole of a trial's config and survives a trip through JSON."""

import json

import pytest

from search.errors import UserError
from search.training.config import TrainConfig


def test_config_round_trips_through_json():
    config = TrainConfig(hidden=(128, 64), activation="gelu", dropout=0.25, l1=1e-5, seed=7)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.hidden == (128, 64)  # JSON's list comes back as a tuple


def test_unknown_keys_are_kept_not_lost():
    config = TrainConfig.from_dict({"lr": 0.01, "future_knob": 3})
    assert config.lr == 0.01
    assert config.to_dict()["extra"] == {"future_knob": 3}


@pytest.mark.parametrize(
    "bad",
    [{"activation": "swish"}, {"optimizer": "lbfgs"}, {"dropout": 1.0}, {"lr": 0}, {"hidden": [0]}],
)
def test_invalid_values_are_refused_in_one_line(bad):
    with pytest.raises(UserError) as e:
        TrainConfig.from_dict(bad)
    assert "\n" not in str(e.value)
