"""Several runs at once: interleaved in one process or spread over worker processes, each run ends
exactly as it ends trained alone (on the CPU), and a time budget stops runs where they resume."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

import ferplus.engine as engine
import ferplus.multirun as multirun
from ferplus.checkpoint import load_checkpoint
from ferplus.engine import TrainConfig, train
from ferplus.multirun import train_interleaved, train_runs
from test_fast_step import restored_cuda_flags  # noqa: F401 (a fixture)
from test_train import log_without_times, run_independent

MODEL = "vgg13_tiny"
EPOCHS = 2
RUNS = (("majority", 0), ("crossentropy", 0), ("majority", 1))


def configs(data: Path, root: Path) -> list:
    return [
        TrainConfig(
            base_folder=str(data), training_mode=mode, max_epochs=EPOCHS, seed=seed, device="cpu",
            output=str(root / f"{mode}_{seed}"), model=MODEL,
        )
        for mode, seed in RUNS
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread, here and so in the workers: bit-identity needs equal thread counts, which
    split floating-point reductions alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alone(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs trained one after the other by train()."""
    root = tmp_path_factory.mktemp("alone")
    for config in configs(small_data, root):
        train(config)
    return root


def comparable(results: dict, ignore: tuple = ()) -> dict:
    """``results`` without its run-specific fields, nor the ``ignore`` settings of its config."""
    results = run_independent(results)
    results["config"] = {key: value for key, value in results["config"].items() if key not in ignore}
    return results


def assert_same_run(folder: Path, alone: Path, ignore: tuple = ()) -> None:
    """The run in ``folder`` ends as the one in ``alone``: results (but the ``ignore`` settings), log, weights."""
    ours, expected = (json.loads((f / "results.json").read_text()) for f in (folder, alone))
    assert comparable(ours, ignore) == comparable(expected, ignore)
    assert log_without_times(folder / "train.log") == log_without_times(alone / "train.log")
    ours, theirs = load_checkpoint(folder / "last.pt"), load_checkpoint(alone / "last.pt")
    for key, tensor in theirs["model_state"].items():
        assert torch.equal(ours["model_state"][key], tensor), key


def test_runs_interleaved_in_worker_processes_end_as_alone(alone, small_data, tmp_path):
    together = configs(small_data, tmp_path)
    # Two workers: the first interleaves runs 0 and 2 step by step, the second trains run 1.
    results = train_runs(together, jobs=2, workers=2)
    for config, result in zip(together, results):
        folder = Path(config.output)
        assert result == json.loads((folder / "results.json").read_text())
        assert_same_run(folder, alone / folder.name)


def test_time_budget_stops_after_a_saved_epoch_and_the_run_resumes(alone, small_data, tmp_path, monkeypatch):
    config = configs(small_data, tmp_path)[1]
    folder = Path(config.output)
    clock = iter([0.0])  # the run starts before the deadline (1.0), every later look is past it
    monkeypatch.setattr(multirun, "time", types.SimpleNamespace(time=lambda: next(clock, 2.0)))
    assert train_interleaved([config], jobs=2, deadline=1.0) == [None]
    assert len(load_checkpoint(folder / "last.pt")["history"]) == 1  # one saved epoch
    assert not (folder / "results.json").exists()
    monkeypatch.undo()

    assert train_interleaved([dataclasses.replace(config, resume=True)], jobs=2)[0] is not None
    assert_same_run(folder, alone / folder.name)


def deterministic_cuda() -> None:
    """What train() sets up on CUDA in the tests that compare runs: deterministic cuDNN, no TF32
    (use with the restored_cuda_flags fixture)."""
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


#: Epochs of the CUDA runs, four at a time: they end at different epochs, and the last two start
#: (capture their graphs) while others train.
STAGGERED_EPOCHS = (1, 3, 2, 1, 2, 1)


@pytest.mark.cuda
def test_runs_interleaved_on_cuda_streams_end_as_alone(small_data, tmp_path, monkeypatch, restored_cuda_flags):
    """Each interleaved run keeps its own dropout generator (inside its CUDA graph too) and its own
    capture stream, cuBLAS workspace and graph memory: its losses and weights are those of the run
    alone, up to floating-point order (deterministic cuDNN), while others start and end around it.
    The full-width vgg13's dense layers (M=32, K=4096) are large enough for split-K kernels, whose
    workspace runs sharing one capture stream would share; shared generators would draw other masks."""
    monkeypatch.setattr(engine, "configure_cuda", deterministic_cuda)
    base = configs(small_data, tmp_path)
    # fp32: bf16 rounding would magnify any difference in the order of floating-point sums.
    runs = [
        dataclasses.replace(
            base[i % len(base)], device="cuda", amp=False, model="vgg13", max_epochs=epochs, seed=i,
            output=str(tmp_path / "together" / f"run{i}"),
        )
        for i, epochs in enumerate(STAGGERED_EPOCHS)
    ]
    for config in runs:
        train(dataclasses.replace(config, output=str(tmp_path / "alone" / Path(config.output).name)))
    train_interleaved(runs, jobs=4)
    for config in runs:
        folder = Path(config.output)
        alone = tmp_path / "alone" / folder.name
        ours, theirs = (json.loads((f / "results.json").read_text()) for f in (folder, alone))
        assert ours["config"]["step"] == theirs["config"]["step"] == "graph"
        losses = [[r["train_loss"] for r in results["history"]] for results in (ours, theirs)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        ours, theirs = load_checkpoint(folder / "last.pt"), load_checkpoint(alone / "last.pt")
        for key, tensor in theirs["model_state"].items():
            torch.testing.assert_close(ours["model_state"][key], tensor, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
