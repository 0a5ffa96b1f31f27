"""reproduce.py: every mode × seed trained, the tables written with the right numbers, finished runs skipped."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import ferplus.reproduce as reproduce_module
from ferplus.reproduce import PAPER_RESULTS, format_csv, format_markdown, reproduce, run_folder, summarize_runs
from scripts import run_script
from test_checkpoint import flip_tensor_bytes

MODES = ("majority", "crossentropy")
SEEDS = 2
MODEL = "vgg13_tiny"


def test_reproduce_tables_and_skipping(synthetic_data, tmp_path, monkeypatch):
    root = tmp_path / "reproduce"
    reproduce(str(synthetic_data), seeds=SEEDS, modes=MODES, max_epochs=1, model=MODEL, device="cpu", output=str(root))

    accuracies = {}
    for mode in MODES:
        runs = [json.loads((run_folder(root, MODEL, mode, seed) / "results.json").read_text()) for seed in range(SEEDS)]
        assert [(r["mode"], r["seed"], r["epochs"]) for r in runs] == [(mode, seed, 1) for seed in range(SEEDS)]
        accuracies[mode] = 100 * np.array([r["test_accuracy"] for r in runs])

    with open(root / "reproduce.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["mode"] for row in rows] == list(MODES)
    for row in rows:
        values = accuracies[row["mode"]]
        assert int(row["runs"]) == SEEDS
        assert float(row["mean_test_accuracy"]) == pytest.approx(values.mean(), abs=5e-4)
        assert float(row["std_test_accuracy"]) == pytest.approx(values.std(ddof=1), abs=5e-4)
        paper_mean, paper_std, paper_runs = PAPER_RESULTS[row["mode"]]
        assert (float(row["paper_mean"]), float(row["paper_std"]), int(row["paper_runs"])) == (paper_mean, paper_std, paper_runs)
    markdown = (root / "reproduce.md").read_text()
    assert f"# FER+ reproduction: {MODEL}, 1 epochs, {len(MODES) * SEEDS} runs" in markdown
    train_images = len((synthetic_data / "FER2013Train" / "label.csv").read_text().splitlines())
    assert f"Data: `{synthetic_data}`, {train_images:,} training images. **Not the full FER+ training split" in markdown
    for mode in MODES:
        values = accuracies[mode]
        paper_mean, paper_std, paper_runs = PAPER_RESULTS[mode]
        assert (
            f"| {mode} | {SEEDS} | {values.mean():.3f} ± {values.std(ddof=1):.3f} | {paper_mean:.3f} ± {paper_std:.3f} | {paper_runs} |"
            in markdown
        )

    # A second call finds every run finished: nothing is trained and the tables come out the same.
    tables = {name: (root / name).read_bytes() for name in ("reproduce.csv", "reproduce.md")}

    def no_training(configs, *args):
        if configs:
            raise AssertionError(f"retrained {[config.output for config in configs]}")
        return []

    monkeypatch.setattr(reproduce_module, "train_runs", no_training)
    reproduce(str(synthetic_data), seeds=SEEDS, modes=MODES, max_epochs=1, model=MODEL, device="cpu", output=str(root))
    assert {name: (root / name).read_bytes() for name in tables} == tables
    monkeypatch.undo()

    # Asking for more epochs resumes the runs from last.pt instead of starting over.
    folder = run_folder(root, MODEL, "majority", 0)
    first_epoch = json.loads((folder / "results.json").read_text())["history"][0]
    reproduce(str(synthetic_data), seeds=1, modes=("majority",), max_epochs=2, model=MODEL, device="cpu", output=str(root))
    history = json.loads((folder / "results.json").read_text())["history"]
    assert len(history) == 2 and history[0] == first_epoch


def test_a_single_run_shows_no_spread_and_full_data_no_warning():
    runs = {"majority": {0: 0.85}}
    rows = summarize_runs({"majority": [0.85]})
    markdown = format_markdown(rows, runs, "vgg13", 100, reproduce_module._data_line("data", 28_558))
    assert "| majority | 1 | 85.000 | 83.852 ± 0.631 | 5 |" in markdown and "±  " not in markdown
    assert "Data: `data`, 28,558 training images.\n" in markdown and "Not the full" not in markdown
    assert format_csv(rows).splitlines()[1] == "majority,1,85.000,,83.852,0.631,5"


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[]", "not a JSON object"),
        ('{"epochs": 1, "test_accuracy": "83.2"}', "test_accuracy '83.2' is not a fraction between 0 and 1"),
        ('{"epochs": "1", "test_accuracy": 0.8}', "epochs '1' is not a positive whole number"),
        ('{"epochs": 1, "test_accuracy": NaN}', "test_accuracy nan is not a fraction between 0 and 1"),
        ("{", "not JSON"),
    ],
)
def test_a_damaged_results_file_is_one_line(synthetic_data, tmp_path, capsys, content, problem):
    root = tmp_path / "reproduce"
    results = run_folder(root, MODEL, "majority", 0) / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(content)
    argv = ["-d", synthetic_data, "--seeds", 1, "--modes", "majority", "-e", 1, "--model", MODEL, "--output", root]
    assert run_script("reproduce", *argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"reproduce.py: error: {results}: not the results of a run ({problem}); "
        "delete it and resume the run to write it again"
    ]
    assert [p.name for p in results.parent.iterdir()] == ["results.json"]


def test_a_damaged_checkpoint_of_an_interrupted_run_is_refused(small_data, tmp_path, capsys):
    root = tmp_path / "reproduce"
    folder = run_folder(root, MODEL, "majority", 0)
    argv = ["-d", small_data, "--seeds", 1, "--modes", "majority", "--model", MODEL, "--device", "cpu", "--output", root]
    assert run_script("reproduce", *argv, "-e", 1) == 0
    (folder / "results.json").unlink()  # as a run killed after its first epoch leaves it
    flip_tensor_bytes(folder / "last.pt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert run_script("reproduce", *argv, "-e", 2) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"reproduce.py: error: {folder / 'last.pt'}: damaged: its contents do not match the digest recorded in it"
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
