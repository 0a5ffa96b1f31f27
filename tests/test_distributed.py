"""Two CPU processes under torchrun (gloo): training completes and rank 0 alone writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferplus.checkpoint import load_checkpoint
from ferplus.fileio import FolderLock
from ferplus.data import SPLIT_FOLDERS, TrainStream, read_folder
from ferplus.labels import process_votes
from scripts import SMALL_SPLIT_IMAGES, copy_split_head

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 2
EPOCHS = 2
BATCH = 16
RUN_FILES = {
    "args.json", "train.log", "results.json", "best.pt", "last.pt", "curves.png", "confusion_test.png", ".lock",
}


def test_two_process_gloo_run(small_data, tmp_path):
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
        str(ROOT / "train.py"), "-d", str(small_data), "--model", "vgg13_tiny", "--device", "cpu",
        "-e", str(EPOCHS), "-b", str(BATCH), "--output", str(output),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the CPU cores
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    # Only rank 0 writes: one run folder, nothing else in the working directory, one line per epoch.
    assert {p.name for p in tmp_path.iterdir()} == {"run"}
    assert {p.name for p in output.iterdir()} == RUN_FILES
    log = (output / "train.log").read_text()
    assert [line.split(" | ")[0] for line in log.splitlines() if line.startswith("epoch")] == [
        f"epoch {e:3d}" for e in range(EPOCHS)
    ]
    assert done.stdout.count("epoch   0 |") == 1 and done.stdout.count("total") == 1

    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == PROCESSES and results["epochs"] == EPOCHS
    assert results["config"]["global_batch_size"] == PROCESSES * BATCH
    assert results["config"]["lr"] == 0.005  # not scaled with the number of processes
    # The ranks' shards together make one epoch of the training set (less at most one leftover image per rank).
    kept = TrainStream(read_folder(small_data / SPLIT_FOLDERS["train"]), "majority", BATCH, "cpu").num_images
    assert [r["train_images"] for r in results["history"]] == [kept // PROCESSES * PROCESSES] * EPOCHS


def start_ranks(argv: list) -> list:
    """``train.py --model vgg13_tiny --device cpu ARGV`` as PROCESSES ranks started by hand (no torchrun)."""
    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(ROOT / "train.py"), "--model", "vgg13_tiny", "--device", "cpu", *map(str, argv)]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(PROCESSES),
                  "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(command, env={**os.environ, **rendezvous, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(PROCESSES)
    ]


def run_ranks(argv: list) -> list:
    """Start the ranks, wait for them; ``[(exit status, stderr)]`` in rank order."""
    ranks = start_ranks(argv)
    try:
        errors = [rank.communicate()[1] for rank in ranks]  # a hang is the suite watchdog's to catch
        return [(rank.returncode, err) for rank, err in zip(ranks, errors)]
    finally:
        for rank in ranks:
            rank.kill()


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(small_data, tmp_path):
    expected, output = tmp_path / "uninterrupted", tmp_path / "run"
    argv = ["-d", small_data, "-e", EPOCHS, "-b", BATCH // 2]
    assert [code for code, _ in run_ranks([*argv, "--output", expected])] == [0] * PROCESSES
    ranks = start_ranks([*argv, "--output", output])
    try:
        log = output / "train.log"
        while all(rank.poll() is None for rank in ranks) and (not log.exists() or "epoch   0 |" not in log.read_text()):
            time.sleep(0.02)
        ranks[1].send_signal(signal.SIGTERM)  # only rank 1, in the last epoch
        finished = [rank.communicate() for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    partial = load_checkpoint(output / "last.pt")["partial_epoch"]
    advice = f"{output / 'last.pt'} keeps epoch 1 up to step {partial['steps']} of "
    for rank, (_, err) in zip(ranks, finished):
        assert rank.returncode == 143, err[-2000:]
        assert err.strip().startswith(f"train.py: error: stopped by SIGTERM; {advice}"), err  # the same step on both
    assert partial["epoch"] == 1 and len(partial["ranks"]) == PROCESSES
    assert [code for code, _ in run_ranks([*argv, "--output", output, "--resume"])] == [0] * PROCESSES
    a, b = (load_checkpoint(folder / "last.pt") for folder in (expected, output))
    for key, tensor in a["model_state"].items():
        assert torch.equal(tensor, b["model_state"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_a_run_folder_in_use_stops_every_rank(small_data, tmp_path):
    """Rank 0 finds the folder locked; rank 1 must learn of it and stop too, not wait for rank 0.

    The ranks are started by hand rather than by torchrun, which would end a waiting rank itself
    once rank 0 failed and so hide a hang.
    """
    output = tmp_path / "run"
    lock = FolderLock(output)  # another run holds the folder
    assert lock.acquire()
    ranks = []
    try:
        ranks = start_ranks(["-d", small_data, "-e", EPOCHS, "--output", output])
        finished = [rank.communicate() for rank in ranks]  # a hang is the suite watchdog's to catch
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
        lock.release()
    message = f"train.py: error: {output}: in use by another run; wait for it to end or choose another --output"
    for process, (out, err) in zip(ranks, finished):
        assert process.returncode == 2 and err.splitlines() == [message] and out == ""
    assert not output.exists()


# train.py with a model without batch norm or dropout, on data without augmentation: then N
# processes on minibatches of B images must make exactly the updates that one process makes on
# minibatches of N × B (rank r's shard is every N-th image of the epoch's order from r).
PROBE_TRAIN = r"""
import functools, sys
from torch import nn
import ferplus.engine, ferplus.models, ferplus.settings
ferplus.models.MODELS["linear_probe"] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 8))  # probe_model
ferplus.settings.MODEL_NAMES += ("linear_probe",)  # the command line's --model choices
from ferplus.cli.train import run
ferplus.engine.TrainStream = functools.partial(ferplus.engine.TrainStream, augment=False)
sys.exit(run(sys.argv[1:]))
"""


def probe_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 8))


def test_two_processes_make_the_updates_of_one_on_their_joined_minibatches(synthetic_data, small_data, tmp_path):
    """The ranks' gradients are averaged: without it each rank would learn from its own half alone."""
    data = tmp_path / "data"
    train = synthetic_data / SPLIT_FOLDERS["train"]
    lines = (train / "label.csv").read_text().splitlines()
    keep = process_votes(np.array([line.rsplit(",", 10)[1:] for line in lines], dtype=np.int64), "majority")[1]
    # An even number of kept images: the two shards together are then the whole epoch.
    count = next(n for n in range(SMALL_SPLIT_IMAGES, 0, -1) if keep[:n].sum() % PROCESSES == 0)
    copy_split_head(train, data / SPLIT_FOLDERS["train"], count)
    for folder in (SPLIT_FOLDERS["val"], SPLIT_FOLDERS["test"]):
        shutil.copytree(small_data / folder, data / folder)
    script = tmp_path / "train_probe.py"
    script.write_text(PROBE_TRAIN)
    flags = [str(script), "-d", str(data), "--model", "linear_probe", "--device", "cpu", "--step", "eager", "-e", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
                *flags, "-b", str(BATCH)],
        "one": [sys.executable, *flags, "-b", str(PROCESSES * BATCH)],
    }
    for name, command in runs.items():
        done = subprocess.run([*command, "--output", str(tmp_path / name)], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    torch.manual_seed(0)  # the runs' seed: their initial weights
    start = probe_model().state_dict()
    two, one = (load_checkpoint(tmp_path / name / "last.pt")["model_state"] for name in runs)
    for key, initial in start.items():
        assert (one[key] - initial).abs().max() > 1e-3, key  # the weights moved well beyond the tolerance
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")
