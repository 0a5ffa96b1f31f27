"""Label exports: the per-split CSV and the ImageFolder tree, and export_labels.py."""

from __future__ import annotations

import csv
import errno
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferplus import label_export
from ferplus.data import read_folder
from ferplus.datasets import SPLITS
from ferplus.errors import FerplusError
from ferplus.label_export import CSV_COLUMNS, TREE_MARKER, csv_name, export_labels, label_csv_text
from ferplus.labels import EMOTIONS, MODES, VOTE_CATEGORIES, process_votes
from scripts import fill_disk_for, run_script

# The worked examples: a majority; no majority, three-way distribution; dropped by every mode; thirds.
VOTES = np.array([
    (5, 0, 0, 3, 1, 0, 0, 0, 1, 0),
    (3, 3, 0, 0, 2, 0, 0, 0, 2, 0),
    (2, 2, 2, 2, 2, 0, 0, 0, 0, 0),
    (3, 3, 3, 0, 0, 0, 0, 0, 1, 0),
])
DROPPED = "0," + ",".join(["0.0"] * 8)


def test_csv_bytes_of_worked_examples() -> None:
    header = (
        "image,split,votes_neutral,votes_happiness,votes_surprise,votes_sadness,votes_anger,votes_disgust,"
        "votes_fear,votes_contempt,votes_unknown,votes_NF,majority_label,"
        + ",".join(f"{mode}_keep," + ",".join(f"{mode}_{e}" for e in EMOTIONS) for mode in MODES)
    )
    assert header.split(",") == list(CSV_COLUMNS) and len(CSV_COLUMNS) == 49
    assert CSV_COLUMNS[-1] == "multi_target_contempt" and CSV_COLUMNS[22] == "probability_keep"
    third = "0.33333334"
    expected = "\n".join([
        header,
        "a.png,val,5,0,0,3,1,0,0,0,1,0,neutral,1,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,"
        + ",".join(["1,0.625,0.0,0.0,0.375,0.0,0.0,0.0,0.0"] * 3),
        "b.png,val,3,3,0,0,2,0,0,0,2,0,," + DROPPED + ","
        + ",".join(["1,0.375,0.375,0.0,0.0,0.25,0.0,0.0,0.0"] * 2) + ",1,0.5,0.5,0.0,0.0,0.0,0.0,0.0,0.0",
        "c.png,val,2,2,2,2,2,0,0,0,0,0,," + ",".join([DROPPED] * 4),
        "d.png,val,3,3,3,0,0,0,0,0,1,0,," + DROPPED + ","
        + ",".join([f"1,{third},{third},{third},0.0,0.0,0.0,0.0,0.0"] * 3),
    ]) + "\n"
    assert label_csv_text(["a.png", "b.png", "c.png", "d.png"], VOTES, "val") == expected


def read_back(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def test_csv_round_trips_to_process_votes(synthetic_data: Path, tmp_path: Path) -> None:
    summary = export_labels(synthetic_data, csv_dir=tmp_path / "labels")
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == sorted(csv_name(s) for s in SPLITS)
    for split, folder in SPLITS.items():
        data = read_folder(synthetic_data / folder)
        path = tmp_path / "labels" / f"ferplus_{split}.csv"
        assert path in summary.written
        rows = read_back(path)
        assert [row["image"] for row in rows] == data.names
        assert {row["split"] for row in rows} == {split}
        votes = np.array([[int(row[f"votes_{c}"]) for c in VOTE_CATEGORIES] for row in rows])
        assert np.array_equal(votes, data.votes)
        for mode in MODES:
            targets, keep = process_votes(data.votes, mode)
            read_keep = np.array([row[f"{mode}_keep"] for row in rows])
            assert set(read_keep) <= {"0", "1"} and np.array_equal(read_keep == "1", keep)
            read_targets = np.array([[row[f"{mode}_{e}"] for e in EMOTIONS] for row in rows], dtype=np.float32)
            assert np.array_equal(read_targets, targets)  # exactly, not approximately
            assert summary.kept[split][mode] == keep.sum()
        majority, keep = process_votes(data.votes, "majority")
        assert [row["majority_label"] for row in rows] == [
            EMOTIONS[label] if kept else "" for label, kept in zip(majority.argmax(1), keep)
        ]
    first = {p.name: p.read_bytes() for p in (tmp_path / "labels").iterdir()}
    export_labels(synthetic_data, csv_dir=tmp_path / "again")
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()} == first


def majority_counts(base: Path, split: str) -> Counter:
    targets, keep = process_votes(read_folder(base / SPLITS[split]).votes, "majority")
    return Counter(EMOTIONS[label] for label in targets[keep].argmax(1))


def folder_counts(root: Path) -> Counter:
    """What ImageFolder finds: per class folder (sorted), its .png files, each a readable image."""
    counts = Counter()
    for class_folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in class_folder.iterdir():
            assert path.suffix == ".png"
            with Image.open(path) as image:
                assert image.size == (48, 48)
            counts[class_folder.name] += 1
    return counts


def test_imagefolder_tree_of_hard_links(synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tree"
    summary = export_labels(synthetic_data, imagefolder=out)
    assert sorted(p.name for p in out.iterdir()) == sorted((*SPLITS, TREE_MARKER))
    total = 0
    for split, folder in SPLITS.items():
        counts = majority_counts(synthetic_data, split)
        assert folder_counts(out / split) == counts and len(counts) == len(EMOTIONS)
        total += sum(counts.values())
        for path in (out / split).rglob("*.png"):
            source = synthetic_data / folder / path.name
            assert not path.is_symlink() and os.path.samefile(path, source)  # a hard link
    assert summary.placed == {"hard link": total, "symlink": 0, "copy": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]  # no staging folder left


def test_torchvision_imagefolder_reads_the_tree(synthetic_data: Path, tmp_path: Path, torchvision) -> None:
    export_labels(synthetic_data, imagefolder=tmp_path / "tree")
    for split in SPLITS:
        dataset = torchvision.datasets.ImageFolder(str(tmp_path / "tree" / split))
        assert dataset.classes == sorted(EMOTIONS)
        assert Counter(dataset.classes[t] for t in dataset.targets) == majority_counts(synthetic_data, split)


def refuse(*args, **kwargs) -> None:
    """A link call on a file system that cannot make it (here: another device)."""
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))


def test_symlinks_then_copies_where_links_fail(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "link", refuse)
    summary = export_labels(synthetic_data, imagefolder=tmp_path / "symlinks", splits=["val"])
    counts = majority_counts(synthetic_data, "val")
    assert summary.placed == {"hard link": 0, "symlink": sum(counts.values()), "copy": 0}
    assert folder_counts(tmp_path / "symlinks" / "val") == counts
    for path in (tmp_path / "symlinks" / "val").rglob("*.png"):
        assert path.is_symlink() and Path(os.readlink(path)) == (synthetic_data / "FER2013Valid" / path.name).resolve()

    monkeypatch.setattr(os, "symlink", refuse)
    summary = export_labels(synthetic_data, imagefolder=tmp_path / "copies", splits=["val"])
    assert summary.placed == {"hard link": 0, "symlink": 0, "copy": sum(counts.values())}
    assert folder_counts(tmp_path / "copies" / "val") == counts
    for path in (tmp_path / "copies" / "val").rglob("*.png"):
        source = synthetic_data / "FER2013Valid" / path.name
        assert not path.is_symlink() and not os.path.samefile(path, source)
        assert path.read_bytes() == source.read_bytes()


def test_both_exports_from_the_script(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run_script("export_labels", "-d", synthetic_data, "--csv", out, "--imagefolder", out / "tree",
                      "--splits", "train", "test") == 0
    assert sorted(p.name for p in out.iterdir()) == ["ferplus_test.csv", "ferplus_train.csv", "tree"]
    assert sorted(p.name for p in (out / "tree").iterdir()) == [TREE_MARKER, "test", "train"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {out / 'tree'}, {out / 'ferplus_train.csv'}, {out / 'ferplus_test.csv'}"
    assert lines[1].split() == ["split", "images", *MODES]
    assert [line.split()[0] for line in lines[2:4]] == ["train", "test"]
    assert lines[4].startswith("ImageFolder tree (majority labels): ")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_existing_outputs_are_kept_unless_overwritten(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    tree, labels = tmp_path / "tree", tmp_path / "labels"
    tree.mkdir()
    (tree / "mine.txt").write_text("keep me")
    labels.mkdir()
    (labels / "ferplus_val.csv").write_text("mine")
    before = snapshot(tmp_path)
    assert run_script("export_labels", "-d", synthetic_data, "--imagefolder", tree) == 2
    assert run_script("export_labels", "-d", synthetic_data, "--csv", labels, "--imagefolder", tmp_path / "new") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"export_labels.py: error: {tree}: already exists and is not empty (--overwrite replaces it)",
        f"export_labels.py: error: {labels / 'ferplus_val.csv'}: already exists (--overwrite replaces it)",
    ]
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["labels", "tree"]

    # --overwrite replaces CSVs, and only a tree this tool wrote.
    assert run_script("export_labels", "-d", synthetic_data, "--imagefolder", tree, "--overwrite") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"export_labels.py: error: {tree}: holds files this tool did not write (no {TREE_MARKER} tree); "
        "--overwrite replaces only an ImageFolder tree it made"
    ]
    assert snapshot(tmp_path) == before
    shutil.rmtree(tree)
    export_labels(synthetic_data, imagefolder=tree, splits=["val"])
    assert run_script("export_labels", "-d", synthetic_data, "--imagefolder", tree, "--csv", labels, "--overwrite") == 0
    assert sorted(p.name for p in tree.iterdir()) == sorted((*SPLITS, TREE_MARKER))
    assert read_back(labels / "ferplus_val.csv")[0]["split"] == "val"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "tree"]  # no staging folder left
    # An existing empty folder is simply filled.
    (tmp_path / "empty").mkdir()
    export_labels(synthetic_data, imagefolder=tmp_path / "empty", splits=["test"])
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [TREE_MARKER, "test"]


@pytest.mark.parametrize("added", ["notes.txt", "train/notes.txt", "train/anger/extra/x.png", "mine/x.png"])
def test_overwrite_refuses_a_tree_that_holds_more_than_this_tool_wrote(
    synthetic_data: Path, tmp_path: Path, added: str
) -> None:
    tree = tmp_path / "tree"
    export_labels(synthetic_data, imagefolder=tree)
    (tree / added).parent.mkdir(parents=True, exist_ok=True)
    (tree / added).write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(FerplusError, match="holds files this tool did not write"):
        export_labels(synthetic_data, imagefolder=tree, overwrite=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["data", ".", "data/FER2013Valid", "data/FER2013Valid/tree", "data/FER2013Valid/.."])
@pytest.mark.parametrize("output", ["imagefolder", "csv_dir"])
def test_never_writes_into_or_over_the_data_being_read(
    synthetic_data: Path, tmp_path: Path, target: str, output: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data / "FER2013Valid", data / "FER2013Valid")
    before = snapshot(tmp_path)
    with pytest.raises(FerplusError, match="holds or is inside the split folder .*FER2013Valid being read"):
        export_labels(data, splits=["val"], overwrite=True, **{output: tmp_path / target})
    assert snapshot(tmp_path) == before


def test_the_script_refuses_to_export_into_a_split_folder(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    before = snapshot(data)
    split = data / "FER2013Train"
    assert run_script("export_labels", "-d", data, "--imagefolder", split, "--overwrite") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"export_labels.py: error: {split}: holds or is inside the split folder {split} being read; "
        "choose another output"
    ]
    assert snapshot(data) == before


def test_failure_while_linking_leaves_nothing_behind(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "tree"
    export_labels(synthetic_data, imagefolder=tree, splits=["test"])
    before = snapshot(tmp_path)
    placed = []

    def fail_after_ten(source: Path, target: Path) -> None:
        if len(placed) == 10:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        placed.append(target)
        shutil.copyfile(source, target)

    monkeypatch.setitem(label_export._PLACERS, "copy", fail_after_ten)
    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "symlink", refuse)
    with pytest.raises(OSError, match="No space left"):
        export_labels(synthetic_data, imagefolder=tree, overwrite=True)
    assert snapshot(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["tree"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--csv", "OUT"], "{data}/FER2013Train: no such folder"),
        (["--csv", "OUT", "--splits", "train", "dev"], "unknown split 'dev'; choose one of train, val, test"),
        ([], "nothing to export: give a CSV folder, an ImageFolder output or both"),
        (["--imagefolder", "OUT", "--splits", "test"], "{data}/FER2013Test/label.csv: line 2: image "),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, argv, message) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if "test" in argv:  # a split folder whose second image is missing
        (data / "FER2013Test").mkdir()
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(data / "FER2013Test" / "a.png")
        (data / "FER2013Test" / "label.csv").write_text(
            'a.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\nb.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n'
        )
    before = sorted(tmp_path.rglob("*"))
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert run_script("export_labels", "-d", data, *argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("export_labels.py: error: " + message.format(data=data))
    assert sorted(tmp_path.rglob("*")) == before


def test_image_listed_twice_is_refused_for_the_tree(tmp_path: Path) -> None:
    folder = tmp_path / "FER2013Valid"
    folder.mkdir()
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "a.png")
    (folder / "label.csv").write_text('a.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n' * 2)
    with pytest.raises(FerplusError, match="label.csv: line 2: image a.png is listed twice, on lines 1 and 2"):
        export_labels(tmp_path, imagefolder=tmp_path / "tree", splits=["val"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FER2013Valid"]


def test_full_disk_is_one_line_and_exit_1_and_keeps_the_earlier_csvs(small_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels"
    fill_disk_for(monkeypatch, "ferplus_val.csv")  # the train CSV is written, then the disk is full
    assert run_script("export_labels", "-d", small_data, "--csv", out) == 1
    assert capsys.readouterr().err == f"export_labels.py: error: {out / 'ferplus_val.csv'}: {os.strerror(errno.ENOSPC)}\n"
    assert [p.name for p in out.iterdir()] == ["ferplus_train.csv"]  # whole, and no temporary file
    monkeypatch.undo()
    assert run_script("export_labels", "-d", small_data, "--csv", tmp_path / "again") == 0
    assert (out / "ferplus_train.csv").read_bytes() == (tmp_path / "again" / "ferplus_train.csv").read_bytes()
