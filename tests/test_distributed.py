"""Two CPU processes under torchrun (gloo): training completes and rank 0 alone writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from ferplus.checkpoint import load_checkpoint

from ferplus.fileio import FolderLock
from ferplus.data import SPLIT_FOLDERS, TrainStream, read_folder

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 2
EPOCHS = 2
BATCH = 16
RUN_FILES = {
    "args.json", "train.log", "results.json", "best.pt", "last.pt", "curves.png", "confusion_test.png", ".lock",
}


def test_two_process_gloo_run(synthetic_data, tmp_path):
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
        str(ROOT / "train.py"), "-d", str(synthetic_data), "--model", "vgg13_tiny", "--device", "cpu",
        "-e", str(EPOCHS), "-b", str(BATCH), "--output", str(output),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the CPU cores
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
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
    kept = TrainStream(read_folder(synthetic_data / SPLIT_FOLDERS["train"]), "majority", BATCH, "cpu").num_images
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
        errors = [rank.communicate(timeout=300)[1] for rank in ranks]  # a guard against a hang
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
        deadline = time.monotonic() + 300  # a guard against a test that would wait forever, not a speed check
        log = output / "train.log"
        while all(rank.poll() is None for rank in ranks) and time.monotonic() < deadline and (
            not log.exists() or "epoch   0 |" not in log.read_text()
        ):
            time.sleep(0.02)
        ranks[1].send_signal(signal.SIGTERM)  # only rank 1, in the last epoch
        finished = [rank.communicate(timeout=300) for rank in ranks]
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


def test_a_run_folder_in_use_stops_every_rank(synthetic_data, tmp_path):
    """Rank 0 finds the folder locked; rank 1 must learn of it and stop too, not wait for rank 0.

    The ranks are started by hand rather than by torchrun, which would end a waiting rank itself
    once rank 0 failed and so hide a hang.
    """
    output = tmp_path / "run"
    lock = FolderLock(output)  # another run holds the folder
    assert lock.acquire()
    ranks = []
    try:
        ranks = start_ranks(["-d", synthetic_data, "-e", EPOCHS, "--output", output])
        finished = [rank.communicate(timeout=300) for rank in ranks]  # a guard against a hang, not a speed check
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
        lock.release()
    message = f"train.py: error: {output}: in use by another run; wait for it to end or choose another --output"
    for process, (out, err) in zip(ranks, finished):
        assert process.returncode == 2 and err.splitlines() == [message] and out == ""
    assert not output.exists()
