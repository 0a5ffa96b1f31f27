"""The synthetic sample: real file formats, determinism, every emotion and mode covered, learnable."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from ferplus.errors import run_cli
from ferplus.labels import EMOTIONS, MODES, NUM_EMOTIONS, VOTE_CATEGORIES, process_votes
from ferplus.fer_format import USAGE_FOLDERS
from ferplus.synthetic import get_args_parser, main, write_sample

PER_SPLIT = 120


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return write_sample(tmp_path_factory.mktemp("sample"), per_split=PER_SPLIT, seed=7)


def read_rows(fer_path: Path, ferplus_path: Path) -> tuple:
    with open(fer_path, newline="") as f:
        fer = list(csv.reader(f))
    with open(ferplus_path, newline="") as f:
        ferplus = list(csv.reader(f))
    return fer, ferplus


def by_split(ferplus_rows: List[List[str]]) -> Dict[str, np.ndarray]:
    """Votes of the named rows of each split."""
    votes: Dict[str, list] = {usage: [] for usage in USAGE_FOLDERS}
    for usage, name, *counts in ferplus_rows:
        if name:
            votes[usage].append([int(c) for c in counts])
    return {usage: np.array(v) for usage, v in votes.items()}


def test_files_have_the_real_formats(sample: tuple) -> None:
    fer_path, ferplus_path = sample
    assert (fer_path.name, ferplus_path.name) == ("fer2013.csv", "fer2013new.csv")
    raw = fer_path.read_bytes()
    assert raw.startswith(b"emotion,pixels,Usage\n") and b"\r" not in raw and b'"' not in raw
    assert ferplus_path.read_bytes().startswith(b"Usage,Image name," + ",".join(VOTE_CATEGORIES).encode() + b"\n")
    fer, ferplus = read_rows(fer_path, ferplus_path)
    fer, ferplus = fer[1:], ferplus[1:]
    assert len(fer) == len(ferplus) == 3 * PER_SPLIT
    # Splits in the real order, PER_SPLIT rows each, the same Usage in both files.
    assert [row[2] for row in fer] == [u for u in USAGE_FOLDERS for _ in range(PER_SPLIT)]
    assert [row[0] for row in ferplus] == [row[2] for row in fer]
    for i, ((emotion, pixels, _), (_, name, *votes)) in enumerate(zip(fer, ferplus)):
        assert emotion in {str(code) for code in range(7)}  # FER2013's seven emotion codes
        values = [int(v) for v in pixels.split(" ")]
        assert len(values) == 48 * 48 and min(values) >= 0 and max(values) <= 255
        assert name in ("", f"fer{i:07d}.png")
        assert len(votes) == 10 and all(v.isdigit() for v in votes) and sum(map(int, votes)) == 10


def test_every_split_has_unnamed_rows_and_all_emotions(sample: tuple) -> None:
    _, ferplus = read_rows(*sample)
    for usage in USAGE_FOLDERS:
        rows = [r for r in ferplus[1:] if r[0] == usage]
        assert 0 < sum(1 for r in rows if not r[1]) < len(rows) // 10
    for usage, votes in by_split(ferplus[1:]).items():
        dominant = votes[:, :NUM_EMOTIONS].argmax(axis=1)
        assert set(dominant.tolist()) == set(range(NUM_EMOTIONS)), usage


def test_every_mode_has_work_in_every_split(sample: tuple) -> None:
    _, ferplus = read_rows(*sample)
    for usage, votes in by_split(ferplus[1:]).items():
        kept = {mode: process_votes(votes, mode)[1] for mode in MODES}
        assert 0.4 < kept["majority"].mean() < 0.9, usage  # majority drops the split votes ...
        assert (kept["probability"] & ~kept["majority"]).any(), usage  # ... that the others keep
        assert (~kept["probability"]).any(), usage  # and some rows are dropped by every mode
        assert votes[:, NUM_EMOTIONS:].sum() > 0, usage  # unknown / NF votes occur
        targets, keep = process_votes(votes, "probability")
        assert (np.count_nonzero(targets[keep], axis=1) > 1).any(), usage  # real distributions


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_sample(tmp_path / "a", per_split=20, seed=3)
    b = write_sample(tmp_path / "b", per_split=20, seed=3)
    c = write_sample(tmp_path / "c", per_split=20, seed=4)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()


def test_labels_are_learnable_from_pixels(tmp_path: Path) -> None:
    """A ridge classifier on raw pixels, trained on Training, beats chance by far on PrivateTest."""
    fer, ferplus = read_rows(*write_sample(tmp_path, per_split=300, seed=0))
    data: Dict[str, tuple] = {}
    for usage in ("Training", "PrivateTest"):
        rows = [(f, p) for f, p in zip(fer[1:], ferplus[1:]) if f[2] == usage and p[1]]
        votes = np.array([[int(v) for v in p[2:]] for _, p in rows])
        _, keep = process_votes(votes, "majority")
        x = np.array([[float(v) for v in f[1].split()] for f, _ in rows])[keep]
        x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
        data[usage] = (x, votes[keep, :NUM_EMOTIONS].argmax(axis=1))
    x, y = data["Training"]
    weights = np.linalg.solve(x.T @ x + 100 * np.eye(x.shape[1]), x.T @ np.eye(NUM_EMOTIONS)[y])
    x_test, y_test = data["PrivateTest"]
    accuracy = ((x_test @ weights).argmax(axis=1) == y_test).mean()
    assert accuracy > 0.4, accuracy  # chance is 1/8


def test_prepares_into_split_folders(synthetic_data: Path) -> None:
    for folder in USAGE_FOLDERS.values():
        lines = (synthetic_data / folder / "label.csv").read_text().splitlines()
        assert len(lines) == len(list((synthetic_data / folder).glob("*.png"))) > 0


def test_cli_writes_the_pair(tmp_path: Path, capsys) -> None:
    assert run_cli(main, get_args_parser(), [str(tmp_path / "out"), "--per-split", "16", "--seed", "2"]) == 0
    assert "synthetic" in capsys.readouterr().out
    expected = write_sample(tmp_path / "direct", per_split=16, seed=2)
    assert (tmp_path / "out" / "fer2013.csv").read_bytes() == expected[0].read_bytes()
    assert (tmp_path / "out" / "fer2013new.csv").read_bytes() == expected[1].read_bytes()


def test_cli_rejects_too_few_rows(tmp_path: Path, capsys) -> None:
    assert run_cli(main, get_args_parser(), [str(tmp_path / "out"), "--per-split", "3"]) == 2
    assert f"at least {len(EMOTIONS)}" in capsys.readouterr().err
