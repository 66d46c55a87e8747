"""The deterministic autoencoder: the study's MSE loss, the BCE option, a linear code, layer sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aelab.config import resolve_config
from aelab.errors import ConfigError
from aelab.models import build_model, model_config_from_dict


def tiny_ae(**options):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"name": "ae", "input_shape": (1, 8, 8), "latent_dim": 3,
                                               "hidden_dims": (16,), **options}))


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of each Linear layer, in order."""
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_default_loss_is_the_study_mse(tiny_images):
    model = tiny_ae()
    assert model.cfg.loss == "mse"
    out = model(tiny_images)
    expected = nn.MSELoss()(torch.sigmoid(out.logits), tiny_images)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.terms["rec"], expected)


def test_bce_loss_is_binary_cross_entropy_summed_per_image(tiny_images):
    model = tiny_ae(loss="bce")
    out = model(tiny_images)
    expected = F.binary_cross_entropy_with_logits(out.logits, tiny_images, reduction="sum") / len(tiny_images)
    torch.testing.assert_close(out.loss, expected)


def test_mse_and_bce_models_with_the_same_weights_differ_only_in_the_loss(tiny_images):
    mse, bce = tiny_ae(loss="mse"), tiny_ae(loss="bce")
    out_mse, out_bce = mse(tiny_images), bce(tiny_images)
    torch.testing.assert_close(out_mse.logits, out_bce.logits)
    assert not torch.allclose(out_mse.loss, out_bce.loss)


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="'l1'"):
        tiny_ae(loss="l1")


def test_the_code_is_linear_and_can_be_negative(tiny_images):
    model = tiny_ae()
    assert isinstance(list(model.encoder.modules())[-1], nn.Linear)           # no ReLU / sigmoid on the code
    with torch.no_grad():
        z = model.embed(tiny_images)
    assert z.shape == (4, 3)
    assert (z < 0).any() and (z > 0).any()
    torch.testing.assert_close(model(tiny_images).z, z)       # forward decodes the same code


def test_the_forward_pass_is_deterministic(tiny_images):
    model = tiny_ae()
    assert torch.equal(model(tiny_images).loss, model(tiny_images).loss)


def test_reconstruct_is_sigmoid_of_decoded_code(tiny_images):
    model = tiny_ae()
    with torch.no_grad():
        expected = torch.sigmoid(model.decode(model.encode(tiny_images)))
        torch.testing.assert_close(model.reconstruct(tiny_images), expected)


def test_seed_ae_preset_is_784_512_256_64_mirrored():
    model = build_model(resolve_config("seed-ae").model)
    assert linear_shapes(model.encoder) == [(784, 512), (512, 256), (256, 64)]
    assert linear_shapes(model.decoder) == [(64, 256), (256, 512), (512, 784)]
    relus = [m for m in model.encoder.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2                                    # between the Linear layers only


@pytest.mark.parametrize("hidden, latent", [((), 5), ((32,), 4), ((40, 20, 10), 2)])
def test_hidden_and_latent_sizes_give_linear_layer_shapes(hidden, latent):
    model = build_model(model_config_from_dict({"name": "ae", "input_shape": (3, 4, 5),
                                                "latent_dim": latent, "hidden_dims": hidden}))
    sizes = (60, *hidden, latent)
    assert linear_shapes(model.encoder) == list(zip(sizes[:-1], sizes[1:]))
    back = sizes[::-1]
    assert linear_shapes(model.decoder) == list(zip(back[:-1], back[1:]))
    x = torch.rand(2, 3, 4, 5)
    assert model(x).logits.shape == (2, 3, 4, 5)
