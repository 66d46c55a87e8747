"""The shared network bodies: MLP and convolutional encoders/decoders for any image size they allow."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from aelab.errors import ConfigError
from aelab.models import model_config_from_dict
from aelab.models.blocks import Decoder, Encoder, conv_grid, mlp


def config(**kw):
    return model_config_from_dict({"name": "ae", **kw})


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 32, 32), (3, 28, 28)])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_encoder_and_decoder_map_images_to_codes_and_back(shape, arch):
    cfg = config(input_shape=shape, arch=arch, hidden_dims=(32,), latent_dim=5)
    x = torch.rand(3, *shape)
    z = Encoder(cfg, 5)(x)
    assert z.shape == (3, 5)
    assert Decoder(cfg, 5)(z).shape == (3, *shape)


def test_conv_encoder_really_convolves_and_halves_the_grid_per_layer():
    cfg = config(input_shape=(3, 32, 32), arch="conv", conv_channels=(8, 16, 32), hidden_dims=())
    enc = Encoder(cfg, 4)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32] and convs[0].in_channels == 3
    assert conv_grid(cfg.input_shape, cfg.conv_channels) == (32, 4, 4)
    assert [m.in_features for m in enc.modules() if isinstance(m, nn.Linear)] == [32 * 4 * 4]
    dec = Decoder(cfg, 4)
    tconvs = [m for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(t.in_channels, t.out_channels) for t in tconvs] == [(32, 16), (16, 8), (8, 3)]


def test_extra_features_join_the_encoder_after_flattening():
    cfg = config(input_shape=(1, 8, 8), arch="conv", conv_channels=(4,), hidden_dims=())
    enc = Encoder(cfg, 3, n_extra=2)
    x = torch.rand(2, 1, 8, 8)
    a = enc(x, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    b = enc(x, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert a.shape == (2, 3) and not torch.allclose(a, b)


def test_the_decoder_ends_in_logits_not_an_activation():
    for arch in ("mlp", "conv"):
        dec = Decoder(config(input_shape=(1, 8, 8), arch=arch, conv_channels=(4,)), 2)
        last = [m for m in dec.modules() if not isinstance(m, (nn.Sequential, Decoder))][-1]
        assert not isinstance(last, (nn.ReLU, nn.Sigmoid)), arch


def test_mlp_puts_relu_between_linear_layers_only():
    net = mlp(6, (5, 4), 3)
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("kw, message", [
    ({"arch": "transformer"}, "unknown arch"),
    ({"arch": "conv", "conv_channels": ()}, "conv_channels"),
    ({"arch": "conv", "conv_channels": (0, 4)}, "conv_channels"),
])
def test_bad_network_settings_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        config(**kw)


def test_the_image_size_is_checked_when_the_model_is_built_for_the_data():
    cfg = config(arch="conv", conv_channels=(8, 8, 8, 8, 8))     # 5 halvings: 32 works, 28 not
    cfg.input_shape = (3, 32, 32)                                 # as the trainer sets it
    assert Encoder(cfg, 4)(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    cfg.input_shape = (1, 28, 28)
    with pytest.raises(ConfigError, match="divisible by 32, got 28x28"):
        Encoder(cfg, 4)
