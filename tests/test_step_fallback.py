"""A run whose fast step fails its capture or its self-check ends exactly as the ``--step eager``
run from the same seed (weights, log, results), with one warning, and records the step that ran;
also among interleaved runs."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

import pytest
import torch

import ferplus.engine as engine
from ferplus.engine import train
from ferplus.multirun import train_interleaved
from ferplus.step import make_step
from ferplus.checkpoint import load_checkpoint
from test_fast_step import RaisingGraphs, SyncingCudaGraphs, WrongGraphs, restored_cuda_flags  # noqa: F401
from test_multirun import assert_same_run, configs, deterministic_cuda

#: What the fallback run records beyond the eager run: the step asked for, and why it did not run.
REQUEST = ("step_requested", "step_fallback")
WARNING = re.compile(r"warning: .+; the run goes on with the eager step")


@pytest.fixture(scope="module")
def eager_runs(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two runs of test_multirun's configs with ``--step eager``."""
    root = tmp_path_factory.mktemp("eager")
    for config in configs(small_data, root)[:2]:
        train(dataclasses.replace(config, step="eager"))
    return root


def fast_configs(data: Path, root: Path, count: int) -> list:
    return [dataclasses.replace(config, step="graph") for config in configs(data, root)[:count]]


def use_graphs(monkeypatch: pytest.MonkeyPatch, graphs) -> None:
    """Every run's fast step captures with the graph backend ``graphs``."""
    monkeypatch.setattr(engine, "make_step", functools.partial(make_step, graphs=graphs))


def assert_fell_back(folder: Path, eager_folder: Path) -> None:
    results = json.loads((folder / "results.json").read_text())
    config = results["config"]
    assert (config["step"], config["step_requested"]) == ("eager", "graph") and config["step_fallback"]
    assert json.loads((folder / "args.json").read_text()) == config
    assert json.loads((eager_folder / "results.json").read_text())["config"]["step_fallback"] is None
    assert_same_run(folder, eager_folder, ignore=REQUEST)


@pytest.mark.parametrize("graphs", [RaisingGraphs(), WrongGraphs()], ids=["capture raises", "replay wrong"])
def test_a_failed_fast_step_ends_as_the_eager_run(graphs, eager_runs, small_data, tmp_path, monkeypatch, capsys):
    use_graphs(monkeypatch, graphs)
    (config,) = fast_configs(small_data, tmp_path, 1)
    capsys.readouterr()
    train(config)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and WARNING.fullmatch(warnings[0])
    assert_fell_back(Path(config.output), eager_runs / Path(config.output).name)


def test_interleaved_runs_fall_back_each_on_its_own(eager_runs, small_data, tmp_path, monkeypatch, capsys):
    use_graphs(monkeypatch, RaisingGraphs())
    together = fast_configs(small_data, tmp_path, 2)
    capsys.readouterr()
    train_interleaved(together, jobs=2)
    err = capsys.readouterr().err.splitlines()
    for config in together:
        name = Path(config.output).name
        warnings = [line for line in err if line.startswith(f"[{name}] warning")]
        assert len(warnings) == 1 and WARNING.fullmatch(warnings[0][len(f"[{name}] "):])
        assert_fell_back(Path(config.output), eager_runs / name)


@pytest.mark.cuda
def test_interleaved_cuda_runs_go_on_eagerly_after_a_capture_cuda_refuses(
    small_data, tmp_path, monkeypatch, capsys, restored_cuda_flags
):
    """Each run's fallback leaves its generator with a fresh state, which the run then keeps
    drawing its dropout masks from (torch <= 2.12 would otherwise refuse every draw)."""
    monkeypatch.setattr(engine, "configure_cuda", deterministic_cuda)
    together = [dataclasses.replace(c, device="cuda", amp=False) for c in fast_configs(small_data, tmp_path / "together", 2)]
    for config in together:
        train(dataclasses.replace(config, step="eager", output=str(tmp_path / "alone" / Path(config.output).name)))
    use_graphs(monkeypatch, SyncingCudaGraphs(torch.device("cuda")))
    capsys.readouterr()
    train_interleaved(together, jobs=2)
    err = capsys.readouterr().err
    for config in together:
        folder = Path(config.output)
        assert err.count(f"[{folder.name}] warning") == 1
        ours, theirs = (json.loads((f / "results.json").read_text()) for f in (folder, tmp_path / "alone" / folder.name))
        assert ours["config"]["step"] == "eager" and "capture failed" in ours["config"]["step_fallback"]
        losses = [[r["train_loss"] for r in results["history"]] for results in (ours, theirs)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        weights = [load_checkpoint(f / "last.pt")["model_state"] for f in (folder, tmp_path / "alone" / folder.name)]
        for key, tensor in weights[1].items():
            torch.testing.assert_close(weights[0][key], tensor, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
