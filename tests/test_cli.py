"""The command lines: --help shows defaults without importing torch, Ctrl-C while torch loads is
exit 130 in one line, and every tool takes both spellings of the validation split."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferplus.datasets import FERPlus
from scripts import ROOT, SCRIPT_MODULES, run_script

# Runs a top-level script as `python SCRIPT.py ARGV…` would, then reports whether torch was imported.
TORCH_PROBE = """
import runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
sys.exit(code)
"""


def env_with_path(*folders: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*folders, ROOT / "src")))}


@pytest.mark.parametrize("script", sorted(SCRIPT_MODULES))
def test_help_shows_defaults_without_importing_torch(script):
    done = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, str(ROOT / f"{script}.py"), "--help"],
        capture_output=True, text=True, env=env_with_path(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "torch not imported"
    assert "default:" in " ".join(done.stdout.split())  # argparse wraps lines; the defaults are shown


def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130(tmp_path):
    # A torch that is interrupted while it imports: what Ctrl-C during the seconds torch loads does.
    stub = tmp_path / "stub"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-d", str(tmp_path), "-e", "1", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, env=env_with_path(stub), timeout=120,
    )
    assert (done.returncode, done.stderr) == (130, "train.py: interrupted\n")
    assert not (tmp_path / "run").exists()


def test_the_dataset_reads_valid_as_val(synthetic_data):
    assert FERPlus(synthetic_data, split="valid").names == FERPlus(synthetic_data, split="val").names


def test_export_labels_reads_valid_as_val(synthetic_data, tmp_path, capsys):
    assert run_script("export_labels", "-d", synthetic_data, "--csv", tmp_path, "--splits", "valid") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ferplus_val.csv"]
    assert (tmp_path / "ferplus_val.csv").read_text().splitlines()[1].split(",")[1] == "val"
