"""The portable MLP is built from plain values in the documented layer order."""

import torch
from torch import nn

from search.training.config import TrainConfig
from search.training.model import architecture, build_mlp, count_params


def test_notebook_model_has_the_notebook_shapes():
    model = build_mlp(TrainConfig(hidden=(512, 256), dropout=0.3), in_features=3072, n_classes=10)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3072, 512), (512, 256), (256, 10)]
    assert model(torch.randn(4, 3072)).shape == (4, 10)


def test_layer_order_is_linear_bn_activation_dropout_and_head_returns_logits():
    model = build_mlp(TrainConfig(hidden=(8,), activation="tanh", dropout=0.1), in_features=4, n_classes=3)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout, nn.Linear]
    model.eval()
    out = model(torch.randn(5, 4))
    assert not torch.allclose(out.sum(1), torch.ones(5))  # no softmax at the end


def test_batchnorm_uses_the_sampled_momentum_and_can_be_off():
    with_bn = build_mlp(TrainConfig(hidden=(8, 8), bn_momentum=0.37), in_features=4, n_classes=2)
    assert [m.momentum for m in with_bn if isinstance(m, nn.BatchNorm1d)] == [0.37, 0.37]
    without = build_mlp(TrainConfig(hidden=(8,), batchnorm=False), in_features=4, n_classes=2)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in without)


def test_architecture_string_names_every_layer():
    config = TrainConfig(hidden=(512, 256), dropout=0.3)
    assert architecture(config, in_features=3072, n_classes=10) == (
        "3072-512(bn,relu,p=0.3)-256(bn,relu,p=0.3)-10"
    )
    model = build_mlp(config, in_features=3072, n_classes=10)
    assert count_params(model) == 3072 * 512 + 512 + 512 * 2 + 512 * 256 + 256 + 256 * 2 + 2570


def test_param_count_matches_the_built_model_without_building_it():
    from search.training.model import param_count

    for config in (TrainConfig(hidden=()), TrainConfig(hidden=(7, 5), batchnorm=False), TrainConfig()):
        model = build_mlp(config, in_features=12, n_classes=4)
        assert param_count(config, in_features=12, n_classes=4) == count_params(model)
