"""Shared fixtures: the real FER+ data when it sits beside the checkout, and a generated synthetic set."""

from __future__ import annotations

import faulthandler
import os
import struct
import sys
import threading
import zlib
from pathlib import Path

import pytest
import torch

from ferplus.fer_format import SPLIT_FOLDERS
from scripts import SMALL_SPLIT_IMAGES, TEST_TIME_LIMIT

ROOT = Path(__file__).resolve().parents[1]
# Scripts the tests start in subprocesses import this checkout's package, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT / "src"), os.environ.get("PYTHONPATH"))))

#: Where the real FER+ labels and FER2013 pixels live for development and CI (never in the repo).
SHARED_FERPLUS = Path(os.environ.get("FERPLUS_SHARED", ROOT.parent / "shared" / "ferplus"))
#: Where the watchdog writes its dump.
WATCHDOG_STREAM: dict = {}


def pytest_configure(config: pytest.Config) -> None:
    # The terminal's stderr, kept before output capture replaces it, for the watchdog's dump.
    WATCHDOG_STREAM["file"] = os.fdopen(os.dup(sys.__stderr__.fileno()), "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem) -> None:
    """The watchdog: a test (fixtures included) running past TEST_TIME_LIMIT ends the run."""
    faulthandler.dump_traceback_later(TEST_TIME_LIMIT, exit=True, file=WATCHDOG_STREAM["file"])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Mark the tests that use torchvision ``torchvision``; skip tests marked ``cuda`` without a CUDA GPU."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "torchvision" in getattr(item, "fixturenames", ()):
            item.add_marker("torchvision")
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_ferplus() -> Path:
    """The folder with the real ``fer2013new.csv`` and FER2013 pixels; skips the test when absent,
    and fails it instead under ``FERPLUS_REQUIRE_SHARED=1`` (CI, where a skip would hide the tests)."""
    if not (SHARED_FERPLUS / "make_fer2013_csv.py").is_file():
        message = f"real FER+ data not found at {SHARED_FERPLUS}"
        if os.environ.get("FERPLUS_REQUIRE_SHARED"):
            pytest.fail(message + " (FERPLUS_REQUIRE_SHARED is set)")
        pytest.skip(message)
    return SHARED_FERPLUS


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base folder holding FER2013Train/Valid/Test prepared from the synthetic sample."""
    from ferplus.prepare import generate_training_data
    from ferplus.synthetic import write_sample

    root = tmp_path_factory.mktemp("synthetic")
    fer_csv, ferplus_csv = write_sample(root / "csv")
    base = root / "data"
    generate_training_data(base, fer_csv, ferplus_csv, progress=False)
    return base


@pytest.fixture(scope="session")
def small_data(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SMALL_SPLIT_IMAGES images of each synthetic split, for tests that check a run's
    bookkeeping (files, resume, errors) and need no learning."""
    from scripts import copy_split_head

    base = tmp_path_factory.mktemp("small")
    for folder in SPLIT_FOLDERS.values():
        copy_split_head(synthetic_data / folder, base / folder, SMALL_SPLIT_IMAGES)
    return base


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An untrained vgg13_tiny (seed 0) as a checkpoint ``best.pt`` and its ONNX export ``model.onnx``:
    ``{"checkpoint", "onnx", "model"}``. Shared: tests write their outputs elsewhere."""
    from ferplus.models import create_model
    from scripts import write_model_files

    torch.manual_seed(0)
    model = create_model("vgg13_tiny").eval()
    return {**write_model_files(tmp_path_factory.mktemp("untrained"), model), "model": model}


@pytest.fixture(scope="session")
def torchvision():
    """torchvision, a test-only extra; skips the test where it is absent or does not load beside
    the installed torch (PyPI's CUDA-linked torchvision beside a CPU torch fails with a RuntimeError)."""
    try:
        import torchvision
    except Exception as e:  # any failure to load means "not usable here"
        if os.environ.get("FERPLUS_REQUIRE_TORCHVISION"):  # CI's torchvision pass must not skip them
            raise
        pytest.skip(f"torchvision not usable: {type(e).__name__}: {e}")
    return torchvision


@pytest.fixture
def make_fifo():
    """Makes named pipes (``make_fifo(path)``) for tests that name one as an image file.

    A reader blocked on one is given end-of-file within a second, so a regression fails the
    test instead of hanging the test run.
    """
    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes need a POSIX system")
    made: list = []
    stop = threading.Event()

    def unblock() -> None:
        while not stop.wait(1.0):
            for path in made:
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # no reader waiting on it
                    pass

    watcher = threading.Thread(target=unblock, daemon=True)
    watcher.start()

    def make(path: Path) -> Path:
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    stop.set()
    watcher.join()


#: Sides of the huge image fixture: 900 million pixels, as a PNG of about 110 KB.
HUGE_SIDE = 30000


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 30000x30000 black PNG (1 bit per pixel), small on disk: a decompression bomb."""
    row = bytes(1 + HUGE_SIDE // 8)  # filter byte 0, then the row's bits
    packer = zlib.compressobj(9)
    rows_per_part = 1000
    parts = [packer.compress(row * rows_per_part) for _ in range(HUGE_SIDE // rows_per_part)]
    idat = b"".join(parts) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", HUGE_SIDE, HUGE_SIDE, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
