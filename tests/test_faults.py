"""benchmarks/faults.py at a small size: killed runs and damaged inputs end cleanly, nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import TEST_TIME_LIMIT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kills_and_fuzzed_inputs_lose_nothing(tmp_path: Path) -> None:
    table = tmp_path / "faults.json"
    # A child counts as hung only past the suite's own watchdog limit: a slow machine is no hang.
    argv = ["--generator-kills", "1", "--fuzz", "6", "--train-kills", "1", "--label-fuzz", "6", "--seed", "0",
            "--hostile-models", "3", "--special-outputs", "3", "--odd-paths", "3", "--non-finite", "3",
            "--checkpoint-kills", "1", "--end-kills", "5", "--readers", "3", "--hostile-names", "3",
            "--timeout", str(TEST_TIME_LIMIT), "--json", str(table)]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), *argv],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    parts = {row["part"]: row for row in json.loads(table.read_text())}
    assert parts["generator kill"]["tried"] == 6 + 1 + 1  # before each of the six renames, after the last, one random instant
    assert parts["train kill"]["tried"] == parts["checkpoint write kill"]["tried"] == 1
    assert parts["run end kill"]["tried"] == 5  # SIGKILL before and after, SIGTERM, SIGINT, full disk at the first end write
    assert parts["fer csv fuzz"]["tried"] == parts["label.csv fuzz"]["tried"] == 6
    for part in ("hostile model", "special output", "odd path", "non-finite model", "readers/regen", "hostile names"):
        assert parts[part]["tried"] == 3
    for row in parts.values():
        assert row["handled"] == row["tried"] and row["leftovers"] == 0, row["notes"]
