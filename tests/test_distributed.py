"""Several processes with torchrun + DDP (gloo on the CPU): 2 processes with per-process batch B
train exactly like 1 process with batch 2B on the same data order, and metrics count each image once."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aelab.data import Batches, Split
from aelab.distributed import shard

FLAGS = ["--model", "ae", "--hidden", "32", "--latent-dim", "4", "--epochs", "2", "--no-progress"]


def run_json(run_dir):
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("ddp")
    aelab = [sys.executable, "-m", "aelab", "train", "--data-dir", mnist_dir, *FLAGS]
    single = subprocess.run(aelab + ["--batch-size", "64", "--out", str(tmp / "one")],
                            capture_output=True, text=True)
    double = subprocess.run(aelab + ["--batch-size", "32", "--nproc", "2", "--out", str(tmp / "two")],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr
    return tmp / "one", tmp / "two", double.stdout


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(one_and_two_processes):
    one, two, _ = one_and_two_processes
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    assert not torch.equal(a["encoder.head.0.weight"], torch.zeros_like(a["encoder.head.0.weight"]))


def test_metrics_equal_the_single_process_ones(one_and_two_processes):
    one, two, _ = one_and_two_processes
    m1, m2 = run_json(one)["test_metrics"], run_json(two)["test_metrics"]
    assert m1.keys() == m2.keys()
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5)
    lines1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    lines2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    for r1, r2 in zip(lines1, lines2, strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-5)
    assert run_json(two)["world_size"] == 2 and run_json(one)["world_size"] == 1


def test_only_rank_0_prints(one_and_two_processes):
    _, _, stdout = one_and_two_processes
    assert stdout.count("run folder:") == 1
    assert sum(line.startswith("epoch 1/2") for line in stdout.splitlines()) == 1


def test_the_processes_share_each_global_batch_without_overlap():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    seen = []
    for rank in (0, 1):
        batches = Batches(split, 2, shuffle=True, seed=3, rank=rank, world=2)
        batches.set_epoch(1)
        seen.append([y.tolist() for _, y in batches])
    single = Batches(split, 4, shuffle=True, seed=3)
    single.set_epoch(1)
    for step, (_, y) in enumerate(single):
        assert seen[0][step] + seen[1][step] == y.tolist()   # rank 0 then rank 1 = the global batch
    assert len(seen[0]) == len(seen[1]) == len(single)


def test_an_odd_split_leaves_out_the_last_image_of_the_order_so_parts_stay_equal():
    split = Split(torch.zeros(7, 1, 1, 1, dtype=torch.uint8), torch.arange(7))
    parts = [[y.tolist() for _, y in Batches(split, 2, rank=r, world=2)] for r in (0, 1)]
    assert parts == [[[0, 1], [4]], [[2, 3], [5]]]          # image 6 sits this epoch out


def test_shards_cover_every_item_once():
    for n in (0, 1, 5, 10, 11):
        for world in (1, 2, 3):
            covered = [i for r in range(world) for i in range(n)[shard(n, r, world)]]
            assert covered == list(range(n))


def test_two_processes_killed_after_an_epoch_resume_bitwise_equal(tmp_path, mnist_dir):
    """Each process draws its own VAE noise: a resumed 2-process run must restore every rank's
    RNG, not rank 0's everywhere, to end with the weights of an uninterrupted run."""
    aelab = [sys.executable, "-m", "aelab", "train"]
    flags = ["--data-dir", mnist_dir, "--model", "vae", "--hidden", "32", "--latent-dim", "4",
             "--batch-size", "32", "--nproc", "2", "--no-progress"]
    for argv in (flags + ["--epochs", "2", "--out", str(tmp_path / "full")],
                 flags + ["--epochs", "1", "--out", str(tmp_path / "cut")],
                 ["--resume", str(tmp_path / "cut"), "--epochs", "2", "--nproc", "2", "--no-progress"]):
        done = subprocess.run(aelab + argv, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_nproc_with_bad_data_is_one_line_before_any_process_starts(tmp_path, capsys):
    from aelab.cli import main
    code = main(["train", "--nproc", "2", "--data-dir", str(tmp_path / "missing"), "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("aelab: error:") and "missing" in err[0]
    assert not (tmp_path / "run").exists()


def test_an_error_in_the_processes_is_one_line_and_status_2(tmp_path, mnist_dir):
    run = subprocess.run([sys.executable, "-m", "aelab", "train", "--data-dir", mnist_dir, *FLAGS,
                          "--lr", "1e30", "--nproc", "2", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True)
    ours = [line for line in run.stderr.splitlines() if line.startswith("aelab")]
    assert run.returncode == 2, run.stderr
    assert len(ours) == 1 and ours[0].startswith("aelab: error: training stopped"), run.stderr
    assert "Traceback" not in run.stderr and "terminate" not in run.stderr   # torchrun's warning may stay


def test_the_launcher_says_the_error_of_another_process_when_process_0_did_not(tmp_path, monkeypatch,
                                                                               capsys):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from aelab import cli

    def two_processes_failing(args):   # process 1 met an aelab error; process 0 was stopped
        import os
        (tmp_path / "said").write_text(os.environ[cli.ERRORS_DIR])
        monkeypatch.setenv("RANK", "1")
        cli._say_error("the loss became nan at step 3")
        monkeypatch.delenv("RANK")
        failures = {rank: ProcessFailure(local_rank=rank, pid=rank, exitcode=code,
                                         error_file=str(tmp_path / "none.json"))
                    for rank, code in ((0, -15), (1, 2))}
        raise ChildFailedError("aelab", failures)

    monkeypatch.setattr("torch.distributed.run.run", two_processes_failing)
    assert cli._launch_torchrun(2, ["train", "--nproc", "2"]) == 2
    assert capsys.readouterr().err == "aelab: error: the loss became nan at step 3\n"
