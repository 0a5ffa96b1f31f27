"""Several runs at once: interleaved in one process or spread over worker processes, each run ends
exactly as it ends trained alone (on the CPU), and a time budget stops runs where they resume."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

import ferplus.multirun as multirun
from ferplus.checkpoint import load_checkpoint
from ferplus.engine import TrainConfig, train
from ferplus.multirun import train_interleaved, train_runs
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


def assert_same_run(folder: Path, alone: Path) -> None:
    expected = json.loads((alone / "results.json").read_text())
    assert run_independent(json.loads((folder / "results.json").read_text())) == run_independent(expected)
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


@pytest.mark.cuda
def test_runs_interleaved_on_cuda_streams_end_as_alone(small_data, tmp_path, monkeypatch):
    """Each interleaved run keeps its own dropout generator (inside its CUDA graph too): its losses
    and weights are those of the run alone, up to floating-point order (deterministic cuDNN). Were
    the generators shared, the dropout masks and so the updates would differ far beyond that."""
    import ferplus.engine as engine

    def deterministic() -> None:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    monkeypatch.setattr(engine, "configure_cuda", deterministic)
    # fp32: bf16 rounding would magnify any difference in the order of floating-point sums.
    runs = [dataclasses.replace(c, device="cuda", amp=False) for c in configs(small_data, tmp_path / "together")]
    for config in runs:
        train(dataclasses.replace(config, output=str(tmp_path / "alone" / Path(config.output).name)))
    train_runs(runs, jobs=len(runs))
    for config in runs:
        folder = Path(config.output)
        alone = tmp_path / "alone" / folder.name
        ours, theirs = (json.loads((f / "results.json").read_text())["history"] for f in (folder, alone))
        assert [r["train_loss"] for r in ours] == pytest.approx([r["train_loss"] for r in theirs], rel=1e-5)
        ours, theirs = load_checkpoint(folder / "last.pt"), load_checkpoint(alone / "last.pt")
        for key, tensor in theirs["model_state"].items():
            torch.testing.assert_close(ours["model_state"][key], tensor, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
