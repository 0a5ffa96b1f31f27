"""generate_training_data: output format, pixels, duplicates, replacing, and every bad input."""

from __future__ import annotations

import csv
import errno
import io
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
from PIL import Image

from ferplus import prepare
from ferplus.pack import PACK_FILE
from ferplus.prepare import RUN_LOCK, encode_png, generate_training_data
from scripts import run_script

ROOT = Path(__file__).resolve().parents[1]
DEV_FULL = Path("/dev/full")
SCRIPT = ROOT / "generate_training_data.py"
FOLDERS = ("FER2013Train", "FER2013Valid", "FER2013Test")
FER_HEADER = "emotion,pixels,Usage"
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


class Pair:
    """A small fer2013.csv + fer2013new.csv pair written from editable rows."""

    def __init__(self, folder: Path, rows: List[dict]) -> None:
        self.folder, self.rows = folder, rows
        self.fer_lines = [FER_HEADER] + [
            f"{r['emotion']},{' '.join(map(str, r['pixels'].ravel()))},{r['usage']}" for r in rows
        ]
        self.ferplus_lines = [FERPLUS_HEADER] + [
            f"{r['usage']},{r['name']},{','.join(map(str, r['votes']))}" for r in rows
        ]

    @property
    def fer(self) -> Path:
        return self.folder / "fer2013.csv"

    @property
    def ferplus(self) -> Path:
        return self.folder / "fer2013new.csv"

    def write(self) -> "Pair":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fer.write_text("\n".join(self.fer_lines) + "\n", newline="")
        self.ferplus.write_text("\n".join(self.ferplus_lines) + "\n", newline="")
        return self


def make_rows(seed: int = 0, per_split: int = 3) -> List[dict]:
    """Rows of all three splits with random pixels (0 and 255 included) and varied votes."""
    rng = np.random.default_rng(seed)
    rows = []
    # FER+'s names for seed 0; other seeds name their images apart (FER+'s numbering is checked).
    prefix = "fer" if seed == 0 else f"seed{seed}-"
    for usage in ("Training", "PublicTest", "PrivateTest"):
        for _ in range(per_split):
            pixels = rng.integers(0, 256, size=(48, 48), dtype=np.uint8)
            pixels[0, :2] = (0, 255)
            votes = rng.multinomial(10, [0.1] * 10)
            rows.append({"emotion": 3, "pixels": pixels, "usage": usage, "votes": votes,
                         "name": f"{prefix}{len(rows):07d}.png"})
    return rows


#: Files whose bytes differ between equal runs: the pack records its PNGs' mtimes and inodes
#: (its contents are checked by test_data.py), the lock file is empty.
UNCOMPARED = (PACK_FILE, RUN_LOCK)


def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes) but :data:`UNCOMPARED`; {} for a missing folder."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in UNCOMPARED
    }


def expected_label_csv(rows: List[dict]) -> bytes:
    return "".join(f'{r["name"]},"(0, 0, 48, 48)",{",".join(map(str, r["votes"]))}\n' for r in rows).encode()


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (48, 48)
        return np.asarray(image)


# ---------------------------------------------------------------------------------------------
# What a good run writes


def test_label_csv_layout_is_byte_exact(tmp_path: Path) -> None:
    rows = make_rows()
    rows[0]["name"], rows[0]["votes"] = "fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]
    pair = Pair(tmp_path / "csv", rows).write()
    generate_training_data(tmp_path / "data", pair.fer, pair.ferplus, progress=False)
    label = (tmp_path / "data" / "FER2013Train" / "label.csv").read_bytes()
    assert label.startswith(b'fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0\n')
    for i, folder in enumerate(FOLDERS):
        assert (tmp_path / "data" / folder / "label.csv").read_bytes() == expected_label_csv(rows[3 * i : 3 * i + 3])


def test_pngs_are_8bit_grayscale_and_pixel_identical(tmp_path: Path) -> None:
    rows = make_rows()
    pair = Pair(tmp_path / "csv", rows).write()
    generate_training_data(tmp_path / "data", pair.fer, pair.ferplus, progress=False)
    for i, folder in enumerate(FOLDERS):
        names = sorted(p.name for p in (tmp_path / "data" / folder).glob("*.png"))
        assert names == sorted(r["name"] for r in rows[3 * i : 3 * i + 3])
        for r in rows[3 * i : 3 * i + 3]:
            path = tmp_path / "data" / folder / r["name"]
            assert path.read_bytes()[24:26] == b"\x08\x00"  # IHDR: bit depth 8, colour type 0 (grayscale)
            np.testing.assert_array_equal(read_png(path), r["pixels"])


@pytest.mark.parametrize("shape", [(48, 48), (5, 7), (1, 1)])
def test_encode_png_round_trips(shape: tuple) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(image))) as decoded:
        assert decoded.mode == "L"
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_empty_names_skipped_and_duplicates_written_once_with_first_votes(tmp_path: Path) -> None:
    rows = make_rows(per_split=4)
    rows[1]["name"] = ""  # Training: no image for this row
    rows[3]["name"] = rows[2]["name"]  # Training: the same image named twice (second votes differ)
    rows[3]["votes"] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
    rows[9]["name"] = ""  # PrivateTest
    pair = Pair(tmp_path / "csv", rows).write()
    summary = generate_training_data(tmp_path / "data", pair.fer, pair.ferplus, progress=False)
    assert summary == {
        "FER2013Train": {"usage": "Training", "rows": 4, "images": 2, "skipped": 1, "duplicates": [rows[2]["name"]]},
        "FER2013Valid": {"usage": "PublicTest", "rows": 4, "images": 4, "skipped": 0, "duplicates": []},
        "FER2013Test": {"usage": "PrivateTest", "rows": 4, "images": 3, "skipped": 1, "duplicates": []},
    }
    train = tmp_path / "data" / "FER2013Train"
    assert (train / "label.csv").read_bytes() == expected_label_csv([rows[0], rows[2]])
    assert len(list(train.glob("*.png"))) == 2
    np.testing.assert_array_equal(read_png(train / rows[2]["name"]), rows[2]["pixels"])
    assert (tmp_path / "data" / "FER2013Test" / "label.csv").read_bytes() == expected_label_csv(rows[8:9] + rows[10:])
    text = prepare.format_summary(summary)
    assert "FER2013Train: written once, with the first row's votes: " + rows[2]["name"] in text


def test_process_pool_gives_the_same_output_as_in_process_and_never_forks(tmp_path: Path, monkeypatch) -> None:
    pair = Pair(tmp_path / "csv", make_rows(per_split=20)).write()
    generate_training_data(tmp_path / "one", pair.fer, pair.ferplus, progress=False, workers=1)

    def no_fork() -> int:  # a fork would copy this process's threads (torch's, numpy's) mid-flight
        raise AssertionError("the generator forked its caller")

    monkeypatch.setattr(os, "fork", no_fork)
    generate_training_data(tmp_path / "two", pair.fer, pair.ferplus, progress=False, workers=2)
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")
    assert len(snapshot(tmp_path / "one")) == 3 * 21


def test_process_pool_reports_the_right_line(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "csv", make_rows(per_split=20))
    pair.fer_lines[55] = pair.fer_lines[55].replace(" ", " 300 ", 1)  # a late chunk, 2305 values
    pair.write()
    with pytest.raises(prepare.FerplusError, match=r"fer2013\.csv: line 56: pixel value 300 is outside 0\.\.255"):
        generate_training_data(tmp_path / "data", pair.fer, pair.ferplus, progress=False, workers=2)
    assert not (tmp_path / "data").exists()


def test_tolerates_crlf_quotes_bom_and_no_final_newline(tmp_path: Path) -> None:
    rows = make_rows()
    pair = Pair(tmp_path / "csv", rows)
    pair.folder.mkdir()
    fer_lines = [pair.fer_lines[0]] + [f'{line.split(",")[0]},"{line.split(",")[1]}",{line.split(",")[2]}'
                                       for line in pair.fer_lines[1:]]
    pair.fer.write_bytes(("\r\n".join(fer_lines)).encode())
    pair.ferplus.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(pair.ferplus_lines).encode() + b"\r\n")
    generate_training_data(tmp_path / "data", pair.fer, pair.ferplus, progress=False)
    assert (tmp_path / "data" / "FER2013Valid" / "label.csv").read_bytes() == expected_label_csv(rows[3:6])
    np.testing.assert_array_equal(read_png(tmp_path / "data" / "FER2013Test" / rows[8]["name"]), rows[8]["pixels"])


# ---------------------------------------------------------------------------------------------
# Replacing an existing output, and surviving failures


def test_rerun_replaces_the_split_folders_and_nothing_else(tmp_path: Path) -> None:
    base = tmp_path / "data"
    first = Pair(tmp_path / "a", make_rows(seed=1)).write()
    second = Pair(tmp_path / "b", make_rows(seed=2)).write()
    generate_training_data(base, first.fer, first.ferplus, progress=False)
    (base / "fer2013new.csv").write_text("shipped labels\n")
    (base / "notes").mkdir()
    (base / "notes" / "keep.txt").write_text("mine\n")

    generate_training_data(base, second.fer, second.ferplus, progress=False)
    fresh = tmp_path / "fresh"
    generate_training_data(fresh, second.fer, second.ferplus, progress=False)
    after = snapshot(base)
    assert after.pop("fer2013new.csv") == b"shipped labels\n"
    assert after.pop("notes/keep.txt") == b"mine\n"
    assert after == snapshot(fresh)  # no file of the first run survives
    assert sorted(p.name for p in base.iterdir()) == sorted(FOLDERS + ("fer2013new.csv", "notes", RUN_LOCK))


class FullDiskOs:
    """The ``os`` module as prepare sees it on a disk that fills up at the split ``folder``: the
    PNGs written there go to /dev/full, whose writes fail with the kernel's own ENOSPC."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __getattr__(self, name: str):
        return getattr(os, name)

    def open(self, path, flags, *args, **kwargs):
        if Path(path).parent.name == self.folder and Path(path).suffix == ".png":
            path = DEV_FULL
        return os.open(path, flags, *args, **kwargs)


def full_disk_at(monkeypatch, folder: str) -> None:
    if not DEV_FULL.exists():
        pytest.skip("needs /dev/full")
    monkeypatch.setattr(prepare, "os", FullDiskOs(folder))


def test_failure_while_writing_leaves_previous_output_intact(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "data"
    good = Pair(tmp_path / "a", make_rows(seed=1)).write()
    other = Pair(tmp_path / "b", make_rows(seed=2)).write()
    generate_training_data(base, good.fer, good.ferplus, progress=False)
    before = snapshot(base)
    full_disk_at(monkeypatch, "FER2013Valid")  # the first split is complete, the second has begun
    with pytest.raises(OSError) as error:
        generate_training_data(base, other.fer, other.ferplus, progress=False)
    # The disk's own error, naming the first image that could not be written.
    assert (error.value.errno, error.value.strerror) == (errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert Path(error.value.filename).parts[-2:] == ("FER2013Valid", other.rows[3]["name"])
    assert snapshot(base) == before
    assert sorted(p.name for p in base.iterdir()) == sorted(FOLDERS + (RUN_LOCK,))  # no staging folder left


def test_full_disk_is_one_line_naming_the_file_and_exit_1(tmp_path: Path, monkeypatch, capsys) -> None:
    base = tmp_path / "data"
    pair = Pair(tmp_path / "csv", make_rows()).write()
    full_disk_at(monkeypatch, "FER2013Test")
    assert run_script("generate_training_data", "-d", base, "-fer", pair.fer, "-ferplus", pair.ferplus, "--quiet") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"generate_training_data.py: error: {base}{os.sep}"), err
    assert err[0].endswith(f"{os.sep}FER2013Test{os.sep}{pair.rows[6]['name']}: {os.strerror(errno.ENOSPC)}"), err
    # Nothing half-written: no split, no staging folder; only the generator's own lock file.
    assert [p.name for p in base.iterdir()] == [RUN_LOCK]


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    base = tmp_path / "data"
    dead = base / f"{prepare.STAGING_PREFIX}999999999-abc"
    (dead / "FER2013Train").mkdir(parents=True)
    (dead / prepare.STAGING_MARKER).touch()
    (dead / "FER2013Train" / "fer0000001.png").write_bytes(b"half")
    # Killed between creating its staging folder and marking it: empty, with mkdtemp's name.
    (base / f"{prepare.STAGING_PREFIX}12345-a1b2c_d3").mkdir()
    pair = Pair(tmp_path / "csv", make_rows()).write()
    generate_training_data(base, pair.fer, pair.ferplus, progress=False)
    assert sorted(p.name for p in base.iterdir()) == sorted(FOLDERS + (RUN_LOCK,))


def test_a_users_folders_named_like_staging_folders_are_left_alone(tmp_path: Path) -> None:
    base = tmp_path / "data"
    mine = {
        f"{prepare.STAGING_PREFIX}notes": {"keep.txt": b"mine\n"},
        f"{prepare.STAGING_PREFIX}123-abcdefgh": {"FER2013Train/x.png": b"mine", "complete": b""},
        f"{prepare.STAGING_PREFIX}empty": {},
    }
    for name, files in mine.items():
        (base / name).mkdir(parents=True)
        for path, data in files.items():
            (base / name / path).parent.mkdir(parents=True, exist_ok=True)
            (base / name / path).write_bytes(data)
    pair = Pair(tmp_path / "csv", make_rows()).write()
    generate_training_data(base, pair.fer, pair.ferplus, progress=False)
    prepare.recover(base)
    for name, files in mine.items():
        assert snapshot(base / name) == files


def test_a_second_run_on_the_same_folder_fails_with_one_line_and_touches_nothing(tmp_path: Path, capsys) -> None:
    base = tmp_path / "data"
    first = Pair(tmp_path / "a", make_rows(seed=1)).write()
    second = Pair(tmp_path / "b", make_rows(seed=2)).write()
    generate_training_data(base, first.fer, first.ferplus, progress=False)
    before = snapshot(base)
    capsys.readouterr()
    with prepare._exclusive(base):  # as a run that is writing holds it
        argv = ["-d", base, "-fer", second.fer, "-ferplus", second.ferplus, "--quiet"]
        assert run_script("generate_training_data", *argv) == 2
    assert capsys.readouterr().err == (
        f"generate_training_data.py: error: {base}: another run is writing the split folders here; "
        "try again when it ends\n"
    )
    assert snapshot(base) == before
    assert sorted(p.name for p in base.iterdir()) == sorted(FOLDERS + (RUN_LOCK,))


def split_snapshots(base: Path) -> Dict[str, Dict[str, bytes]]:
    return {folder: snapshot(base / folder) for folder in FOLDERS}


# A generator run that SIGKILLs itself just before its k-th os.replace (k > 0) or just after its -k-th.
KILLED_RUN = r"""
import os, signal, sys
from ferplus import prepare
kill_at, calls, real_replace = int(sys.argv[1]), 0, os.replace
def replace(*args):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(*args)
    if calls == -kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
prepare.generate_training_data(*sys.argv[2:], progress=False)
"""


def killed_run(base: Path, pair: Pair, kill_at: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-c", KILLED_RUN, str(kill_at), str(base), str(pair.fer), str(pair.ferplus)]
    assert subprocess.run(argv, env=env).returncode == -signal.SIGKILL


# Swapping three split folders takes six renames: old one out, new one in, per split.
@pytest.mark.parametrize("kill_at", [1, 2, 3, 6, -6])
def test_a_kill_at_any_rename_never_loses_a_split(kill_at: int, tmp_path: Path) -> None:
    base = tmp_path / "data"
    old = Pair(tmp_path / "old", make_rows(seed=1)).write()
    new = Pair(tmp_path / "new", make_rows(seed=2)).write()
    generate_training_data(base, old.fer, old.ferplus, progress=False)
    generate_training_data(tmp_path / "clean", new.fer, new.ferplus, progress=False)
    olds, news = split_snapshots(base), split_snapshots(tmp_path / "clean")

    killed_run(base, new, kill_at)
    for folder, files in split_snapshots(base).items():  # whole, or not there until the next run
        assert files in ({}, olds[folder], news[folder]), folder
    # The next run first finishes that swap (the 6 - done renames left), then is killed too,
    # just before it moves a split of its own.
    done = kill_at - 1 if kill_at > 0 else -kill_at
    killed_run(base, old, 6 - done + 1)
    assert split_snapshots(base) == news
    # What the next run does first: that run's splits were complete, so it finishes their swap.
    prepare.recover(base)
    assert split_snapshots(base) == olds
    assert sorted(p.name for p in base.iterdir()) == sorted(FOLDERS + (RUN_LOCK,))


# Holds a pool whose two workers are busy for good, and prints their process ids.
BUSY_POOL = r"""
import multiprocessing, threading
from ferplus import prepare
with prepare._executor(2) as pool:
    tasks = [pool.submit(threading.Event().wait) for _ in range(2)]
    print(*(p.pid for p in multiprocessing.active_children()), flush=True)
    threading.Event().wait()
"""


def wait_for_exit(pid: int) -> None:
    """Block until the process ``pid`` (not a child of ours) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        select.select([fd], [], [])  # readable once the process has exited
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on pidfds (Linux)")
def test_pool_workers_exit_when_the_generator_is_killed() -> None:
    """Their tasks never end, so only the generator's death can end them (a regression hangs
    here until the suite's watchdog fails the run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    parent = subprocess.Popen([sys.executable, "-c", BUSY_POOL], env=env, stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
    finally:
        parent.kill()
        parent.wait()
    for pid in workers:
        wait_for_exit(pid)


# ---------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line naming the file (and line), nothing written


def _replace_field(lines: List[str], line: int, index: int, value: str) -> None:
    fields = lines[line - 1].split(",")
    fields[index] = value
    lines[line - 1] = ",".join(fields)


def _lines(edit: Callable[[Pair], object]) -> Callable[[Pair], None]:
    """An edit of the pair's CSV lines, written out afterwards."""
    return lambda pair: (edit(pair), pair.write()) and None


def _pixels(line: int, values: List[str]) -> Callable[[Pair], None]:
    return _lines(lambda p: _replace_field(p.fer_lines, line, 1, " ".join(values)))


def _fer_field(line: int, index: int, value: str) -> Callable[[Pair], None]:
    return _lines(lambda p: _replace_field(p.fer_lines, line, index, value))


def _ferplus_field(line: int, index: int, value: str) -> Callable[[Pair], None]:
    return _lines(lambda p: _replace_field(p.ferplus_lines, line, index, value))


ZEROS = ["0"] * 2304
BAD_INPUTS: Dict[str, tuple] = {
    # name: (edit of a good pair, the file the message names, text the message must hold)
    "fer missing": (lambda p: p.fer.unlink(), "fer", "fer2013.csv: no such file"),
    "ferplus missing": (lambda p: p.ferplus.unlink(), "ferplus", "fer2013new.csv: no such file"),
    "fer is binary": (lambda p: p.fer.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00"), "fer", "not a CSV text file"),
    "ferplus is binary": (lambda p: p.ferplus.write_bytes(b"\xff\xfe\x00\x81"), "ferplus", "not a CSV text file"),
    "fer is another csv": (lambda p: p.fer.write_text("a,b,c\n1,2,3\n"), "fer", "line 1: not a FER2013 CSV"),
    "ferplus is the fer file": (lambda p: p.ferplus.write_bytes(p.fer.read_bytes()), "ferplus",
                                "line 1: not a FER+ label CSV"),
    "fer is empty": (lambda p: p.fer.write_bytes(b""), "fer", "not a FER2013 CSV"),
    "ferplus is empty": (lambda p: p.ferplus.write_bytes(b""), "ferplus", "empty file"),
    "fer lacks pixels": (_lines(lambda p: p.fer_lines.__setitem__(0, "emotion,Usage")), "fer",
                         "line 1: missing column 'pixels'"),
    "fer lacks Usage": (_lines(lambda p: p.fer_lines.__setitem__(0, "emotion,pixels,Use")), "fer",
                        "line 1: missing column 'Usage'"),
    "ferplus lacks NF": (_lines(lambda p: p.ferplus_lines.__setitem__(0, FERPLUS_HEADER[:-3])), "ferplus",
                         "line 1: missing column 'NF'"),
    "ferplus lacks Image name": (_lines(lambda p: p.ferplus_lines.__setitem__(
        0, FERPLUS_HEADER.replace("Image name", "img"))), "ferplus", "line 1: missing column 'Image name'"),
    "ferplus has fewer rows": (_lines(lambda p: p.ferplus_lines.pop()), "ferplus", "has 8 rows but"),
    "fer has fewer rows": (_lines(lambda p: p.fer_lines.pop()), "ferplus", "has 9 rows but"),
    "2303 pixels": (_pixels(3, ZEROS[:-1]), "fer", "line 3: pixels holds 2303 values, expected 2304"),
    "2305 pixels": (_pixels(4, ZEROS + ["0"]), "fer", "line 4: pixels holds 2305 values, expected 2304"),
    "empty pixels": (_pixels(2, []), "fer", "line 2: pixels holds 0 values"),
    "pixel 256": (_pixels(5, ZEROS[:-1] + ["256"]), "fer", "line 5: pixel value 256 is outside 0..255"),
    "pixel -1": (_pixels(6, ["-1"] + ZEROS[1:]), "fer", "line 6: pixels must be integers in 0..255"),
    "pixel 1.5": (_pixels(7, ZEROS[:-1] + ["1.5"]), "fer", "line 7: pixels must be integers in 0..255"),
    "pixel word": (_pixels(10, ZEROS[:9] + ["abc"] + ZEROS[10:]), "fer",
                   "line 10: pixels must be integers in 0..255 separated by single spaces, found 'abc'"),
    "pixels double space": (_pixels(3, ZEROS[:-1] + ["", "0"]), "fer", "line 3: pixels"),
    "fer extra field": (_lines(lambda p: p.fer_lines.__setitem__(3, p.fer_lines[3] + ",x")), "fer",
                        "line 4: expected 3 comma-separated fields, found 4"),
    "fer blank line": (_lines(lambda p: p.fer_lines.insert(3, "")), "fer", "line 4: empty line"),
    "fer unknown Usage": (_fer_field(4, 2, "Train"), "fer", "line 4: unknown Usage 'Train'"),
    "ferplus unknown Usage": (_ferplus_field(9, 0, "Test"), "ferplus", "line 9: unknown Usage 'Test'"),
    "Usage disagrees": (_ferplus_field(4, 0, "PublicTest"), "ferplus",
                        "line 4: Usage 'PublicTest' disagrees with"),
    "negative vote": (_ferplus_field(6, 6, "-1"), "ferplus", "line 6: negative vote count -1 for 'anger'"),
    "fractional vote": (_ferplus_field(7, 11, "2.5"), "ferplus",
                        "line 7: vote count '2.5' for 'NF' is not a whole number"),
    "empty vote": (_ferplus_field(8, 2, ""), "ferplus", "line 8: vote count '' for 'neutral' is not a whole number"),
    "huge vote": (_ferplus_field(5, 3, "1" + "0" * 23), "ferplus",
                  f"line 5: vote count 1{'0' * 23} for 'happiness' is larger than {2**63 // 10}"),
    "ferplus short row": (_lines(lambda p: p.ferplus_lines.__setitem__(2, "Training,fer9.png,1,2")), "ferplus",
                          "line 3: expected 12 fields, found 4"),
    "unsafe image name": (_ferplus_field(2, 1, "../evil.png"), "ferplus",
                          "line 2: image name '../evil.png' is not a plain .png file name"),
    "both header-only": (_lines(lambda p: (p.fer_lines.__delitem__(slice(1, None)),
                                           p.ferplus_lines.__delitem__(slice(1, None)))), "ferplus",
                         "no rows after the header"),
    "ferplus rows reordered": (_lines(lambda p: p.ferplus_lines.insert(3, p.ferplus_lines.pop(1))), "ferplus",
                               "line 4: image name fer0000000.png comes after fer0000002.png"),
    "fer pixels twice": (_lines(lambda p: p.fer_lines.__setitem__(0, "emotion,pixels,Usage,pixels")), "fer",
                         "line 1: column 'pixels' appears more than once"),
    "ferplus NF twice": (_lines(lambda p: p.ferplus_lines.__setitem__(0, FERPLUS_HEADER + ",NF")), "ferplus",
                         "line 1: column 'NF' appears more than once"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case: str, tmp_path: Path, capsys) -> None:
    edit, named, expected = BAD_INPUTS[case]
    good = Pair(tmp_path / "good", make_rows(seed=5)).write()
    existing = tmp_path / "existing"
    generate_training_data(existing, good.fer, good.ferplus, progress=False)
    before = snapshot(existing)

    bad = Pair(tmp_path / "bad", make_rows()).write()
    edit(bad)
    capsys.readouterr()
    for base in (tmp_path / "fresh", existing):
        argv = ["-d", str(base), "-fer", str(bad.fer), "-ferplus", str(bad.ferplus), "--quiet"]
        assert run_script("generate_training_data", *argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        path = bad.fer if named == "fer" else bad.ferplus
        assert err.split(": error: ", 1)[1].startswith(f"{path}"), err
        assert expected in err, err
    assert not (tmp_path / "fresh").exists()
    assert snapshot(existing) == before


def test_script_exit_status_and_message_in_a_real_process(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "csv", make_rows())
    _replace_field(pair.ferplus_lines, 3, 4, "-2")
    pair.write()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "-d", str(tmp_path / "data"), "-fer", str(pair.fer),
         "-ferplus", str(pair.ferplus)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"generate_training_data.py: error: {pair.ferplus}: line 3: negative vote count -2 for 'surprise'\n"
    )
    assert not (tmp_path / "data").exists()


def test_ferplus_without_fer_is_refused(tmp_path: Path, capsys) -> None:
    argv = ["-d", str(tmp_path / "data"), "-ferplus", str(tmp_path / "x.csv")]
    assert run_script("generate_training_data", *argv) == 2
    assert "-ferplus needs -fer" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_script_without_fer_prepares_a_synthetic_sample(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "-d", str(tmp_path / "data"), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout and "not FER2013" in result.stdout
    assert result.stderr == ""  # --quiet: no progress bars
    base = tmp_path / "data"
    assert (base / "synthetic" / "fer2013.csv").is_file() and (base / "synthetic" / "fer2013new.csv").is_file()
    for folder in FOLDERS:
        labels = (base / folder / "label.csv").read_text().splitlines()
        assert len(labels) == len(list((base / folder).glob("*.png"))) > 0


def test_progress_bars_go_to_stderr_only_when_asked(tmp_path: Path, capsys) -> None:
    pair = Pair(tmp_path / "csv", make_rows()).write()
    generate_training_data(tmp_path / "a", pair.fer, pair.ferplus, progress=True)
    out = capsys.readouterr()
    assert out.out == "" and "writing PNGs" in out.err
    generate_training_data(tmp_path / "b", pair.fer, pair.ferplus, progress=False)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# The real FER2013/FER+ data (skipped when ../shared/ferplus is absent)


def test_real_sample_pixels_and_votes(shared_ferplus: Path, tmp_path: Path) -> None:
    fer = tmp_path / "sample" / "fer2013.csv"
    subprocess.run([sys.executable, str(shared_ferplus / "make_fer2013_csv.py"), str(fer), "--per-split", "200"],
                   check=True, capture_output=True)
    ferplus = fer.parent / "fer2013new.csv"
    summary = generate_training_data(tmp_path / "data", fer, ferplus, progress=False)

    with open(fer, newline="") as f:
        fer_rows = list(csv.reader(f))[1:]
    with open(ferplus, newline="") as f:
        label_rows = list(csv.reader(f))[1:]
    expected: Dict[str, List[str]] = {folder: [] for folder in FOLDERS}
    pixels: Dict[str, np.ndarray] = {}
    for (_, pixel_text, usage), (usage2, name, *votes) in zip(fer_rows, label_rows):
        assert usage == usage2
        if name and name not in pixels:
            folder = prepare.USAGE_FOLDERS[usage]
            expected[folder].append(f'{name},"(0, 0, 48, 48)",{",".join(votes)}')
            pixels[name] = np.array(pixel_text.split(), dtype=np.uint8).reshape(48, 48)
    for folder in FOLDERS:
        lines = (tmp_path / "data" / folder / "label.csv").read_text().splitlines()
        assert lines == expected[folder]
        assert summary[folder]["images"] == len(lines) == len(list((tmp_path / "data" / folder).glob("*.png")))
        for line in lines:
            name = line.split(",")[0]
            np.testing.assert_array_equal(read_png(tmp_path / "data" / folder / name), pixels[name])
    assert sum(s["rows"] for s in summary.values()) == 600


def _children(pid: int) -> List[int]:
    """Process ids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _importing_numpy(pid: int) -> bool:
    try:
        return "numpy" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the workers start")
def test_ctrl_c_while_the_parsing_workers_start_is_one_line_and_exit_130(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "csv", make_rows(per_split=30)).write()
    argv = [sys.executable, str(SCRIPT), "-d", str(tmp_path / "data"), "-fer", str(pair.fer),
            "-ferplus", str(pair.ferplus), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while proc.poll() is None and not any(_importing_numpy(pid) for pid in _children(proc.pid)):
        time.sleep(0.001)  # until a worker is starting up: importing what it parses with
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    _, err = proc.communicate()
    assert "Traceback" not in err, err
    assert proc.returncode == 130 and err == "generate_training_data.py: interrupted\n", err
    assert not (tmp_path / "data" / "FER2013Train").exists()
