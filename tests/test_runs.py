"""Run folders: atomic writes, loading a finished run, and refusing broken or unsafe ones."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

import aelab.runs
from aelab.config import resolve_config
from aelab.errors import RunError
from aelab.runs import FORMAT_VERSION, MODEL_FILE, atomic_write, load_run, read_run_info
from aelab.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    cfg = resolve_config(overrides={"data.data_dir": mnist_dir, "train.epochs": 1,
                                    "model.hidden_dims": "32", "model.latent_dim": 4})
    return train(cfg, out=str(tmp_path_factory.mktemp("runs") / "vae"))


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run folder, free to break."""
    return shutil.copytree(trained.run_dir, tmp_path / "run")


# ---------------------------------------------------------------- atomic_write


def test_atomic_write_creates_and_replaces_without_leftovers(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, "first")
    assert path.read_text() == "first"
    atomic_write(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_mode_of_a_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.txt", "x")
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "f.txt").st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(tmp_path / "f.txt").st_mode == os.stat(tmp_path / "plain.txt").st_mode


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(aelab.runs.os, "replace", broken_replace)
    with pytest.raises(RunError, match="No space left on device; the previous file is intact"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(path, object())   # neither str nor bytes: the write itself raises
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


# ---------------------------------------------------------------- load_run


def test_load_run_round_trip_gives_the_same_outputs(trained):
    cfg, model, info = load_run(trained.run_dir)
    assert cfg.model == trained.model.cfg
    assert not model.training
    assert info["format_version"] == FORMAT_VERSION
    assert info["test_metrics"] == trained.test_metrics
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trained.model.eval()
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x), trained.model.reconstruct(x))
        gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(model.sample(4, generator=gen_a), trained.model.sample(4, generator=gen_b))


def _write_json(path, value):
    path.write_text(json.dumps(value))


def _pickle_that_creates(marker) -> bytes:
    """Pickled bytes whose unpickling creates ``marker`` (an empty file)."""
    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")
    return pickle.dumps(Payload())


BREAKAGES = {
    "no run.json": (lambda run: (run / "run.json").unlink(), "no run.json"),
    "run.json not JSON": (lambda run: (run / "run.json").write_text("{oops"), "cannot be read"),
    "run.json without version": (lambda run: _write_json(run / "run.json", {"device": "cpu"}),
                                 "format_version"),
    "run.json from the future": (
        lambda run: _write_json(run / "run.json", {"format_version": FORMAT_VERSION + 1}), "newer"),
    "no config.yaml": (lambda run: (run / "config.yaml").unlink(), "config.yaml"),
    "config.yaml not YAML": (lambda run: (run / "config.yaml").write_text("model: [unclosed"),
                             "not valid YAML"),
    "config.yaml not text": (lambda run: (run / "config.yaml").write_bytes(b"\x99\xff\xfe\x00"),
                             "not text"),
    "config.yaml unknown key": (
        lambda run: (run / "config.yaml").write_text("model: {name: vae, depth: 3}\n"), "depth"),
    "no model": (lambda run: (run / MODEL_FILE).unlink(), MODEL_FILE),
    "truncated model": (lambda run: (run / MODEL_FILE).write_bytes((run / MODEL_FILE).read_bytes()[:100]),
                        "cannot be loaded"),
    "empty model": (lambda run: (run / MODEL_FILE).write_bytes(b""), "cannot be loaded"),
    "model of another size": (
        lambda run: (run / "config.yaml").write_text(
            (run / "config.yaml").read_text().replace("latent_dim: 4", "latent_dim: 5")),
        "does not fit the run's config.yaml: size mismatch for"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_run_folders_raise_a_one_line_run_error(run_copy, breakage):
    damage, words = BREAKAGES[breakage]
    damage(run_copy)
    with pytest.raises(RunError, match=words) as err:
        load_run(run_copy)
    assert "\n" not in str(err.value)


def test_missing_run_folder(tmp_path):
    with pytest.raises(RunError, match="not found"):
        load_run(tmp_path / "nowhere")


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(RunError, match=r"run.json is a file; give its run folder"):
        read_run_info(tmp_path / "run.json")


class _Unpickles:
    """Pickles as a call that unpickles ``payload``, so the payload acts only on loading."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return pickle.loads, (self.payload,)


def _write_pickle(path, marker, wrapping: str) -> None:
    payload = _pickle_that_creates(marker)
    if wrapping == "pickle":
        path.write_bytes(payload)
    else:                                      # a torch checkpoint: a zip with the pickle inside
        torch.save({"state": _Unpickles(payload)}, path)


def _unsafe_load(path, wrapping: str) -> None:
    if wrapping == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("wrapping", ["pickle", "torch.save"])
def test_a_pickle_posing_as_the_model_is_refused_and_never_unpickled(run_copy, tmp_path, wrapping):
    probe, marker = tmp_path / "probe", tmp_path / "unpickled"
    _write_pickle(tmp_path / "probe.bin", probe, wrapping)
    _unsafe_load(tmp_path / "probe.bin", wrapping)
    assert probe.exists()                      # the payload really acts when unpickled...
    _write_pickle(run_copy / MODEL_FILE, marker, wrapping)
    with pytest.raises(RunError, match="cannot be loaded"):
        load_run(run_copy)
    assert not marker.exists()                 # ...but loading a run never unpickles it
