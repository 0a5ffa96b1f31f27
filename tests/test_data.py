"""The prepared-folder reader, the training stream and the evaluation set, on folders written here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferplus.data import SPLIT_FOLDERS, EvalSet, FerFolder, TrainStream, read_data_folder, read_folder, summary_table
from ferplus import prepare
from ferplus.errors import FerplusError
from ferplus.pack import PACK_FILE
from ferplus.synthetic import FER_CSV, FERPLUS_CSV, write_sample
from ferplus.labels import EMOTIONS, NUM_EMOTIONS, process_votes
from ferplus.transforms import preprocess

# Votes chosen so every mode keeps or drops something different (see test_labels' worked examples).
VOTES = [
    (4, 0, 0, 1, 3, 2, 0, 0, 0, 0),  # majority drops; crossentropy/multi_target {0, 4}
    (5, 0, 0, 3, 1, 0, 0, 0, 1, 0),  # majority 0; distribution {0: .625, 3: .375}
    (3, 3, 0, 0, 2, 0, 0, 0, 2, 0),  # crossentropy {0, 1, 4}; multi_target {0, 1}
    (2, 2, 2, 2, 2, 0, 0, 0, 0, 0),  # dropped by every mode
    (0, 10, 0, 0, 0, 0, 0, 0, 0, 0),  # happiness, all modes
    (0, 0, 0, 0, 0, 0, 4, 3, 3, 0),  # majority drops; fear/contempt
]
BOX = "(0, 0, 48, 48)"


def write_folder(folder: Path, votes=VOTES, size=(48, 48), seed: int = 0) -> list[np.ndarray]:
    """A prepared split: one PNG per line of label.csv. Returns the images written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, lines = [], []
    for i, v in enumerate(votes):
        image = rng.integers(0, 256, size=size, dtype=np.uint8)
        name = f"fer{i:07d}.png"
        assert cv2.imwrite(str(folder / name), image)
        images.append(image)
        lines.append(f'{name},"(0, 0, {size[1]}, {size[0]})",' + ",".join(map(str, v)))
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return images


def make_data(n: int, seed: int = 0) -> FerFolder:
    """An in-memory split of ``n`` random faces whose votes cycle through VOTES."""
    rng = np.random.default_rng(seed)
    return FerFolder(
        folder=Path("memory"),
        names=[f"img{i}.png" for i in range(n)],
        boxes=np.tile([0, 0, 48, 48], (n, 1)).astype(np.int64),
        votes=np.array([VOTES[i % len(VOTES)] for i in range(n)], dtype=np.int64),
        images=rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8),
    )


# ---------------------------------------------------------------- read_folder
def test_read_folder_loads_everything(tmp_path: Path) -> None:
    images = write_folder(tmp_path / "FER2013Train")
    data = read_folder(tmp_path / "FER2013Train")
    assert data.names == [f"fer{i:07d}.png" for i in range(len(VOTES))]
    assert data.images.dtype == np.uint8 and np.array_equal(data.images, np.stack(images))
    assert data.boxes.dtype == np.int64 and (data.boxes == [0, 0, 48, 48]).all()
    assert data.votes.dtype == np.int64 and data.votes.tolist() == [list(v) for v in VOTES]
    assert SPLIT_FOLDERS == {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}


def test_read_folder_accepts_boxes_inside_larger_images(tmp_path: Path) -> None:
    write_folder(tmp_path, votes=VOTES[:2], size=(60, 50))
    label = tmp_path / "label.csv"
    lines = label.read_text().splitlines()
    lines[1] = lines[1].replace('"(0, 0, 50, 60)"', '"(5, 10, 45, 40)"')
    label.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is fine
    data = read_folder(tmp_path)
    assert data.images.shape == (2, 60, 50)
    assert data.boxes.tolist() == [[0, 0, 50, 60], [5, 10, 45, 40]]


def corrupt_line(folder: Path, line: int, new: str) -> None:
    label = folder / "label.csv"
    lines = label.read_text().splitlines()
    lines[line - 1] = new
    label.write_text("\n".join(lines) + "\n")


VOTE_TAIL = ",".join(map(str, VOTES[0]))


@pytest.mark.parametrize(
    "line, message",
    [
        (f'fer0000002.png,"(0, 0, 48, 48)",{VOTE_TAIL},7', "expected 12 columns"),
        ('fer0000002.png,"(0, 0, 48, 48)",1,2,3', "expected 12 columns"),
        (f'fer0000002.png,"0 0 48 48",{VOTE_TAIL}', "face box '0 0 48 48'"),
        (f'fer0000002.png,"(0, 0, 48)",{VOTE_TAIL}', "face box"),
        (f'fer0000002.png,"(0, 0, 48, 4x)",{VOTE_TAIL}', "face box"),
        (f'fer0000002.png,"(10, 0, 10, 48)",{VOTE_TAIL}', "is empty"),
        (f'fer0000002.png,"(0, 0, 48, 49)",{VOTE_TAIL}', "does not fit image fer0000002.png of 48x48"),
        (f'fer0000002.png,"(0, 0, 60, 48)",{VOTE_TAIL}', "does not fit"),
        ('fer0000002.png,"(0, 0, 48, 48)",4,0,0,-1,3,2,0,0,0,0', "non-negative integers, got '-1'"),
        ('fer0000002.png,"(0, 0, 48, 48)",4,0,0,1.5,3,2,0,0,0,0', "non-negative integers, got '1.5'"),
        ('fer0000002.png,"(0, 0, 48, 48)",4,0,0,x,3,2,0,0,0,0', "non-negative integers"),
        (f'missing.png,"(0, 0, 48, 48)",{VOTE_TAIL}', "missing.png: no such file"),
        (f',"(0, 0, 48, 48)",{VOTE_TAIL}', "image name '' is empty"),
    ],
)
def test_bad_label_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write_folder(tmp_path)
    corrupt_line(tmp_path, 3, line)
    with pytest.raises(FerplusError, match=f"label.csv: line 3: .*{message}") as error:
        read_folder(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "label.csv"))


def test_unreadable_png_is_reported(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "fer0000004.png").write_bytes(b"not a png at all")
    with pytest.raises(FerplusError, match=r"label.csv: line 5: image .*fer0000004.png: not a readable image"):
        read_folder(tmp_path)


def test_images_of_differing_sizes_are_reported(tmp_path: Path) -> None:
    write_folder(tmp_path)
    cv2.imwrite(str(tmp_path / "fer0000003.png"), np.zeros((50, 50), np.uint8))
    with pytest.raises(FerplusError, match="line 4: image fer0000003.png is 50x50 pixels, the folder's others are 48x48"):
        read_folder(tmp_path)


def test_missing_or_empty_label_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FerplusError, match="label.csv: cannot read"):
        read_folder(tmp_path)
    (tmp_path / "label.csv").write_text("")
    with pytest.raises(FerplusError, match="label.csv: no images"):
        read_folder(tmp_path)


def test_binary_label_file_is_reported(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "label.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(FerplusError, match="label.csv: not a label.csv text file"):
        read_folder(tmp_path)


def test_colour_png_is_read_as_grayscale(tmp_path: Path) -> None:
    write_folder(tmp_path, votes=VOTES[:1])
    gray = np.full((48, 48), 99, np.uint8)
    cv2.imwrite(str(tmp_path / "fer0000000.png"), np.dstack([gray] * 3))
    assert (read_folder(tmp_path).images == 99).all()


def test_label_file_quirks_are_one_line_errors(tmp_path: Path) -> None:
    write_folder(tmp_path)
    label = tmp_path / "label.csv"
    lines = label.read_text().splitlines()
    cases = {
        # A NUL byte in a name (no file can have it) and a vote count beyond int64.
        3: (lines[2].replace("fer0000002", "fer\x00"), r"line 3: image name 'fer\\x00.png' holds control characters"),
        4: (lines[3].rsplit(",", 1)[0] + "," + "1" + "0" * 23, r"line 4: vote count 1(0){23} is larger than \d+"),
    }
    for number, (line, message) in cases.items():
        label.write_text("\n".join(lines[: number - 1] + [line] + lines[number:]) + "\n")
        with pytest.raises(FerplusError, match=message):
            read_folder(tmp_path)


def test_duplicate_image_names_name_both_lines(tmp_path: Path) -> None:
    write_folder(tmp_path)
    corrupt_line(tmp_path, 5, f'fer0000001.png,"(0, 0, 48, 48)",{VOTE_TAIL}')
    with pytest.raises(FerplusError, match="line 5: image fer0000001.png is listed twice, on lines 2 and 5$"):
        read_folder(tmp_path)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    images = write_folder(tmp_path)
    label = tmp_path / "label.csv"
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    data = read_folder(tmp_path)
    assert data.names[0] == "fer0000000.png" and np.array_equal(data.images, np.stack(images))


def test_only_regular_files_are_read(tmp_path: Path, make_fifo) -> None:
    write_folder(tmp_path)
    (tmp_path / "fer0000002.png").unlink()
    make_fifo(tmp_path / "fer0000002.png")
    with pytest.raises(FerplusError, match=r"line 3: image .*fer0000002.png: cannot be read \(not a regular file\)"):
        read_folder(tmp_path)


def test_huge_image_is_refused_before_decoding(tmp_path: Path, huge_png: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "fer0000001.png").write_bytes(huge_png.read_bytes())
    with pytest.raises(FerplusError, match=r"line 2: image .*fer0000001.png: too large to decode: 30000x30000 pixels"):
        read_folder(tmp_path)


def test_odd_sized_first_image_is_blamed_on_its_own_line(tmp_path: Path) -> None:
    write_folder(tmp_path)
    cv2.imwrite(str(tmp_path / "fer0000000.png"), np.zeros((50, 50), np.uint8))
    with pytest.raises(FerplusError, match="line 1: image fer0000000.png is 50x50 pixels, the folder's others are 48x48"):
        read_folder(tmp_path)


def test_damaged_png_is_reported_by_us_alone(tmp_path: Path, capfd) -> None:
    """libpng and OpenCV print their own lines about damaged files; only our one line may show."""
    write_folder(tmp_path)
    png = bytearray((tmp_path / "fer0000003.png").read_bytes())
    png[-20] ^= 0xFF  # inside the compressed pixels: libpng reports a failed data check
    (tmp_path / "fer0000003.png").write_bytes(bytes(png))
    with pytest.raises(FerplusError, match="line 4: image .*fer0000003.png: not a readable image"):
        read_folder(tmp_path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_data_folder_one_level_too_deep(tmp_path: Path) -> None:
    write_folder(tmp_path / "data" / "FER2013Train")
    with pytest.raises(FerplusError) as error:
        read_folder(tmp_path / "data" / "FER2013Train" / "FER2013Valid")
    data = tmp_path / "data"
    assert str(error.value) == (
        f"{data / 'FER2013Train' / 'FER2013Valid'}: no such folder "
        f"({data / 'FER2013Train'} is a split folder itself: give the folder above it, -d {data})"
    )


# ---------------------------------------------------------------- TrainStream
def collect(stream: TrainStream, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(stream.epoch(epoch))
    assert len(batches) == len(stream)
    return tuple(torch.cat(parts) for parts in zip(*batches))


def test_stream_keeps_the_modes_images_and_batches_them() -> None:
    data = make_data(60)
    for mode in ("majority", "crossentropy", "multi_target", "probability"):
        targets, keep = process_votes(data.votes, mode)
        stream = TrainStream(data, mode, batch_size=7, device="cpu", augment=False)
        assert stream.num_images == keep.sum()
        assert stream.class_counts.dtype == np.int64
        assert stream.class_counts.tolist() == np.bincount(targets[keep].argmax(1), minlength=8).tolist()
        batches = list(stream.epoch(0))
        sizes = [len(b[0]) for b in batches]
        assert sizes == [7] * (keep.sum() // 7) + ([keep.sum() % 7] if keep.sum() % 7 else [])  # last kept
        for inputs, loss_targets, labels in batches:
            assert inputs.shape[1:] == (1, 64, 64) and inputs.dtype == torch.float32
            assert loss_targets.shape[1:] == (NUM_EMOTIONS,) and loss_targets.dtype == torch.float32
            assert labels.dtype == torch.int64


def test_stream_serves_each_image_with_its_own_target() -> None:
    """Without augmentation the inputs are the evaluation crops: match them back to their targets."""
    data = make_data(30)
    targets, keep = process_votes(data.votes, "crossentropy")
    expected = preprocess(data.images[keep])
    stream = TrainStream(data, "crossentropy", batch_size=4, device="cpu", augment=False)
    inputs, loss_targets, labels = collect(stream, 3)
    for x, t, label in zip(inputs.numpy(), loss_targets.numpy(), labels.numpy()):
        i = int(np.argmin(np.abs(expected - x).reshape(len(expected), -1).sum(1)))
        assert np.array_equal(expected[i], x)
        np.testing.assert_array_equal(t, targets[keep][i])
        assert label == targets[keep][i].argmax()


def test_probability_targets_are_one_hot_draws_with_the_distributions_frequencies() -> None:
    # Every image has votes (5, 0, 0, 3, ...): distribution {neutral .625, sadness .375}.
    data = make_data(400)
    data.votes[:] = VOTES[1]
    stream = TrainStream(data, "probability", batch_size=128, device="cpu", augment=False)
    drawn = torch.cat([collect(stream, epoch)[1] for epoch in range(5)])
    assert ((drawn == 0) | (drawn == 1)).all() and (drawn.sum(1) == 1).all()
    share = drawn.mean(0)
    assert set(torch.nonzero(share).flatten().tolist()) == {0, 3}
    # 2000 draws: standard deviation of the share ~0.011; allow 5.
    assert abs(float(share[0]) - 0.625) < 0.055
    labels = collect(stream, 0)[2]
    assert (labels == 0).all()  # labels follow the distribution's argmax, not the draw


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    """Rows in lexicographic order (the stream shuffles; compare as multisets)."""
    rows = np.asarray(rows, dtype=np.float64).round(5)
    return rows[np.lexsort(rows.T[::-1])]


def test_multi_target_and_distribution_targets() -> None:
    data = make_data(12)
    multi = collect(TrainStream(data, "multi_target", batch_size=64, device="cpu", augment=False), 0)[1]
    assert torch.unique(multi).tolist() == pytest.approx([0.001, 1.0])
    targets, keep = process_votes(data.votes, "multi_target")
    np.testing.assert_allclose(sorted_rows(multi.numpy()), sorted_rows((targets[keep] > 0) * 0.999 + 0.001), atol=1e-6)
    distribution = collect(TrainStream(data, "crossentropy", batch_size=64, device="cpu"), 0)[1]
    targets, keep = process_votes(data.votes, "crossentropy")
    np.testing.assert_allclose(sorted_rows(distribution.numpy()), sorted_rows(targets[keep]), atol=1e-6)


def test_stream_is_a_function_of_seed_and_epoch() -> None:
    data = make_data(40)

    def run(seed: int, epoch: int) -> tuple:
        return collect(TrainStream(data, "probability", batch_size=8, device="cpu", seed=seed), epoch)

    a, b = run(0, 2), run(0, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # Resuming: a fresh stream reproduces epoch 2 without having run epochs 0 and 1.
    stream = TrainStream(data, "probability", batch_size=8, device="cpu", seed=0)
    for epoch in range(3):
        last = collect(stream, epoch)
    assert all(torch.equal(x, y) for x, y in zip(last, a))
    assert not torch.equal(run(0, 3)[0], a[0]) and not torch.equal(run(1, 2)[0], a[0])


def test_ranks_get_disjoint_equal_shards_covering_the_epoch() -> None:
    data = make_data(60)
    streams = [TrainStream(data, "multi_target", batch_size=5, device="cpu", rank=r, world_size=2) for r in range(2)]
    num_images = streams[0].num_images
    assert num_images % 2 == 0  # so the two shards can cover the whole epoch
    shards = [s.shard(4) for s in streams]
    assert len(shards[0]) == len(shards[1]) == num_images // 2 and len(streams[0]) == len(streams[1])
    assert sorted(torch.cat(shards).tolist()) == list(range(num_images))
    # The permutation is shared by the ranks and changes with the epoch.
    assert not torch.equal(streams[0].shard(4), streams[0].shard(5))
    one = TrainStream(data, "multi_target", batch_size=5, device="cpu", world_size=1)
    assert sorted(one.shard(4).tolist()) == list(range(num_images))


def test_odd_epoch_sizes_give_equal_shards() -> None:
    data = make_data(7 * 6)  # multi_target keeps 5 of every 6 → 35 images
    streams = [TrainStream(data, "multi_target", batch_size=4, device="cpu", rank=r, world_size=3) for r in range(3)]
    shards = [s.shard(0) for s in streams]
    assert [len(s) for s in shards] == [11, 11, 11]
    assert len(set(torch.cat(shards).tolist())) == 33


def test_bad_stream_arguments() -> None:
    data = make_data(6)
    with pytest.raises(ValueError, match="rank"):
        TrainStream(data, "majority", 4, "cpu", rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        TrainStream(data, "majority", 0, "cpu")
    with pytest.raises(ValueError, match="unknown mode"):
        TrainStream(data, "softmax", 4, "cpu")


# ---------------------------------------------------------------- EvalSet
def test_eval_set_keeps_only_majority_images(tmp_path: Path) -> None:
    write_folder(tmp_path)
    data = read_folder(tmp_path)
    evaluation = EvalSet(data, "cpu")
    # Majority keeps lines 2 (neutral) and 5 (happiness) of VOTES.
    assert evaluation.names == ["fer0000001.png", "fer0000004.png"]
    assert evaluation.labels.tolist() == [0, 1] and evaluation.labels.dtype == torch.int64
    assert evaluation.class_counts.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert torch.equal(evaluation.inputs, torch.from_numpy(preprocess(data.images[[1, 4]])))
    batches = list(evaluation.batches(1))
    assert len(batches) == 2 and torch.equal(batches[1][0], evaluation.inputs[1:])


def test_eval_batches_shard_across_ranks() -> None:
    evaluation = EvalSet(make_data(60), "cpu")  # majority keeps 2 of 6 → 20 images
    seen = []
    for rank in range(3):
        for inputs, labels in evaluation.batches(4, rank=rank, world_size=3):
            assert len(inputs) == len(labels) <= 4
            seen += [int(torch.nonzero((evaluation.inputs == x).all(dim=(1, 2, 3)))[0]) for x in inputs]
    assert sorted(seen) == list(range(evaluation.num_images))


# ---------------------------------------------------------------- summary_table
def test_summary_table_layout() -> None:
    counts = {
        "Train": np.array([8739, 7287, 3149, 3013, 2099, 119, 532, 119]),
        "Val": np.array([1094, 1000, 400, 300, 250, 10, 100, 45]),
        "Test": np.array([1102, 900, 400, 300, 250, 60, 100, 41]),
    }
    table = summary_table(counts).splitlines()
    assert table[0] == "emotion      Train    Val   Test"
    assert table[1] == "neutral       8739   1094   1102"
    assert table[-1] == "total        25057   3199   3153"
    assert [line.split()[0] for line in table[1:-1]] == list(EMOTIONS)
    assert len({len(line) for line in table}) == 1
    wide = summary_table({"Training images": np.arange(8)}).splitlines()
    assert wide[0] == "emotion      Training images" and wide[-1].endswith("28")


# ---------------------------------------------------------------- the pack
def generated(tmp_path: Path, synthetic_data: Path) -> Path:
    """A data folder of the synthetic sample's CSVs (PNGs, label.csv and packs) to edit.

    Generated, not copied: a copy has new inodes, so its packs no longer match.
    """
    csv = synthetic_data.parent / "csv"
    base = tmp_path / "data"
    prepare.generate_training_data(base, csv / FER_CSV, csv / FERPLUS_CSV, progress=False)
    return base


def decoded(folder: Path) -> FerFolder:
    """What read_folder gives without the pack: the PNGs decoded."""
    copy = folder.parent / f"{folder.name}-nopack"
    shutil.copytree(folder, copy)
    (copy / PACK_FILE).unlink()
    data = read_folder(copy)
    shutil.rmtree(copy)
    return data


def same(a: FerFolder, b: FerFolder) -> bool:
    return (a.names == b.names and np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
            and np.array_equal(a.votes, b.votes))


def test_the_pack_is_served_when_it_matches(tmp_path: Path, synthetic_data: Path, monkeypatch, capsys) -> None:
    folder = generated(tmp_path, synthetic_data) / "FER2013Valid"
    expected = decoded(folder)
    capsys.readouterr()
    monkeypatch.setattr("ferplus.data._read_gray", lambda path: pytest.fail(f"decoded {path}"))
    assert same(read_folder(folder), expected)
    assert capsys.readouterr().err == ""


def _edit_png(folder: Path, name: str) -> None:
    image = cv2.imread(str(folder / name), cv2.IMREAD_GRAYSCALE)
    with open(folder / name, "r+b") as f:  # in place: same file, same size, other pixels
        f.write(prepare.encode_png(255 - image).tobytes())


def _add_png(folder: Path, name: str) -> None:
    first = (folder / "label.csv").read_text().splitlines()[0]
    shutil.copyfile(folder / first.split(",")[0], folder / "extra.png")
    with open(folder / "label.csv", "a") as f:
        f.write(first.replace(first.split(",")[0], "extra.png") + "\n")


def _replace_png(folder: Path, name: str) -> None:
    other = sorted(folder.glob("*.png"))[-1]
    shutil.copyfile(other, folder / "tmp.png")
    os.replace(folder / "tmp.png", folder / name)  # an editor's save: a new file in its place


def _edit_label(folder: Path, name: str) -> None:
    lines = (folder / "label.csv").read_text().splitlines()
    votes = lines[0].rsplit('"', 1)[1]
    lines[0] = lines[0].replace(votes, ",0,0,0,0,0,0,0,0,0,10")
    (folder / "label.csv").write_text("\n".join(lines) + "\n")


def _remove_png(folder: Path, name: str) -> None:
    (folder / name).unlink()


@pytest.mark.parametrize("change", [_edit_png, _replace_png, _add_png, _edit_label])
def test_a_changed_folder_is_decoded_afresh_with_a_note(
    tmp_path: Path, synthetic_data: Path, capsys, change
) -> None:
    folder = generated(tmp_path, synthetic_data) / "FER2013Valid"
    name = (folder / "label.csv").read_text().split(",", 1)[0]
    change(folder, name)
    expected = decoded(folder)
    capsys.readouterr()
    assert same(read_folder(folder), expected)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: {folder}: ") and err[0].endswith(": decoded the PNGs instead")


def test_a_removed_png_is_an_error_not_the_packed_image(tmp_path: Path, synthetic_data: Path, capsys) -> None:
    folder = generated(tmp_path, synthetic_data) / "FER2013Valid"
    name = (folder / "label.csv").read_text().split(",", 1)[0]
    _remove_png(folder, name)
    with pytest.raises(FerplusError, match=f"label.csv: line 1: image {folder / name}: no such file"):
        read_folder(folder)


def test_a_copied_folder_is_decoded_afresh(tmp_path: Path, synthetic_data: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_data / "FER2013Valid", copy)  # new inodes, as after any copy
    capsys.readouterr()
    assert same(read_folder(copy), decoded(copy))
    assert capsys.readouterr().err.startswith(f"note: {copy}: ")


def test_an_added_png_that_label_csv_does_not_list_changes_nothing(tmp_path: Path, synthetic_data: Path) -> None:
    folder = generated(tmp_path, synthetic_data) / "FER2013Valid"
    shutil.copyfile(next(folder.glob("*.png")), folder / "unlisted.png")
    assert same(read_folder(folder), decoded(folder))


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY"])
def test_a_damaged_pack_is_decoded_afresh(tmp_path: Path, synthetic_data: Path, capsys, damage: bytes) -> None:
    folder = generated(tmp_path, synthetic_data) / "FER2013Test"
    expected = decoded(folder)
    (folder / PACK_FILE).write_bytes(damage)
    capsys.readouterr()
    assert same(read_folder(folder), expected)
    assert capsys.readouterr().err.startswith(f"note: {folder}: {PACK_FILE} cannot be read")


def test_a_folder_without_a_pack_is_read_quietly(tmp_path: Path, capsys) -> None:
    images = write_folder(tmp_path / "FER2013Train")  # as an older generator wrote it
    assert np.array_equal(read_folder(tmp_path / "FER2013Train").images, np.stack(images))
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- names
HOSTILE_NAMES = [
    "../fer0000000.png", "../../../../ESCAPED.png", "/etc/passwd", "./fer0000000.png", "sub/x.png",
    "FER2013Train/../fer0000000.png", "..", ".", "a\\b.png", "..\\x.png", "x.png/", "/", "x\x00.png",
    "tab\there.png",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_is_one_plain_file_name_inside_its_split(tmp_path: Path, name: str) -> None:
    write_folder(tmp_path / "data" / "FER2013Train")
    train = tmp_path / "data" / "FER2013Train"
    shutil.copyfile(train / "fer0000000.png", tmp_path / "data" / "fer0000000.png")  # a file to escape to
    corrupt_line(tmp_path / "data" / "FER2013Train", 2, f'"{name}","(0, 0, 48, 48)",{VOTE_TAIL}')
    with pytest.raises(FerplusError, match=r"label.csv: line 2: image name .*(path|folder|control)") as error:
        read_folder(tmp_path / "data" / "FER2013Train")
    assert "\n" not in str(error.value)


def test_label_csv_for_reproduce_is_read_by_the_shared_reader(tmp_path: Path, make_fifo) -> None:
    from ferplus.reproduce import _train_images

    train = tmp_path / "FER2013Train"
    write_folder(train)
    assert _train_images(str(tmp_path)) == len(VOTES)
    (train / "label.csv").write_bytes(b"\xff\xfe not utf-8\n")
    with pytest.raises(FerplusError, match="label.csv: not a label.csv text file"):
        _train_images(str(tmp_path))
    (train / "label.csv").unlink()
    make_fifo(train / "label.csv")
    with pytest.raises(FerplusError, match="label.csv: cannot read: not a regular file"):
        _train_images(str(tmp_path))


# ---------------------------------------------------------------- one generation
# Regenerates the data folder from two CSV pairs in turn, ``rounds`` times, printing each round.
REGENERATION_LOOP = r"""
import sys
from ferplus.prepare import generate_training_data
base, rounds, pairs = sys.argv[1], int(sys.argv[2]), [sys.argv[3:5], sys.argv[5:7]]
for i in range(rounds):
    generate_training_data(base, *pairs[i % 2], progress=False)
    print(i, flush=True)
"""


def test_readers_see_one_whole_generation_while_it_is_regenerated(tmp_path: Path) -> None:
    pairs = [write_sample(tmp_path / name, per_split=24, seed=seed) for name, seed in (("a", 1), ("b", 2))]
    generations = []
    for i, pair in enumerate(pairs):
        prepare.generate_training_data(tmp_path / f"ref{i}", *pair, progress=False)
        read = read_data_folder(tmp_path / f"ref{i}")
        generations.append({k: v.votes.tobytes() + v.images.tobytes() for k, v in read.items()})
    base = tmp_path / "data"
    prepare.generate_training_data(base, *pairs[0], progress=False)
    loop = subprocess.Popen([sys.executable, "-c", REGENERATION_LOOP, str(base), "12", *map(str, pairs[0] + pairs[1])],
                            stdout=subprocess.PIPE, text=True)
    seen = set()
    while loop.poll() is None:  # read as long as the loop regenerates
        read = {k: v.votes.tobytes() + v.images.tobytes() for k, v in read_data_folder(base).items()}
        assert read in generations, "splits of different generations"
        seen.add(generations.index(read))
    assert loop.returncode == 0 and loop.stdout.read().split() == [str(i) for i in range(12)]
    assert seen  # at least one read overlapped the loop


def test_a_half_done_swap_is_refused_in_one_line(synthetic_data: Path, tmp_path: Path) -> None:
    base = tmp_path / "data"
    shutil.copytree(synthetic_data, base)
    staging = base / f"{prepare.STAGING_PREFIX}1-abcdefgh"
    (staging / "FER2013Test").mkdir(parents=True)  # a killed run moved the other two splits in already
    (staging / prepare.STAGING_MARKER).touch()
    (staging / prepare.COMPLETE_MARKER).touch()
    with pytest.raises(FerplusError, match="a generator run was stopped while it swapped in new split folders") as e:
        read_data_folder(base)
    assert "\n" not in str(e.value)
