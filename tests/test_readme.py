"""The README's quick start runs as written, on a clean folder, and the model it trains learns."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The commands of the README's "Quick start" code block, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def promised_accuracy() -> tuple[float, float]:
    """The validation accuracy range the quick start promises ("ending at 45–70 % validation accuracy"), as fractions."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"(\d+)\s*[–-]\s*(\d+)\s*% validation accuracy", " ".join(section.split()))
    assert found, "the quick start states no validation accuracy range"
    low, high = (int(value) / 100 for value in found.groups())
    assert 0 < low < high <= 1
    return low, high


def test_quick_start_is_two_python_commands():
    commands = quick_start_commands()
    assert len(commands) == 2 and all(c.startswith("python ") for c in commands)


@pytest.mark.slow
def test_quick_start_runs_and_learns(tmp_path: Path):
    for command in quick_start_commands():
        argv = shlex.split(command)
        # `python X.py …` from the repository's root, with this interpreter, in a fresh folder.
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    run = tmp_path / "data" / "models" / "vgg13_tiny_probability"
    results = json.loads((run / "results.json").read_text())
    accuracies = [record["val_accuracy"] for record in results["history"]]
    # The README promises where the run ends (its last epoch), and so a run that learns.
    low, high = promised_accuracy()
    assert low <= accuracies[-1] <= high, (accuracies[-1], (low, high))
    assert max(accuracies) > accuracies[0]
    # The README's next examples use this run's checkpoint.
    readme = (ROOT / "README.md").read_text()
    assert "data/models/vgg13_tiny_probability/best.pt" in readme and (run / "best.pt").is_file()
