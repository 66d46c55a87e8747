"""aelab interpolate, traverse and latent-map end to end on small real MNIST (tiny 1-epoch runs):
the PNGs, their sizes and contents, titles, every family, and bad input as one error line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from aelab import viz
from aelab.cli import main
from aelab.idx import read_images, write_idx
from cli_helpers import only_error_line, trained_run

TINY = ["--epochs", "1", "--hidden", "32", "--batch-size", "64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir) -> dict[str, str]:
    """Tiny runs: vae and cvae with 2-D codes, an ae with 3-D codes, a vqvae."""
    folder = tmp_path_factory.mktemp("pictures")
    return {
        "vae": trained_run(folder / "vae", mnist_dir, *TINY, "--latent-dim", "2"),
        "ae": trained_run(folder / "ae", mnist_dir, *TINY, "--model", "ae", "--latent-dim", "3"),
        "cvae": trained_run(folder / "cvae", mnist_dir, *TINY, "--preset", "cvae",
                            "--set", "model.latent_dim=2"),
        "vqvae": trained_run(folder / "vqvae", mnist_dir, *TINY, "--model", "vqvae",
                             "--latent-dim", "4", "--set", "model.prior_steps=2"),
    }


@pytest.fixture(autouse=True)
def _one_thread():
    """t-SNE's OpenMP threads crawl on a loaded machine; one thread is fast on these few points."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def titles(monkeypatch) -> list[dict]:
    """The title and axis labels of every titled grid and latent map the commands draw."""
    seen = []
    grid, latent_map = viz.save_titled_grid, viz.save_latent_map

    def spy_grid(images, path, title, ncol, **kw):
        seen.append({"title": title, **kw})
        grid(images, path, title, ncol, **kw)

    def spy_map(panels, labels, path, title):
        seen.append({"title": title, "axes": [p[1:] for p in panels], "labels": labels})
        latent_map(panels, labels, path, title)

    monkeypatch.setattr(viz, "save_titled_grid", spy_grid)
    monkeypatch.setattr(viz, "save_latent_map", spy_map)
    return seen


def size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_interpolate_writes_image_i_the_steps_and_image_j(runs, mnist_dir, tmp_path, titles, capsys):
    out = tmp_path / "row.png"
    assert main(["interpolate", runs["vae"], "--from", "3", "--to", "17", "-n", "5",
                 "-o", str(out)]) == 0
    assert "image 3, 5 decoded codes on the straight line and image 17" in capsys.readouterr().out
    assert size(out) == (444, 64 + 42 + 44)          # 7 cells of 28 px at scale 2, margins
    # the first and last cells are the test images themselves
    test_images = read_images(f"{mnist_dir}/t10k-images-idx3-ubyte.gz")
    pixels = np.asarray(Image.open(out).convert("L")).astype(int)
    (_, height), (left, bottom) = viz.titled_grid_size(424, 64, True, False)
    top = height - bottom - 64
    first = pixels[top + 4:top + 60:2, left + 4:left + 60:2]
    last = pixels[top + 4:top + 60:2, left + 6 * 60 + 4:left + 6 * 60 + 60:2]
    assert np.abs(first - test_images[3].reshape(28, 28)).max() <= 1
    assert np.abs(last - test_images[17].reshape(28, 28)).max() <= 1
    (drawn,) = titles
    assert "image 3 to image 17" in drawn["title"]
    assert "run vae · vae · mnist-small" in drawn["title"] and "(test split)" in drawn["title"]
    assert drawn["xticks"][0] == "image 3" and drawn["xticks"][-1] == "image 17"
    assert drawn["xticks"][1:-1] == ["0.00", "0.25", "0.50", "0.75", "1.00"] and drawn["xlabel"]


def test_interpolate_slerp_for_a_vae_but_not_an_ae(runs, tmp_path, capsys):
    assert main(["interpolate", runs["vae"], "--from", "0", "--to", "1", "--slerp",
                 "-o", str(tmp_path / "s.png")]) == 0
    assert "spherical path" in capsys.readouterr().out
    assert main(["interpolate", runs["ae"], "--from", "0", "--to", "1", "--slerp",
                 "-o", str(tmp_path / "a.png")]) == 2
    assert "--slerp" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "a.png").exists()


def test_interpolate_a_cvae_decodes_every_step_as_one_class(runs, tmp_path, titles, capsys):
    assert main(["interpolate", runs["cvae"], "--from", "0", "--to", "1", "-o",
                 str(tmp_path / "c.png")]) == 0
    assert main(["interpolate", runs["cvae"], "--from", "0", "--to", "1", "--label", "4", "-o",
                 str(tmp_path / "c4.png")]) == 0
    assert "decoded as class 4" in titles[1]["title"] and "cvae · cvae" in titles[1]["title"]
    a, b = (np.asarray(Image.open(tmp_path / p)) for p in ("c.png", "c4.png"))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_traverse_rows_are_dimensions_columns_values(runs, tmp_path, titles, capsys):
    out = tmp_path / "t.png"
    assert main(["traverse", runs["vae"], "-o", str(out)]) == 0
    assert "2 dimensions x 9 values around 0, the prior mean" in capsys.readouterr().out
    assert size(out) == ((9 * 30 + 2) * 2 + 72 + 10, (2 * 30 + 2) * 2 + 42 + 44)
    (drawn,) = titles
    assert drawn["yticks"] == ["z[0]", "z[1]"] and drawn["ylabel"] == "latent dimension"
    assert drawn["xticks"][0] == "-3" and drawn["xticks"][4] == "+0" and drawn["xticks"][-1] == "+3"
    assert "run vae · vae" in drawn["title"]


def test_traverse_an_ae_needs_an_image(runs, tmp_path, capsys):
    assert main(["traverse", runs["ae"], "-o", str(tmp_path / "t.png")]) == 2
    assert "--image" in only_error_line(capsys.readouterr().err)
    assert main(["traverse", runs["ae"], "--image", "5", "--dims", "2", "--range", "1", "-n", "3",
                 "-o", str(tmp_path / "t.png")]) == 0
    assert "2 dimensions x 3 values around the code of image 5" in capsys.readouterr().out
    assert size(tmp_path / "t.png") == (420, (2 * 30 + 2) * 2 + 42 + 44)


def test_traverse_a_cvae_with_a_label(runs, tmp_path, capsys):
    for label in ("3", "7"):
        assert main(["traverse", runs["cvae"], "--label", label, "-o",
                     str(tmp_path / f"{label}.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{c}.png")) for c in "37")
    assert not np.array_equal(a, b)


def test_latent_map_of_2d_codes_and_its_decoded_manifold(runs, tmp_path, titles, capsys):
    out = tmp_path / "map.png"
    assert main(["latent-map", runs["vae"], "-o", str(out), "--grid", "5"]) == 0
    printed = capsys.readouterr().out
    assert "map of 200 test codes (the codes)" in printed and "map-manifold.png" in printed
    assert size(out) == (520, 460)
    assert size(tmp_path / "map-manifold.png") == (420, (5 * 30 + 2) + 42 + 44)
    drawn_map, manifold = titles
    assert drawn_map["axes"] == [("the codes", "z[0]", "z[1]")]
    assert len(drawn_map["labels"]) == 200 and "coloured by class" in drawn_map["title"]
    assert "quantiles 0.05..0.95" in manifold["title"] and "run vae · vae" in manifold["title"]
    assert manifold["xticks"] == ["-1.6", "-0.6", "0", "0.6", "1.6"]     # Phi^-1(.05, .275, ...)
    assert manifold["yticks"] == ["1.6", "0.6", "0", "-0.6", "-1.6"]     # z[1] upwards


def test_latent_map_of_3d_codes_is_pca_and_tsne_side_by_side(runs, tmp_path, titles, capsys):
    out = tmp_path / "map.png"
    assert main(["latent-map", runs["ae"], "-o", str(out), "--n-images", "40"]) == 0
    assert size(out) == (1040, 460)
    assert not (tmp_path / "map-manifold.png").exists()      # no decoded grid of 3-D codes
    (drawn,) = titles
    assert [a[0] for a in drawn["axes"]] == ["PCA of the codes", "t-SNE of the codes"]
    assert drawn["axes"][0][1].startswith("PC 1 (") and drawn["axes"][1][1:] == ("t-SNE 1", "t-SNE 2")
    assert "run ae · ae" in drawn["title"] and "Codes of 40 images (3-D)" in drawn["title"]
    assert main(["latent-map", runs["ae"], "-o", str(out), "--n-images", "40",
                 "--method", "pca"]) == 0
    assert size(out) == (520, 460)


def test_latent_map_of_an_ae_with_2d_codes_spans_their_range(tmp_path, mnist_dir, titles, capsys):
    run = trained_run(tmp_path / "ae2", mnist_dir, *TINY, "--model", "ae", "--latent-dim", "2")
    manifold = tmp_path / "grid.png"
    assert main(["latent-map", run, "-o", str(tmp_path / "m.png"), "--manifold", str(manifold),
                 "--grid", "4", "--n-images", "30"]) == 0
    assert size(manifold) == (420, (4 * 30 + 2) + 42 + 44)
    assert "range of the codes" in titles[1]["title"]


def test_latent_map_without_labels_has_no_colours(runs, mnist_dir, tmp_path, titles, capsys):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        write_idx(unlabelled / name, read_images(f"{mnist_dir}/{name}")[:60, 0])
    assert main(["latent-map", runs["vae"], "--data-dir", str(unlabelled), "-o",
                 str(tmp_path / "m.png"), "--grid", "3"]) == 0
    assert titles[0]["labels"] is None and "no labels" in titles[0]["title"]
    assert "unlabelled" in titles[0]["title"]


def test_the_manifold_of_a_cvae_is_decoded_as_one_class(runs, tmp_path, capsys):
    for label in ("1", "8"):
        assert main(["latent-map", runs["cvae"], "-o", str(tmp_path / f"m{label}.png"),
                     "--grid", "3", "--n-images", "20", "--label", label]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"m{c}-manifold.png")) for c in "18")
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("command", [["interpolate", "--from", "0", "--to", "1"], ["traverse",
                                     "--image", "0"]])
def test_a_vqvae_cannot_interpolate_or_traverse(runs, tmp_path, command, capsys):
    out = tmp_path / "v.png"
    assert main([command[0], runs["vqvae"], *command[1:], "-o", str(out)]) == 2
    assert "codebook vectors" in only_error_line(capsys.readouterr().err)
    assert not out.exists()


BAD = {
    "--from out of range": (["interpolate", "{vae}", "--from", "200", "--to", "1"], "0..199"),
    "negative --to": (["interpolate", "{vae}", "--from", "0", "--to", "-1"], "--to -1"),
    "one step": (["interpolate", "{vae}", "--from", "0", "--to", "1", "-n", "1"], "at least 2"),
    "unknown run": (["interpolate", "{tmp}/nope", "--from", "0", "--to", "1"], "not found"),
    "--image out of range": (["traverse", "{vae}", "--image", "999"], "--image 999"),
    "too many --dims": (["traverse", "{vae}", "--dims", "3"], "2 dimensions"),
    "bad --range": (["traverse", "{vae}", "--range", "0"], "--range"),
    "--label on a vae": (["traverse", "{vae}", "--label", "1"], "not label-conditional"),
    "--label outside a cvae's classes": (["traverse", "{cvae}", "--label", "10"], "0..9"),
    "--manifold of 3-D codes": (["latent-map", "{ae}", "--manifold", "{tmp}/g.png"], "3 dimensions"),
    "manifold in a missing folder": (["latent-map", "{vae}", "--manifold", "{tmp}/no/g.png"],
                                     "does not exist"),
    "map unknown run": (["latent-map", "{tmp}/nope"], "not found"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_error_line_and_no_file(case, runs, tmp_path, capsys):
    argv, message = BAD[case]
    argv = [a.format(tmp=tmp_path, **runs) for a in argv]
    assert main([*argv, "-o", str(tmp_path / "out.png")]) == 2
    assert message in only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []                    # nothing written, no temporary files


@pytest.mark.parametrize("command", ["interpolate", "traverse", "latent-map"])
@pytest.mark.parametrize("output", ["missing/out.png", "out.jpg"])
def test_bad_output_path(runs, tmp_path, command, output, capsys):
    extra = ["--from", "0", "--to", "1"] if command == "interpolate" else []
    assert main([command, runs["vae"], *extra, "-o", str(tmp_path / output)]) == 2
    only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
