"""The label rules against the issue's worked examples, the real FER+ counts and a row-by-row transcription."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from ferplus.labels import EMOTIONS, MODES, NUM_EMOTIONS, NUM_VOTES, majority_class, process_votes
from scripts import ROOT

# votes → {index: share} per mode, or None when the mode drops the image (the table).
WORKED_EXAMPLES = [
    ((4, 0, 0, 1, 3, 2, 0, 0, 0, 0), None, {0: 0.5714, 4: 0.4286}, {0: 0.5714, 4: 0.4286}),
    ((5, 0, 0, 3, 1, 0, 0, 0, 1, 0), {0: 1}, {0: 0.625, 3: 0.375}, {0: 0.625, 3: 0.375}),
    ((3, 3, 0, 0, 2, 0, 0, 0, 2, 0), None, {0: 0.375, 1: 0.375, 4: 0.25}, {0: 0.5, 1: 0.5}),
    ((2, 2, 2, 2, 2, 0, 0, 0, 0, 0), None, None, None),
    ((4, 0, 0, 0, 0, 0, 0, 0, 4, 2), None, None, {0: 1}),
    ((5, 0, 0, 0, 0, 0, 0, 0, 3, 2), None, None, {0: 1}),
    ((0, 0, 0, 0, 0, 0, 4, 3, 3, 0), None, {6: 0.5714, 7: 0.4286}, {6: 0.5714, 7: 0.4286}),
    ((3, 0, 3, 0, 0, 0, 0, 0, 4, 0), None, None, None),
]

# Images per emotion (neutral … contempt) in the training split, per mode (the figures).
TRAIN_COUNTS = {
    "majority": [8739, 7287, 3149, 3013, 2099, 119, 532, 119],
    "crossentropy": [10121, 7503, 3524, 3429, 2406, 169, 641, 160],
    "probability": [10121, 7503, 3524, 3429, 2406, 169, 641, 160],
    "multi_target": [10070, 7492, 3486, 3398, 2326, 153, 598, 145],
}
TRAIN_TOTALS = {"majority": 25057, "crossentropy": 27953, "probability": 27953, "multi_target": 27668}
EVAL_TOTALS = {"PublicTest": 3199, "PrivateTest": 3153}
FERPLUS_ROWS = 35887


def transcribed_rule(votes: list[int], mode: str) -> list[float] | None:
    """The issue's rules for one image, written out step by step; None when the image is dropped."""
    votes = [v if v > 1 else 0 for v in votes]  # outlier removal
    total = sum(votes)
    picked = [0] * 10
    if mode == "majority":
        top = max(votes)
        if not top > 0.5 * total:
            return None
        picked[votes.index(top)] = top
    elif mode in ("crossentropy", "probability"):
        remaining = list(votes)
        picked_sum, count, reached_reject = 0, 0, False
        while picked_sum < 0.75 * total and count < 3 and not reached_reject:
            m = max(remaining)
            for i in range(10):
                if remaining[i] != m:
                    continue
                remaining[i] = 0
                picked[i] = m
                picked_sum += m
                count += 1
                if i >= 8:  # unknown or NF
                    reached_reject = True
                    if sum(picked) > m:
                        picked[i] = 0
                        count -= 1
                    break
        if sum(picked) <= 0.5 * total or count > 3:
            return None
    else:  # multi_target
        picked = [v if v >= 0.3 * total else 0 for v in votes]
        if sum(picked) <= 0.5 * total:
            return None
    if sum(picked) == 0:
        return None
    shares = [v / sum(picked) for v in picked]
    if shares.index(max(shares)) >= 8:
        return None
    emotions = shares[:8]
    return [v / sum(emotions) for v in emotions]


def check_against_transcription(votes: np.ndarray, mode: str) -> None:
    targets, keep = process_votes(votes, mode)
    for row, target, kept in zip(votes.tolist(), targets, keep):
        expected = transcribed_rule(row, mode)
        assert kept == (expected is not None), (row, mode)
        if expected is None:
            assert not target.any(), (row, mode)
        else:
            np.testing.assert_allclose(target, expected, atol=1e-6, err_msg=f"{row} {mode}")


@pytest.fixture(scope="module")
def ferplus_rows(shared_ferplus: Path) -> list[list[str]]:
    with open(shared_ferplus / "fer2013new.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == FERPLUS_ROWS
    return rows


@pytest.mark.parametrize("example", WORKED_EXAMPLES, ids=lambda e: ",".join(map(str, e[0])))
def test_worked_examples(example: tuple) -> None:
    votes, majority, distribution, multi = example
    expected = {"majority": majority, "crossentropy": distribution, "probability": distribution, "multi_target": multi}
    for mode, shares in expected.items():
        targets, keep = process_votes(np.array([votes]), mode)
        assert targets.shape == (1, NUM_EMOTIONS) and targets.dtype == np.float32 and keep.dtype == bool
        if shares is None:
            assert not keep[0] and not targets.any(), mode
        else:
            assert keep[0], mode
            dense = np.zeros(NUM_EMOTIONS)
            dense[list(shares)] = list(shares.values())
            np.testing.assert_allclose(targets[0], dense, atol=1e-4, err_msg=mode)
        assert transcribed_rule(list(votes), mode) == (None if shares is None else pytest.approx(dense, abs=1e-4))


@pytest.mark.parametrize("mode", MODES)
def test_every_real_row_matches_transcription(ferplus_rows: list[list[str]], mode: str) -> None:
    votes = np.array([row[2:] for row in ferplus_rows], dtype=np.int64)
    check_against_transcription(votes, mode)


@pytest.mark.parametrize("mode", MODES)
def test_random_votes_match_transcription(mode: str) -> None:
    rng = np.random.default_rng(list(MODES).index(mode))
    # Few categories with many votes, so ties, rejects and the 3-pick limit all come up often.
    votes = rng.integers(0, 6, size=(4000, NUM_VOTES)) * (rng.random((4000, NUM_VOTES)) < 0.5)
    check_against_transcription(votes, mode)


def real_split_votes(rows: list[list[str]]) -> dict[str, np.ndarray]:
    """Votes per Usage of the images FER+ keeps: named rows, the first row of a repeated name."""
    seen: set[str] = set()
    by_usage: dict[str, list] = {}
    for usage, name, *votes in rows:
        if not name or name in seen:
            continue
        seen.add(name)
        by_usage.setdefault(usage, []).append(votes)
    return {usage: np.array(v, dtype=np.int64) for usage, v in by_usage.items()}


def test_real_split_counts_per_mode(ferplus_rows: list[list[str]]) -> None:
    splits = real_split_votes(ferplus_rows)
    for mode in MODES:
        targets, keep = process_votes(splits["Training"], mode)
        counts = np.bincount(majority_class(targets[keep]), minlength=NUM_EMOTIONS)
        assert counts.tolist() == TRAIN_COUNTS[mode], mode
        assert keep.sum() == TRAIN_TOTALS[mode]
    for usage, total in EVAL_TOTALS.items():
        assert process_votes(splits[usage], "majority")[1].sum() == total


def test_kept_targets_are_distributions() -> None:
    votes = np.random.default_rng(0).integers(0, 10, size=(2000, NUM_VOTES))
    for mode in MODES:
        targets, keep = process_votes(votes, mode)
        np.testing.assert_allclose(targets[keep].sum(1), 1, atol=1e-6)
        assert (targets >= 0).all() and not targets[~keep].any()
    assert len(EMOTIONS) == NUM_EMOTIONS


@pytest.mark.parametrize(
    "votes, message",
    [
        (np.array([[1, 2, 3, -1, 0, 0, 0, 0, 0, 0]]), "non-negative"),
        (np.array([[1.5, 2, 3, 1, 0, 0, 0, 0, 0, 0]]), "whole numbers"),
        (np.zeros((2, 9), dtype=np.int64), "shape"),
        (np.zeros(10, dtype=np.int64), "shape"),
    ],
)
def test_bad_votes_raise(votes: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        process_votes(votes, "majority")


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        process_votes(np.zeros((1, NUM_VOTES), dtype=np.int64), "softmax")


def documented_counts() -> tuple[list[int], dict[str, list[int]]]:
    """The full data's image counts per split that docs/data.md states, and per mode the kept
    counts that docs/library.md states (train / val / test)."""
    def numbers(text: str) -> list[int]:
        return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]

    data_md = " ".join((ROOT / "docs" / "data.md").read_text().split())
    totals = re.search(r"The full data gives ([\d,]+ / [\d,]+ / [\d,]+) images", data_md)
    library_md = " ".join((ROOT / "docs" / "library.md").read_text().split())
    kept = re.search(
        r"`majority` keeps ([\d,]+ / [\d,]+ / [\d,]+) images of train / val / test, `probability` and "
        r"`crossentropy` ([\d,]+ / [\d,]+ / [\d,]+), `multi_target` ([\d,]+ / [\d,]+ / [\d,]+)", library_md)
    assert totals and kept, "the docs no longer state the full data's counts in the expected words"
    majority, soft, multi = (numbers(group) for group in kept.groups())
    return numbers(totals.group(1)), {"majority": majority, "probability": soft, "crossentropy": soft, "multi_target": multi}


def test_full_data_counts_are_the_documented_ones(ferplus_rows: list[list[str]]) -> None:
    splits = real_split_votes(ferplus_rows)
    usages = ("Training", "PublicTest", "PrivateTest")
    totals, kept = documented_counts()
    assert [len(splits[usage]) for usage in usages] == totals
    for mode in MODES:
        assert [int(process_votes(splits[usage], mode)[1].sum()) for usage in usages] == kept[mode], mode
