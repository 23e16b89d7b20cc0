"""The portable MLP is built from plain values in the documented layer order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.errors import UserError
from search.training.config import TrainConfig
from search.training.model import architecture, build_mlp, count_params, mirrored


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


def test_residual_blocks_add_an_inverted_bottleneck_of_the_normalized_input():
    config = TrainConfig(hidden=(6, 6), residual=True, expansion=3, batchnorm=False, layernorm=True)
    model = build_mlp(config, in_features=4, n_classes=2).eval()
    stem, norm, act, block, head = model
    assert (block.fc1.in_features, block.fc1.out_features, block.fc2.out_features) == (6, 18, 6)
    x = torch.randn(5, 4)
    h = act(norm(stem(x)))
    by_hand = h + block.fc2(torch.relu(block.fc1(F.layer_norm(h, (6,), block.norm.weight, block.norm.bias))))
    assert torch.allclose(model(x), head(by_hand), atol=1e-6)
    assert architecture(config, in_features=4, n_classes=2) == "4-6(ln,relu)-6(res*3,ln,relu)-2"
    with pytest.raises(UserError, match="equal hidden widths"):
        TrainConfig(hidden=(6, 5), residual=True)


def test_layernorm_normalizes_each_row_over_its_units_between_linear_and_activation():
    config = TrainConfig(hidden=(8, 6), batchnorm=False, layernorm=True, activation="gelu")
    model = build_mlp(config, in_features=4, n_classes=2).train()
    for m in model.modules():  # non-trivial affine parameters, so a skipped scale would show
        if isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -1.0, 1.0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    x = torch.randn(5, 4)
    h = x
    for lin, norm in zip(linears, norms, strict=False):  # by hand: standardize each row, scale, shift
        z = h @ lin.weight.T + lin.bias
        z = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + norm.eps)
        h = F.gelu(z * norm.weight + norm.bias)
    by_hand = h @ linears[-1].weight.T + linears[-1].bias
    assert torch.allclose(model(x), by_hand, atol=1e-5)
    # unlike BatchNorm, a row's output does not depend on the rest of its batch, even in training
    assert torch.allclose(model(x[:2]), model(x)[:2], atol=1e-6)
    assert architecture(config, in_features=4, n_classes=2) == "4-8(ln,gelu)-6(ln,gelu)-2"


def test_architecture_string_names_every_layer():
    config = TrainConfig(hidden=(512, 256), dropout=0.3)
    assert architecture(config, in_features=3072, n_classes=10) == (
        "3072-512(bn,relu,p=0.3)-256(bn,relu,p=0.3)-10"
    )
    model = build_mlp(config, in_features=3072, n_classes=10)
    assert count_params(model) == 3072 * 512 + 512 + 512 * 2 + 512 * 256 + 256 + 256 * 2 + 2570


def test_param_count_matches_the_built_model_without_building_it():
    from search.training.model import param_count

    configs = (TrainConfig(hidden=()), TrainConfig(hidden=(7, 5), batchnorm=False), TrainConfig(),
               TrainConfig(hidden=(7, 5), batchnorm=False, layernorm=True),
               TrainConfig(hidden=(6, 6, 6), residual=True, expansion=3))  # fmt: skip
    configs += tuple(c.replace(ensemble_k=5, feature_scale=True) for c in configs)
    configs += (TrainConfig(hidden=(7, 5), ensemble_k=3), TrainConfig(hidden=(7,), feature_scale=True))
    for config in configs:
        model = build_mlp(config, in_features=12, n_classes=4)
        assert param_count(config, in_features=12, n_classes=4) == count_params(model)


def test_mirrored_reverses_every_row_of_every_channel():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    flat = mirrored(images.reshape(2, -1), width=5)
    assert torch.equal(flat, images.flip(3).reshape(2, -1))


def test_a_tta_model_answers_with_the_mean_probability_of_an_image_and_its_mirror():
    import numpy as np

    config = TrainConfig(hidden=(6,), tta_hflip=True)
    torch.manual_seed(0)
    model = build_mlp(config, in_features=2 * 3 * 3, n_classes=4, image_shape=(2, 3, 3)).eval()
    plain = nn.Sequential(*model)  # the same layers, no mirroring
    plain.load_state_dict(model.state_dict())  # one state_dict for both
    images = torch.randn(5, 2, 3, 3)
    with torch.no_grad():
        a = plain(images.reshape(5, -1)).double().numpy()
        b = plain(images.flip(3).reshape(5, -1)).double().numpy()
        ours = model(images.reshape(5, -1)).double().numpy()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    np.testing.assert_allclose(np.exp(ours), (softmax(a) + softmax(b)) / 2, rtol=1e-5, atol=1e-7)
    model.train()
    torch.manual_seed(1)
    x = torch.randn(5, 18)
    assert torch.equal(model(x), plain.train()(x))  # training sees the plain model


def test_tta_without_an_image_shape_is_refused():
    import pytest

    from search.errors import UserError

    with pytest.raises(UserError, match="tta_hflip needs image data"):
        build_mlp(TrainConfig(hidden=(4,), tta_hflip=True), in_features=12, n_classes=2)
