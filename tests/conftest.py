"""Shared fixtures: the real FER+ data when it sits beside the checkout, and a generated synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: Where the real FER+ labels and FER2013 pixels live for development and CI (never in the repo).
SHARED_FERPLUS = Path(os.environ.get("FERPLUS_SHARED", ROOT.parent / "shared" / "ferplus"))


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
    """The folder with the real ``fer2013new.csv`` and FER2013 pixels; skips the test when absent."""
    if not (SHARED_FERPLUS / "make_fer2013_csv.py").is_file():
        pytest.skip(f"real FER+ data not found at {SHARED_FERPLUS}")
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
