"""aelab.pictures (codes for interpolations, traversals, manifolds; 2-D projections), the
decode_images hook of every family, and the titled figures of aelab.viz."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aelab import pictures
from aelab.errors import ConfigError
from aelab.losses import continuous_bernoulli_mean
from aelab.models import build_model, model_config_class
from aelab.viz import cell_centres, grid, save_latent_map, save_titled_grid, titled_grid_size


def tiny_model(name: str, **options):
    cfg = model_config_class(name)(name=name, input_shape=(1, 8, 8), hidden_dims=(16,), **options)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def codes(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize("path", [pictures.lerp, pictures.slerp])
def test_interpolation_starts_and_ends_at_the_two_codes(path):
    z0, z1 = codes(2, 6)
    points = path(z0, z1, 7)
    assert points.shape == (7, 6)
    assert torch.equal(points[0], z0) and torch.equal(points[-1], z1)
    assert not torch.allclose(points[3], z0) and not torch.allclose(points[3], z1)


def test_straight_line_steps_are_equal_and_on_the_line():
    z0, z1 = codes(2, 5)
    points = pictures.lerp(z0, z1, 5)
    steps = points.diff(dim=0)
    assert torch.allclose(steps, ((z1 - z0) / 4).expand_as(steps), atol=1e-6)
    assert torch.allclose(points[2], (z0 + z1) / 2, atol=1e-6)


def test_slerp_of_codes_of_one_norm_stays_on_the_sphere():
    z0, z1 = torch.nn.functional.normalize(codes(2, 8), dim=1) * 3
    points = pictures.slerp(z0, z1, 9)
    assert torch.allclose(points.norm(dim=1), torch.full((9,), 3.0), atol=1e-5)
    # equal angles between consecutive points
    cos = torch.nn.functional.cosine_similarity(points[:-1], points[1:])
    assert torch.allclose(cos, cos[0].expand_as(cos), atol=1e-5)
    # the straight line's middle is shorter
    assert pictures.lerp(z0, z1, 9)[4].norm() < 3 - 0.1


def test_slerp_of_parallel_codes_is_the_straight_line():
    z0 = codes(1, 4)[0]
    assert torch.allclose(pictures.slerp(z0, 2 * z0, 5), pictures.lerp(z0, 2 * z0, 5))


# ---------------------------------------------------------------- traversal


def test_traversal_changes_only_its_own_dimension_in_each_row():
    base, values = codes(1, 5)[0], torch.linspace(-3, 3, 4)
    dims = [0, 2, 4]
    grid_codes = pictures.traversal(base, dims, values).view(len(dims), len(values), 5)
    for r, d in enumerate(dims):
        changed = grid_codes[r] != base                         # (S, D)
        assert changed[:, d].all() and not changed[:, [k for k in range(5) if k != d]].any()
        assert torch.allclose(grid_codes[r, :, d], base[d] + values)
    assert torch.equal(base, codes(1, 5)[0])                     # base itself untouched


# ---------------------------------------------------------------- manifold grid


def test_prior_quantiles_are_the_normal_inverse_cdf_from_5_to_95_percent():
    q = pictures.prior_quantiles(5)
    z95, z725 = 1.6448536269514722, 0.5977601260424784          # Phi^-1(0.95), Phi^-1(0.725)
    assert torch.allclose(q, torch.tensor([-z95, -z725, 0.0, z725, z95]), atol=1e-5)
    normal = torch.distributions.Normal(0.0, 1.0)
    assert torch.allclose(normal.cdf(pictures.prior_quantiles(20)), torch.linspace(0.05, 0.95, 20),
                          atol=1e-6)


def test_manifold_rows_run_down_z1_and_columns_along_z0():
    xs, ys = torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([10.0, 20.0])
    z = pictures.manifold(xs, ys)
    assert z.shape == (6, 2)
    assert z[:, 0].tolist() == [-1, 0, 1, -1, 0, 1]
    assert z[:, 1].tolist() == [20, 20, 20, 10, 10, 10]        # top row: the largest z[1]


def test_code_range_spans_the_codes():
    c = torch.tensor([[0.0, -2.0], [4.0, 1.0], [1.0, 0.0]])
    xs, ys = pictures.code_range(c, 5)
    assert xs.tolist() == [0, 1, 2, 3, 4]
    assert ys[0] == -2 and ys[-1] == 1 and len(ys) == 5


# ---------------------------------------------------------------- projections


def test_pca_finds_codes_that_lie_in_a_plane():
    plane = np.random.default_rng(0).normal(size=(2, 6))
    points = np.random.default_rng(1).normal(size=(50, 2)) @ plane + 3.0
    projected, share = pictures.pca_2d(points)
    assert projected.shape == (50, 2)
    assert share.sum() == pytest.approx(1.0) and share[0] >= share[1]
    assert np.allclose(projected.mean(0), 0, atol=1e-9)


def test_tsne_gives_two_columns_for_few_points():
    points = np.random.default_rng(0).normal(size=(12, 5))
    out = pictures.tsne_2d(points, seed=0)
    assert out.shape == (12, 2) and np.isfinite(out).all()
    assert np.array_equal(out, pictures.tsne_2d(points, seed=0))      # seeded


# ---------------------------------------------------------------- families


@pytest.mark.parametrize("name, options", [("ae", {}), ("vae", {}), ("iwae", {}),
                                           ("vae", {"likelihood": "continuous-bernoulli"}),
                                           ("cvae", {"n_classes": 3})])
def test_decode_images_of_the_code_is_the_reconstruction(name, options, tiny_images):
    model = tiny_model(name, latent_dim=3, **options)
    y = torch.tensor([0, 1, 2, 1]) if model.needs_labels else None
    with torch.no_grad():
        out = model.decode_images(model.embed(tiny_images, y), y)
        assert torch.allclose(out, model.reconstruct(tiny_images, y), atol=1e-6)
    assert out.shape == tiny_images.shape and 0 <= out.min() and out.max() <= 1


def test_decode_images_of_a_continuous_bernoulli_vae_is_its_mean_not_the_sigmoid():
    model = tiny_model("vae", latent_dim=3, likelihood="continuous-bernoulli")
    z = codes(4, 3)
    with torch.no_grad():
        logits = model.decode(z)
        assert torch.allclose(model.decode_images(z), continuous_bernoulli_mean(logits))
        assert not torch.allclose(model.decode_images(z), torch.sigmoid(logits))


def test_a_cvae_decodes_a_code_differently_for_each_class():
    model = tiny_model("cvae", latent_dim=3, n_classes=3)
    z = codes(1, 3).repeat(3, 1)
    out = pictures.decode(model, z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_pictures_refuse_a_vqvae_only():
    with pytest.raises(ConfigError, match="codebook"):
        pictures.check_continuous(tiny_model("vqvae", latent_dim=4), "interpolate")
    for name in ("ae", "vae"):
        pictures.check_continuous(tiny_model(name, latent_dim=4), "interpolate")
    assert pictures.has_normal_prior(tiny_model("vae", latent_dim=2))
    assert not pictures.has_normal_prior(tiny_model("ae", latent_dim=2))
    assert not pictures.has_normal_prior(tiny_model("vqvae", latent_dim=4))


def test_condition_labels_only_for_label_conditional_models():
    vae, cvae = tiny_model("vae", latent_dim=2), tiny_model("cvae", latent_dim=2, n_classes=3)
    assert pictures.condition(vae, None, 1, 4) is None
    with pytest.raises(ConfigError, match="not label-conditional"):
        pictures.condition(vae, 1, None, 4)
    assert pictures.condition(cvae, None, 2, 4).tolist() == [2] * 4      # the image's class
    assert pictures.condition(cvae, 1, 2, 3).tolist() == [1] * 3         # --label wins
    assert pictures.condition(cvae, None, None, 2).tolist() == [0, 0]
    with pytest.raises(ConfigError, match="0..2"):
        pictures.condition(cvae, 3, None, 1)


def test_embed_and_decode_in_batches_equal_one_batch(tiny_images):
    model = tiny_model("vae", latent_dim=3)
    whole = pictures.embed(model, tiny_images)
    assert torch.allclose(pictures.embed(model, tiny_images, batch_size=3), whole)
    assert torch.allclose(pictures.decode(model, whole, batch_size=1), pictures.decode(model, whole))


# ---------------------------------------------------------------- figures


def test_titled_grid_png_has_the_grid_pixel_for_pixel_under_a_title(tmp_path):
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "row.png"
    save_titled_grid(images, path, "title\nrun", 7, xticks=[str(i) for i in range(7)], xlabel="t")
    array = grid(images, 7)
    h, w = array.shape                                              # 64 x 424
    (width, height), (left, bottom) = titled_grid_size(w, h, xaxis=True, yaxis=False)
    assert (width, height) == (444, 64 + 42 + 44)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (width, height)
        pixels = np.asarray(im.convert("L")).astype(int)
    top = height - bottom - h
    inside = pixels[top:top + h, left:left + w][2:-2, 2:-2]        # the frame covers the rim
    assert np.abs(inside - array[2:-2, 2:-2]).max() <= 1


def test_a_narrow_titled_grid_is_widened_for_its_title(tmp_path):
    save_titled_grid(torch.rand(4, 3, 8, 8), tmp_path / "g.png", "t", 2, yticks=["a", "b"],
                     ylabel="y", scale=1)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (420, (2 * 10 + 2) + 42 + 10)


def test_cell_centres_are_the_middles_of_the_grid_cells():
    assert cell_centres(3, 4, pad=2, scale=1) == [3.5, 9.5, 15.5]
    assert cell_centres(2, 28) == [pytest.approx(4 + 27.5), pytest.approx(64 + 27.5)]


@pytest.mark.parametrize("n_panels, n_classes", [(1, 10), (2, 3), (2, 12), (1, 0)])
def test_latent_map_png_size_per_panel_with_or_without_labels(tmp_path, n_panels, n_classes):
    rng = np.random.default_rng(0)
    panels = [(rng.normal(size=(40, 2)), f"panel {i}", "x", "y") for i in range(n_panels)]
    labels = rng.integers(0, n_classes, 40) if n_classes else None
    save_latent_map(panels, labels, tmp_path / "map.png", "title\nrun")
    with Image.open(tmp_path / "map.png") as im:
        assert im.format == "PNG" and im.size == (520 * n_panels, 460)
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]      # no temporary file left


def test_describe_names_run_family_data_and_split(tmp_path):
    from aelab.config import RunConfig
    cfg = RunConfig()
    cfg.data.data_dir = str(tmp_path / "digits")
    text = pictures.describe(str(tmp_path / "my-run"), cfg, "val")
    assert text == f"run my-run · {cfg.model.name} · digits (val split)"
