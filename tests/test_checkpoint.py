"""Checkpoints and resume: exact continuation after a crash or a SIGKILL, safe partial writes,
and runs that stop on a NaN keep their last good checkpoint."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import aelab.train
from aelab import runs
from aelab.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_states, save_checkpoint
from aelab.cli import main
from aelab.config import resolve_config
from aelab.errors import RunError
from aelab.models import build_model
from aelab.train import Diverged, make_optimizer, train


def tiny_config(data_dir, **overrides):
    return resolve_config(overrides={"data.data_dir": data_dir, "train.epochs": 3, "model.hidden_dims": "32",
                                     "model.latent_dim": 4, "train.batch_size": 64, **overrides})


def epochs_in(run_dir) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_each_rank_restores_its_own_rng_states(tmp_path):
    cfg = resolve_config(overrides={"model.hidden_dims": "8", "model.latent_dim": 2})
    cfg.model.input_shape = (1, 4, 4)
    model = build_model(cfg.model)
    opt = make_optimizer(model, 1e-3)
    states, expected = [], []
    for seed in (1, 2):          # what two processes would hold, and what each draws next
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        states.append(rng_states())
        expected.append((torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()))
    save_checkpoint(tmp_path, model, opt, epoch=1, step=10, ranks_rng=states)
    for rank, want in [(0, expected[0]), (1, expected[1]), (2, expected[0])]:   # 2: none saved
        load_checkpoint(tmp_path, build_model(cfg.model), make_optimizer(model, 1e-3), rank=rank)
        assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == want, rank


def test_checkpoint_round_trip_restores_model_optimizer_and_every_rng(tmp_path):
    cfg = resolve_config(overrides={"model.hidden_dims": "8", "model.latent_dim": 2})
    cfg.model.input_shape = (1, 4, 4)
    model = build_model(cfg.model)
    opt = make_optimizer(model, 1e-3)
    model(torch.rand(5, 1, 4, 4)).loss.backward()
    opt.step()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    save_checkpoint(tmp_path, model, opt, epoch=4, step=40)
    expected = (torch.rand(3), np.random.rand(3), random.random())

    fresh = build_model(cfg.model)
    fresh_opt = make_optimizer(fresh, 1e-3)
    assert load_checkpoint(tmp_path, fresh, fresh_opt) == {"epoch": 4, "step": 40, "history": []}
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == \
        (expected[0].tolist(), expected[1].tolist(), expected[2])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), fresh_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index in sa["state"]:
        for key in sa["state"][index]:
            assert torch.equal(sa["state"][index][key], sb["state"][index][key]), key


def test_a_run_crashed_mid_epoch_and_resumed_equals_an_uninterrupted_run(tmp_path, mnist_dir, monkeypatch):
    whole = train(tiny_config(mnist_dir), out=str(tmp_path / "whole"))

    calls = {"n": 0}
    real = aelab.train.train_one_epoch

    def crash_in_epoch_two(model, opt, batches, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:                   # a few steps into epoch 2, then the process "dies"
            opt.step = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
        return real(model, opt, batches, *args, **kwargs)

    monkeypatch.setattr(aelab.train, "train_one_epoch", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(mnist_dir), out=str(tmp_path / "cut"))
    assert epochs_in(tmp_path / "cut") == [1]
    monkeypatch.setattr(aelab.train, "train_one_epoch", real)

    resumed = train(tiny_config(mnist_dir), resume=str(tmp_path / "cut"))
    assert epochs_in(tmp_path / "cut") == [1, 2, 3]
    assert_same_weights(whole.run_dir, resumed.run_dir)
    strip = (lambda rs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs])
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.test_metrics == whole.test_metrics


def test_sigkill_mid_epoch_then_resume_gives_bitwise_equal_weights(tmp_path, mnist_dir):
    flags = ["--data-dir", mnist_dir, "--model", "ae", "--hidden", "256", "--latent-dim", "8",
             "--batch-size", "1", "--epochs", "3", "--set", "data.val_fraction=0", "--no-progress"]
    aelab_cmd = [sys.executable, "-m", "aelab", "train"]
    subprocess.run(aelab_cmd + flags + ["--out", str(tmp_path / "whole")], check=True,
                   capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(aelab_cmd + flags + ["--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, "the run ended before epoch 1 was written"
        time.sleep(0.005)
    time.sleep(0.05)                          # well inside epoch 2 (800 steps of batch 1)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert epochs_in(cut) == [1], "the kill did not land in epoch 2"

    subprocess.run(aelab_cmd[:-1] + ["train", "--resume", str(cut)], check=True, capture_output=True)
    assert epochs_in(cut) == [1, 2, 3]
    assert_same_weights(tmp_path / "whole", cut)


def test_a_failed_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    cfg = resolve_config(overrides={"model.hidden_dims": "8", "model.latent_dim": 2})
    cfg.model.input_shape = (1, 4, 4)
    model = build_model(cfg.model)
    opt = make_optimizer(model, 1e-3)
    save_checkpoint(tmp_path, model, opt, epoch=1, step=10)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def dying_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runs.os, "replace", dying_replace)
    with pytest.raises(RunError, match="No space left on device; the previous file is intact"):
        save_checkpoint(tmp_path, model, opt, epoch=2, step=20)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]     # no temporary left
    assert load_checkpoint(tmp_path, build_model(cfg.model), make_optimizer(model, 1e-3))["epoch"] == 1


def test_a_nan_loss_stops_the_run_naming_epoch_and_step_and_keeps_the_last_checkpoint(
        tmp_path, mnist_dir, monkeypatch):
    cfg = tiny_config(mnist_dir)
    steps = {"n": 0}
    from aelab.models.vae import VAE

    def poison(original):
        def poisoned(self, x, y=None):
            out = original(self, x, y)
            steps["n"] += self.training           # training steps only, not the validation passes
            if self.training and steps["n"] == 12 + 3:   # 12 steps per epoch (720 / 64): epoch 2, step 3
                out.loss = out.loss * float("nan")
            return out
        return poisoned

    # the training step is loss_and_gradients (hand-written gradients) or forward (autograd)
    for method in ("forward", "loss_and_gradients"):
        monkeypatch.setattr(VAE, method, poison(getattr(VAE, method)))
    with pytest.raises(Diverged, match=r"epoch 2: the loss became nan at step 3.*checkpoint of epoch 1"):
        train(cfg, out=str(tmp_path / "run"))
    monkeypatch.undo()
    assert epochs_in(tmp_path / "run") == [1]
    model = build_model(cfg.model)
    assert load_checkpoint(tmp_path / "run", model, make_optimizer(model, 1e-3))["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_nan_in_the_cli_is_one_line_and_exit_2(tmp_path, mnist_dir, capsys):
    code = main(["train", "--data-dir", mnist_dir, "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                 "--lr", "1e30", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("aelab: error: training stopped in epoch 1:") and "--lr" in err[0]


def test_resume_of_a_folder_without_checkpoint_or_with_other_flags_is_refused(tmp_path, mnist_dir, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    run = tmp_path / "run"
    train(tiny_config(mnist_dir, **{"train.epochs": 1}), out=str(run))
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "only --epochs" in capsys.readouterr().err
    (run / CHECKPOINT_FILE).unlink()
    assert main(["train", "--resume", str(run)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_can_extend_a_finished_run(tmp_path, mnist_dir, capsys):
    run = tmp_path / "run"
    train(tiny_config(mnist_dir, **{"train.epochs": 1}), out=str(run))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert epochs_in(run) == [1, 2]
    with pytest.raises(RunError):
        load_checkpoint(tmp_path, None, None)


def test_resume_with_another_number_of_processes_says_so(tmp_path, mnist_dir, caplog):
    run = tmp_path / "run"
    train(tiny_config(mnist_dir, **{"train.epochs": 1}), out=str(run))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "world_size": 2}))   # as a 2-process run
    train(tiny_config(mnist_dir, **{"train.epochs": 2}), resume=str(run))
    assert "trained with 2 process(es) and resumes with 1" in caplog.text
    caplog.clear()
    train(tiny_config(mnist_dir, **{"train.epochs": 3}), resume=str(run))   # now 1 and 1
    assert "resumes with" not in caplog.text


def test_resume_with_fewer_epochs_than_done_is_refused_and_changes_nothing(tmp_path, mnist_dir, capsys):
    run = tmp_path / "run"
    train(tiny_config(mnist_dir, **{"train.epochs": 2}), out=str(run))
    config_before = (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has trained 2 epochs already" in err[0]
    assert (run / "config.yaml").read_text() == config_before and epochs_in(run) == [1, 2]


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_epoch(tmp_path, mnist_dir, capsys, monkeypatch):
    writes = {"n": 0}
    real_replace = runs.os.replace

    def disk_full_in_epoch_two(src, dst):
        writes["n"] += 1
        if writes["n"] > 5:       # config.yaml, run.json, then epoch 1's checkpoint, metrics, model
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(runs.os, "replace", disk_full_in_epoch_two)
    run = tmp_path / "run"
    code = main(["train", "--data-dir", mnist_dir, "--epochs", "3", "--hidden", "16", "--latent-dim", "2",
                 "--out", str(run)])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "No space left on device; the previous file is intact" in err[0]
    assert epochs_in(run) == [1]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--resume", str(run)]) == 0          # and the run can go on
    assert epochs_in(run) == [1, 2, 3]
