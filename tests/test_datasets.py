"""The torchvision-style FERPlus dataset: the trainer's images and targets, in any training loop."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ferplus.data import EvalSet, TrainStream, read_folder
from ferplus.datasets import SPLITS, FERPlus
from ferplus.errors import FerplusError
from ferplus.labels import EMOTIONS, MODES, process_votes
from ferplus import prepare
from ferplus.prepare import generate_training_data
from ferplus.synthetic import write_sample

SPLIT_MODES = [(split, mode) for split in SPLITS for mode in MODES]


def assert_matches_trainer(dataset: FERPlus, base: Path, split: str, mode: str) -> None:
    """The dataset serves the images and targets the trainer's stream holds, in the same order."""
    data = read_folder(base / SPLITS[split])
    stream = TrainStream(data, mode, batch_size=32, device="cpu", augment=False)
    assert len(dataset) == stream.num_images > 0
    if mode == "majority":
        assert dataset.targets == stream.labels.tolist()
        # The evaluator's images are the majority mode's: same names, same labels.
        evaluation = EvalSet(data, "cpu")
        assert dataset.names == evaluation.names and dataset.targets == evaluation.labels.tolist()
    elif mode == "multi_target":
        assert torch.equal(dataset.targets, (stream.targets > 0).float())
    else:
        assert torch.equal(dataset.targets, stream.targets)
    for i in range(len(dataset)):
        image, target = dataset[i]
        assert image.mode == "L" and np.array_equal(np.asarray(image), stream.images[i].numpy())
        if mode == "majority":
            assert target == int(stream.labels[i])
        elif mode == "probability":
            assert isinstance(target, int) and stream.targets[i, target] > 0
        else:
            assert torch.equal(target, dataset.targets[i])


@pytest.mark.parametrize("split, mode", SPLIT_MODES)
def test_synthetic_items_are_the_trainers(synthetic_data: Path, split: str, mode: str) -> None:
    assert_matches_trainer(FERPlus(synthetic_data, split, mode), synthetic_data, split, mode)


@pytest.fixture(scope="module")
def real_sample(shared_ferplus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 rows of each split of the real data, as CSVs (``csv/``) and prepared (``data/``)."""
    root = tmp_path_factory.mktemp("real")
    fer = root / "csv" / "fer2013.csv"
    subprocess.run([sys.executable, str(shared_ferplus / "make_fer2013_csv.py"), str(fer), "--per-split", "300"],
                   check=True, capture_output=True)
    generate_training_data(root / "data", fer, fer.parent / "fer2013new.csv", progress=False)
    return root


@pytest.mark.parametrize("split, mode", SPLIT_MODES)
def test_real_items_are_the_trainers(real_sample: Path, split: str, mode: str) -> None:
    assert_matches_trainer(FERPlus(real_sample / "data", split, mode), real_sample / "data", split, mode)


def assert_same_dataset(a: FERPlus, b: FERPlus) -> None:
    assert a.names == b.names and len(a) == len(b) > 0
    assert np.array_equal(a.votes, b.votes)
    if a.mode == "majority":
        assert a.targets == b.targets
    else:
        assert torch.equal(a.targets, b.targets)
    for i in range(len(a)):
        assert np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0]))


def test_real_from_csv_equals_the_prepared_folder(real_sample: Path) -> None:
    fer, ferplus = real_sample / "csv" / "fer2013.csv", real_sample / "csv" / "fer2013new.csv"
    for split in SPLITS:
        from_csv = FERPlus.from_csv(fer, ferplus, split, "crossentropy")
        assert from_csv.root == fer
        assert_same_dataset(from_csv, FERPlus(real_sample / "data", split, "crossentropy"))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CSV pair (``csv/``) and its prepared folders (``data/``)."""
    root = tmp_path_factory.mktemp("sample")
    fer, ferplus = write_sample(root / "csv", per_split=40, seed=5)
    generate_training_data(root / "data", fer, ferplus, progress=False)
    return root


@pytest.mark.parametrize("split, mode", SPLIT_MODES)
def test_from_csv_equals_the_prepared_folder(sample: Path, split: str, mode: str) -> None:
    from_csv = FERPlus.from_csv(sample / "csv" / "fer2013.csv", sample / "csv" / "fer2013new.csv", split, mode)
    assert_same_dataset(from_csv, FERPlus(sample / "data", split, mode))


def test_from_kaggle_icml_face_data_csv(sample: Path, tmp_path: Path) -> None:
    """icml_face_data.csv holds fer2013.csv's rows with the columns reordered and ", " in its header."""
    lines = (sample / "csv" / "fer2013.csv").read_text().splitlines()
    assert lines[0] == "emotion,pixels,Usage"
    icml = tmp_path / "icml_face_data.csv"
    rows = [line.split(",") for line in lines[1:]]
    icml.write_text("emotion, Usage, pixels\n" + "".join(f"{e},{usage},{pixels}\n" for e, pixels, usage in rows))
    for split in SPLITS:
        assert_same_dataset(
            FERPlus.from_csv(icml, sample / "csv" / "fer2013new.csv", split, "multi_target"),
            FERPlus(sample / "data", split, "multi_target"),
        )


def test_from_csv_reports_bad_files(sample: Path, tmp_path: Path) -> None:
    ferplus = sample / "csv" / "fer2013new.csv"
    with pytest.raises(FileNotFoundError, match="nowhere.csv: no such file"):
        FERPlus.from_csv(tmp_path / "nowhere.csv", ferplus)
    bad = tmp_path / "fer2013.csv"
    bad.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(FerplusError, match="fer2013.csv: line 2: pixels holds 3 values"):
        FERPlus.from_csv(bad, ferplus)
    with pytest.raises(ValueError, match="unknown split 'dev'; choose one of train, val, test"):
        FERPlus.from_csv(bad, ferplus, split="dev")  # the names are checked before any file is read


def test_attributes_and_targets_per_mode(sample: Path) -> None:
    base = sample / "data"
    for mode in MODES:
        dataset = FERPlus(base, "train", mode)
        assert dataset.classes == list(EMOTIONS)
        assert dataset.class_to_idx == {emotion: i for i, emotion in enumerate(EMOTIONS)}
        assert dataset.votes.shape == (len(dataset), 10) and len(dataset.names) == len(dataset)
        distributions, keep = process_votes(dataset.votes, mode)
        assert keep.all()  # only kept images are served
        image, target = dataset[0]
        assert isinstance(image, Image.Image) and image.size == (48, 48)
        if mode in ("majority", "probability"):
            assert isinstance(target, int) and 0 <= target < len(EMOTIONS)
        else:
            assert target.dtype == torch.float32 and target.shape == (len(EMOTIONS),)
        if mode == "majority":
            assert isinstance(dataset.targets, list) and dataset.targets == distributions.argmax(1).tolist()
        elif mode == "multi_target":
            assert set(dataset.targets.unique().tolist()) == {0.0, 1.0}  # a mask, unsmoothed
            assert torch.equal(dataset.targets, torch.from_numpy(distributions > 0).float())
        else:
            assert torch.equal(dataset.targets, torch.from_numpy(distributions))
            torch.testing.assert_close(dataset.targets.sum(1), torch.ones(len(dataset)))
    # A changed target does not change the dataset.
    dataset[0][1].zero_()
    assert dataset.targets[0].sum() > 0
    assert repr(dataset).splitlines()[:5] == [
        "Dataset FERPlus", f"    Number of datapoints: {len(dataset)}", f"    Root location: {base}",
        "    Split: train", "    Mode: multi_target",
    ]


def test_probability_draws_follow_the_distribution_and_torch_manual_seed(tmp_path: Path) -> None:
    # One image voted (5, 0, 0, 3, ...): distribution {neutral .625, sadness .375}.
    folder = write_original_layout(tmp_path / "FER2013Train", [(5, 0, 0, 3, 1, 0, 0, 0, 1, 0)])
    dataset = FERPlus(folder.parent, "train", "probability")
    torch.manual_seed(3)
    draws = [dataset[0][1] for _ in range(2000)]
    assert set(draws) == {0, 3}
    # 2000 draws: standard deviation of the share ~0.011; the seed fixes the outcome.
    assert abs(draws.count(0) / len(draws) - 0.625) < 0.055
    torch.manual_seed(3)
    assert [dataset[0][1] for _ in range(2000)] == draws


def write_original_layout(folder: Path, votes, size=(48, 48), box=None) -> Path:
    """A split folder as the original FER+ repository's tools leave it: PNGs saved by PIL and a
    label.csv with Windows line ends (as a Windows checkout has them)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, v in enumerate(votes):
        name = f"fer{i:07d}.png"
        Image.fromarray(rng.integers(0, 256, size=size, dtype=np.uint8)).save(folder / name, compress_level=0)
        left, top, right, bottom = box or (0, 0, size[1], size[0])
        lines.append(f'{name},"({left}, {top}, {right}, {bottom})",' + ",".join(map(str, v)))
    (folder / "label.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return folder


def test_original_repository_layout_and_face_boxes(tmp_path: Path) -> None:
    votes = [(0, 10, 0, 0, 0, 0, 0, 0, 0, 0), (2, 2, 2, 2, 2, 0, 0, 0, 0, 0), (0, 0, 7, 0, 3, 0, 0, 0, 0, 0)]
    folder = write_original_layout(tmp_path / "FER2013Valid", votes, size=(60, 50), box=(5, 10, 45, 40))
    dataset = FERPlus(tmp_path, "val")
    assert dataset.names == ["fer0000000.png", "fer0000002.png"] and dataset.targets == [1, 2]
    image = dataset[1][0]
    assert image.size == (40, 30)  # the face box, not the whole image
    whole = np.asarray(Image.open(folder / "fer0000002.png"))
    assert np.array_equal(np.asarray(image), whole[10:40, 5:45])


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A transform without torchvision (module level, so worker processes can unpickle it)."""
    return torch.from_numpy(np.array(image, dtype=np.float32) / 255)[None]


def test_dataloader_with_two_workers_and_a_transform(sample: Path) -> None:
    for mode in ("majority", "multi_target"):
        dataset = FERPlus(sample / "data", "train", mode, transform=to_tensor)
        loader = DataLoader(dataset, batch_size=16, num_workers=2)
        images, targets = (torch.cat(parts) for parts in zip(*loader))
        assert images.shape == (len(dataset), 1, 48, 48)
        assert torch.equal(images, torch.stack([dataset[i][0] for i in range(len(dataset))]))
        expected = torch.tensor(dataset.targets) if mode == "majority" else dataset.targets
        assert torch.equal(targets, expected)


def test_probability_draws_in_workers_are_seeded_and_fresh_each_epoch(sample: Path) -> None:
    dataset = FERPlus(sample / "data", "train", "probability", transform=to_tensor)
    loader = DataLoader(dataset, batch_size=8, num_workers=2)

    def epochs() -> list[torch.Tensor]:
        torch.manual_seed(11)
        return [torch.cat([targets for _, targets in loader]) for _ in range(2)]

    first, second = epochs()
    assert torch.equal(torch.stack(epochs()), torch.stack([first, second]))  # torch.manual_seed fixes every draw
    assert not torch.equal(first, second)  # each epoch draws anew
    support = dataset.targets[torch.arange(len(dataset)), first] > 0
    assert support.all()


def test_pickles(sample: Path) -> None:
    dataset = FERPlus(sample / "data", "test", "crossentropy")
    copy = pickle.loads(pickle.dumps(dataset))
    assert_same_dataset(copy, dataset)


def test_torchvision_transforms(sample: Path, torchvision) -> None:
    transforms = torchvision.transforms
    transform = transforms.Compose([transforms.Resize(64), transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    dataset = FERPlus(sample / "data", "train", "majority", transform=transform)
    images, labels = next(iter(DataLoader(dataset, batch_size=16, num_workers=2)))
    assert images.shape == (16, 1, 64, 64) and images.dtype == torch.float32
    assert labels.tolist() == dataset.targets[:16]


def test_bad_arguments(sample: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'; choose one of train, val, test"):
        FERPlus(sample / "data", split="dev")
    with pytest.raises(ValueError, match="unknown mode 'soft'; choose one of majority, probability, crossentropy"):
        FERPlus(sample / "data", mode="soft")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'FER2013Test'}: no such folder"):
        FERPlus(tmp_path, split="test")


def test_from_csv_works_in_a_plain_script_without_a_main_guard(tmp_path: Path) -> None:
    # Large enough that the generator's CLI would parse it with a process pool.
    fer, ferplus = write_sample(tmp_path / "csv", per_split=800)
    assert fer.stat().st_size >= prepare.POOL_MIN_BYTES
    script = tmp_path / "plain.py"
    script.write_text(
        "from ferplus.datasets import FERPlus\n"
        f"dataset = FERPlus.from_csv({str(fer)!r}, {str(ferplus)!r}, split='test')\n"
        "print(len(dataset))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert int(done.stdout) == len(FERPlus.from_csv(fer, ferplus, split="test"))
