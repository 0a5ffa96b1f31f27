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

import ferplus.engine as engine
from ferplus.engine import train
from ferplus.multirun import train_interleaved
from ferplus.step import make_step
from test_fast_step import RaisingGraphs, WrongGraphs
from test_multirun import assert_same_run, configs, small_data  # noqa: F401 (small_data: a fixture)

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
