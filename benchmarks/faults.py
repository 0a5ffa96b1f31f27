#!/usr/bin/env python3
"""Fault injection: kill the generator and the trainer at random instants, and fuzz their CSV inputs.

    python benchmarks/faults.py                                    # small sizes, a few minutes
    python benchmarks/faults.py --generator-kills 20 --train-kills 20 --fuzz 500 --seed 1

Every program runs as a real process (``python <script>.py ...``), on small synthetic data in a
temporary folder that is deleted afterwards. Six parts:

``generator kill``
    ``generate_training_data.py`` over an existing output is killed with SIGKILL just before each
    of its renames (and just after the last), then at random instants; every other random trial
    parses with the process pool, and half of the random trials kill the next run too. Then the
    first step of any next run (:func:`ferplus.prepare.recover`) must leave every split folder
    byte-identical to the old or to the new output (all three from the same run, nothing else left),
    and a full rerun must give the clean run's bytes. No process of the killed run may outlive it.
``train kill``
    ``train.py --model vgg13_tiny`` is killed at a random instant or just before a random rename,
    then resumed with ``--resume`` (or restarted when no ``last.pt`` was written yet). Its
    ``results.json``, ``last.pt`` and ``best.pt`` must equal an uninterrupted run's, timings aside.
    It saves a mid-epoch checkpoint after every step (``--checkpoint-every``), so kills and
    resumes fall within epochs too.
``checkpoint write kill``
    ``train.py`` is killed with SIGKILL halfway through writing its k-th checkpoint file, which
    the background writer does while the next epoch trains; then resumed and compared as above.
``run end kill``
    The run's end (the final log lines, both plots, ``results.json``) is cut at each of its
    writes: SIGKILL just before and just after each rename, SIGTERM and SIGINT just before each,
    a full disk at each, then random instants. ``--resume`` must then complete the run folder:
    every file there, the results equal to an uninterrupted run's.
``fer csv fuzz``
    ``fer2013.csv`` or ``fer2013new.csv`` is damaged (byte flips, truncation, inserted or deleted
    fields, huge numbers, NUL bytes, BOMs, line ends, empty lines, ...) and the generator runs on
    it over an existing output. Exit 2 with one ``error:`` line must leave that output untouched;
    exit 0 must write split folders that the trainer's reader accepts.
``label.csv fuzz``
    A prepared split's ``label.csv`` is damaged the same way (plus names of missing files,
    folders, FIFOs, devices and duplicates), and ``train.py -e 0`` reads it.

Each case ends as one of: handled (one ``error:`` line with exit 2, or exit 0 with valid
results), traceback (exit 1 or a signal, or a traceback printed), hang (killed after
``--timeout`` seconds), other (more than one stderr line without a traceback, or whole split
folders from different runs) or data lost (a split folder that is not whole, an output the
trainer cannot read, or results that differ). ``leftovers`` counts cases that left a process or
a temporary file behind. ``--json`` writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ferplus.checkpoint import DIGEST_KEY
from ferplus.data import read_folder
from ferplus.errors import FerplusError
from ferplus.fer_format import LABEL_FILE, SPLIT_FOLDERS, USAGE_FOLDERS
from ferplus.prepare import generate_training_data, recover
from ferplus.synthetic import write_sample

ROOT = Path(__file__).resolve().parents[1]
#: The children import this checkout's package, installed or not.
SRC = os.pathsep.join(filter(None, (str(ROOT / "src"), os.environ.get("PYTHONPATH"))))

GENERATOR, TRAINER = ROOT / "generate_training_data.py", ROOT / "train.py"
OUTCOMES = ("handled", "traceback", "hang", "other", "data lost")
#: Set in every child's environment, so that its own children can be found after it was killed.
TRIAL_ENV = "FERPLUS_FAULT_TRIAL"
#: Rows per split of the synthetic CSV pairs: enough for the pool and for a few training steps.
PER_SPLIT = 64
TRAIN_ARGS = ("-m", "probability", "-e", "3", "-b", "32", "--model", "vgg13_tiny", "--device", "cpu", "--seed", "0",
              "--checkpoint-every", "1e-9")  # a mid-epoch checkpoint after every step
#: What a finished run folder holds (besides its lock).
RUN_FILES = {"args.json", "train.log", "results.json", "best.pt", "last.pt", "curves.png", "confusion_test.png"}
#: The renames of a run's end: train.log's final lines, curves.png, confusion_test.png, results.json.
END_RENAMES = 4
#: Address space a child may map (RLIMIT_AS): ample for these small runs, so that a runaway read
#: (a device named as an image, say) fails before it fills the machine.
CHILD_MEMORY = 6 << 30
#: Keys that hold wall times or the run's own location, so differ between equal runs (and a
#: checkpoint's digest, which covers them).
UNCOMPARED = {"seconds", "train_seconds", "wall_seconds", "session_wall_seconds", "train_images_per_second",
              "config", "output", "resume", DIGEST_KEY}

# The child: cap its memory, load a script without running it, arrange to die just before its
# k-th rename (k > 0) or just after its -k-th (k < 0), tell the parent it is ready (imports done),
# then run the script as its __main__ block would. Patches: "pool" (the generator parses with its
# process pool), "term" / "int" (send SIGTERM / SIGINT instead of SIGKILL), "enospc" (the k-th
# rename fails as on a full disk), "checkpoint" (die halfway through writing the k-th checkpoint
# file, not at a rename).
CHILD = r"""
import errno, importlib.util, os, pathlib, resource, signal, sys
script, kill_at, ready_fd, patch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
memory = int(os.environ["FERPLUS_FAULT_MEMORY"])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
spec = importlib.util.spec_from_file_location("script", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
if patch == "pool":
    import ferplus.prepare
    ferplus.prepare.POOL_MIN_BYTES = 0  # parse with the process pool even a small file
renames = writes = 0
sent = {"term": signal.SIGTERM, "int": signal.SIGINT}.get(patch, signal.SIGKILL)
def counting(real):
    def rename(*args, **kwargs):
        global renames
        renames += 1
        if renames == kill_at and patch == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])
        if renames == kill_at and patch != "checkpoint":
            os.kill(os.getpid(), sent)
        result = real(*args, **kwargs)
        if renames == -kill_at:
            os.kill(os.getpid(), sent)
        return result
    return rename
os.replace, os.rename = counting(os.replace), counting(os.rename)
if patch == "checkpoint":
    real_write_bytes = pathlib.Path.write_bytes
    def write_bytes(path, data):
        global writes
        if path.name.startswith((".last.pt.", ".best.pt.")):
            writes += 1
            if writes == kill_at:
                real_write_bytes(path, bytes(data)[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write_bytes(path, data)
    pathlib.Path.write_bytes = write_bytes
os.write(ready_fd, b"r")
os.close(ready_fd)
code = module.run(sys.argv[5:])
print(f"renames={renames}", file=sys.stdout)
print(f"writes={writes}", file=sys.stdout)
sys.exit(code)
"""


@dataclass
class Run:
    """How one child process ended."""

    code: Optional[int]  # None: killed by us (on purpose or as a hang)
    stdout: str
    stderr: str
    seconds: float  # from "ready" to the end
    hung: bool = False
    leftovers: int = 0  # processes of its own still alive after it ended

    @property
    def renames(self) -> int:
        return self._count("renames")

    @property
    def writes(self) -> int:
        """Checkpoint files written (counted under the ``checkpoint`` patch)."""
        return self._count("writes")

    def _count(self, name: str) -> int:
        lines = [line for line in self.stdout.splitlines() if line.startswith(f"{name}=")]
        return int(lines[-1].split("=")[1]) if lines else 0


def run_child(script: Path, argv: Sequence[object], timeout: float, *, kill_at: int = 0,
              kill_after: Optional[float] = None, patch: str = "", scratch: Path) -> Run:
    """Run ``script argv`` as a process; kill it at its ``kill_at``-th rename or ``kill_after`` s after start-up."""
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    ready_r, ready_w = os.pipe()
    out_path, err_path = scratch / "stdout", scratch / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(script), str(kill_at), str(ready_w), patch, *map(str, argv)],
            stdout=out, stderr=err, pass_fds=(ready_w,),
            env={**os.environ, TRIAL_ENV: marker, "FERPLUS_FAULT_MEMORY": str(CHILD_MEMORY), "PYTHONPATH": SRC},
        )
    os.close(ready_w)
    ready, _, _ = select.select([ready_r], [], [], timeout)  # also readable when the child died early
    started = time.perf_counter()
    os.close(ready_r)
    hung = False
    try:
        proc.wait(0 if not ready else kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        hung = kill_after is None or not ready
        proc.kill()
        proc.wait()
    seconds = time.perf_counter() - started
    code = None if proc.returncode == -signal.SIGKILL else proc.returncode
    return Run(code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), seconds, hung,
               _kill_leftovers(marker))


def _kill_leftovers(marker: str, grace: float = 5.0) -> int:
    """Processes whose environment holds ``marker``, still alive ``grace`` seconds on (then killed)."""
    deadline = time.monotonic() + grace
    while True:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if f"{TRIAL_ENV}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0") and \
                        (entry / "stat").read_text().split(") ")[1][0] != "Z":
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def outcome(run: Run, prog: str) -> str:
    """handled / traceback / hang / other, from a finished run's exit status and stderr."""
    if run.hung:
        return "hang"
    if "Traceback" in run.stderr or run.code not in (0, 2):
        return "traceback"
    if run.code == 2:
        lines = run.stderr.splitlines()
        return "handled" if len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") else "other"
    return "handled"


def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes); {} for a missing folder."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def split_snapshots(base: Path) -> Dict[str, Dict[str, bytes]]:
    return {folder: snapshot(base / folder) for folder in USAGE_FOLDERS.values()}


@dataclass
class Tally:
    """Outcome counts of one part, with a note per case that went wrong."""

    name: str
    counts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    leftovers: int = 0
    notes: List[str] = field(default_factory=list)
    events: Counter = field(default_factory=Counter)  # what happened along the way, not outcomes

    def add(self, result: str, case: str, leftovers: int = 0, detail: str = "") -> None:
        self.counts[result] += 1
        self.leftovers += leftovers > 0
        if result != "handled" or leftovers:
            self.notes.append(f"{self.name}: {case}: {result}{f', {leftovers} leftovers' if leftovers else ''}"
                              f"{': ' + detail if detail else ''}")

    @property
    def tried(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------------------------------------
# Killing the generator


def generator_kills(work: Path, trials: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Kill the generator at each rename and at ``trials`` random instants; check every split is whole."""
    tally = Tally("generator kill")
    old, new = (write_sample(work / name, per_split=PER_SPLIT, seed=seed) for name, seed in (("old", 1), ("new", 2)))
    references = {}
    for name, (fer, ferplus) in (("old", old), ("new", new)):
        generate_training_data(work / f"ref-{name}", fer, ferplus, progress=False)
        references[name] = split_snapshots(work / f"ref-{name}")
    scratch = work / "scratch"
    scratch.mkdir()

    def argv(base: Path, pair: Tuple[Path, Path]) -> list:
        return ["-d", base, "-fer", pair[0], "-ferplus", pair[1], "--quiet"]

    clean = run_child(GENERATOR, argv(_copy(work / "ref-old", work / "clean"), new), timeout, scratch=scratch)
    pooled = run_child(GENERATOR, argv(_copy(work / "ref-old", work / "pooled"), new), timeout, patch="pool",
                       scratch=scratch)
    # (case, kill at the k-th rename, kill after seconds, parse with the pool, kill the next run too)
    cases = [(f"before rename {k}", k, None, False, False) for k in range(1, clean.renames + 1)]
    cases.append((f"after rename {clean.renames} (the last)", -clean.renames, None, False, False))
    for i in range(trials):
        pool, again = i % 2 == 1, i % 4 >= 2
        seconds = float(rng.uniform(0, (pooled if pool else clean).seconds))
        case = f"{'pool run' if pool else 'run'} killed at {seconds:.3f} s{', next run killed too' if again else ''}"
        cases.append((case, 0, seconds, pool, again))

    for i, (case, kill_at, kill_after, pool, again) in enumerate(cases):
        base = _copy(work / "ref-old", work / f"trial{i}")
        kills = [run_child(GENERATOR, argv(base, new), timeout, kill_at=kill_at, kill_after=kill_after,
                           patch="pool" if pool else "", scratch=scratch)]
        if again:
            kills.append(run_child(GENERATOR, argv(base, old), timeout,
                                   kill_after=float(rng.uniform(0, clean.seconds)), scratch=scratch))
        leftovers = sum(k.leftovers for k in kills)
        broken = [k for k in kills if k.code is not None and outcome(k, GENERATOR.name) != "handled"]
        if broken:
            tally.add(outcome(broken[0], GENERATOR.name), case, leftovers, broken[0].stderr.strip()[-300:])
            continue
        if any(not (base / folder).exists() for folder in USAGE_FOLDERS.values()):
            tally.events["a split folder was absent until the next run finished the swap"] += 1
        result, detail = _check_generator_output(base, references, new)
        tally.add(result, case, leftovers, detail)
        shutil.rmtree(base)
    return tally


def _check_generator_output(base: Path, references: Dict[str, Dict], new: Tuple[Path, Path]) -> Tuple[str, str]:
    """After a kill: does the next run's first step leave whole splits, and does a full rerun give the clean bytes?"""
    now = split_snapshots(base)
    for folder, files in now.items():
        if files and files not in (references["old"][folder], references["new"][folder]):
            return "data lost", f"{folder} is neither the old nor the new split right after the kill"
    recover(base)
    now = split_snapshots(base)
    state = {folder: next((n for n, r in references.items() if r[folder] == files), "neither")
             for folder, files in now.items()}
    if "neither" in state.values():
        return "data lost", f"after recovery the splits are {state}"
    if len(set(state.values())) > 1:
        return "other", f"after recovery the splits come from different runs: {state}"
    extra = sorted(p.name for p in base.iterdir() if p.name not in USAGE_FOLDERS.values())
    if extra:
        return "other", f"left in the base folder after recovery: {extra}"
    generate_training_data(base, *new, progress=False)
    if split_snapshots(base) != references["new"] or len(list(base.iterdir())) != len(USAGE_FOLDERS):
        return "data lost", "a full rerun did not give the clean run's output"
    return "handled", ""


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------------------------------------
# Killing the trainer


def _trainer_reference(work: Path, timeout: float) -> Tuple[Path, Path, Run, Dict[str, Any]]:
    """The data, a scratch folder, an uninterrupted run (counting checkpoint writes) and its results."""
    data = work / "data"
    generate_training_data(data, *write_sample(work / "csv", per_split=PER_SPLIT, seed=3), progress=False)
    scratch = work / "scratch"
    scratch.mkdir()
    reference = run_child(TRAINER, ["-d", data, "--output", work / "reference", *TRAIN_ARGS], timeout,
                          patch="checkpoint", scratch=scratch)
    if reference.code != 0:
        raise SystemExit(f"the uninterrupted training run failed:\n{reference.stderr}")
    return data, scratch, reference, _train_results(work / "reference")


def _stopped_cleanly(run: Run) -> bool:
    """A run cut short as it should end: killed, or one line naming the stop or the full disk (or
    not cut at all: a random instant after its end)."""
    lines = run.stderr.strip().splitlines()
    if run.code in (None, 0, -signal.SIGTERM):  # SIGKILL, or SIGTERM outside the training loop
        return "Traceback" not in run.stderr
    prefix = {130: f"{TRAINER.name}: interrupted", 143: f"{TRAINER.name}: error: stopped by SIGTERM",
              1: f"{TRAINER.name}: error: "}.get(run.code)
    return prefix is not None and len(lines) == 1 and lines[0].startswith(prefix)


TrainCases = Callable[[Run], List[Tuple[str, Dict[str, Any]]]]


def _train_trials(tally: Tally, work: Path, cases: TrainCases, timeout: float) -> Tally:
    """Cut ``train.py`` short as each of ``cases(reference run)`` says (a name and ``run_child``
    keywords), resume it, and compare with the uninterrupted reference."""
    data, scratch, reference, expected = _trainer_reference(work, timeout)
    for i, (case, cut) in enumerate(cases(reference)):
        output = work / f"run{i}"
        killed = run_child(TRAINER, ["-d", data, "--output", output, *TRAIN_ARGS], timeout, scratch=scratch, **cut)
        resume = ["--resume"] if (output / "last.pt").exists() else []
        case += ", resumed" if resume else ", restarted"
        tally.events["stopped, then resumed" if resume else "stopped before last.pt, then restarted"] += 1
        again = run_child(TRAINER, ["-d", data, "--output", output, *TRAIN_ARGS, *resume], timeout, scratch=scratch)
        leftovers = killed.leftovers + again.leftovers + len(list(output.glob(".*.tmp")))
        if killed.hung or not _stopped_cleanly(killed):
            tally.add("hang" if killed.hung else "traceback", case, leftovers, killed.stderr.strip()[-300:])
            continue
        result = outcome(again, TRAINER.name)
        if result != "handled" or again.code != 0:
            tally.add(result if result != "handled" else "other", case, leftovers, again.stderr.strip()[-300:])
            continue
        missing = sorted(RUN_FILES - {p.name for p in output.iterdir()})
        differs = f"missing after the resume: {missing}" if missing else _differences(expected, _train_results(output))
        tally.add("data lost" if differs else "handled", case, leftovers, differs)
        shutil.rmtree(output)
    return tally


def train_kills(work: Path, trials: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Kill train.py at random instants or renames, resume, and compare with an uninterrupted run."""
    def cases(reference: Run) -> List[Tuple[str, Dict[str, Any]]]:
        chosen = []
        for i in range(trials):
            if i % 2:
                kill_at = int(rng.integers(1, reference.renames + 1))
                chosen.append((f"before rename {kill_at}", {"kill_at": kill_at}))
            else:
                kill_after = float(rng.uniform(0, reference.seconds))
                chosen.append((f"random instant {kill_after:.2f} s", {"kill_after": kill_after}))
        return chosen

    return _train_trials(Tally("train kill"), work, cases, timeout) if trials else Tally("train kill")


def checkpoint_write_kills(work: Path, trials: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Kill train.py halfway through writing a checkpoint file (the background writer's work)."""
    def cases(reference: Run) -> List[Tuple[str, Dict[str, Any]]]:
        writes = rng.choice(np.arange(1, reference.writes + 1), size=min(trials, reference.writes), replace=False)
        return [(f"halfway through checkpoint write {k} of {reference.writes}", {"kill_at": int(k), "patch": "checkpoint"})
                for k in sorted(writes)]

    return _train_trials(Tally("checkpoint write kill"), work, cases, timeout) if trials else Tally("checkpoint write kill")


def run_end_kills(work: Path, trials: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Cut a run short at every write of its end (results, plots), resume, and check the folder is complete."""
    def cases(reference: Run) -> List[Tuple[str, Dict[str, Any]]]:
        first = reference.renames - END_RENAMES + 1
        chosen = []
        for k in range(first, reference.renames + 1):
            end = f"end rename {k - first + 1} of {END_RENAMES}"
            chosen += [
                (f"SIGKILL before {end}", {"kill_at": k}),
                (f"SIGKILL after {end}", {"kill_at": -k}),
                (f"SIGTERM before {end}", {"kill_at": k, "patch": "term"}),
                (f"SIGINT before {end}", {"kill_at": k, "patch": "int"}),
                (f"full disk at {end}", {"kill_at": k, "patch": "enospc"}),
            ]
        while len(chosen) < trials:  # then random instants in the run's last quarter
            kill_after = float(rng.uniform(0.75, 1.0) * reference.seconds)
            chosen.append((f"SIGKILL at {kill_after:.2f} s", {"kill_after": kill_after}))
        return chosen[:trials]

    return _train_trials(Tally("run end kill"), work, cases, timeout) if trials else Tally("run end kill")


def _train_results(run_folder: Path) -> Dict[str, Any]:
    """results.json and both checkpoints of a run, without timings and the run's own location."""
    import torch

    results = {"results.json": json.loads((run_folder / "results.json").read_text()),
               "train.log": [" | ".join(part for i, part in enumerate(line.split(" | ")) if i != 1)
                             for line in (run_folder / "train.log").read_text().splitlines()]}
    for name in ("last.pt", "best.pt"):
        results[name] = torch.load(run_folder / name, map_location="cpu", weights_only=True)
    return results


def _differences(expected: Any, found: Any, where: str = "") -> str:
    """Where ``found`` differs from ``expected`` (tensors exactly), ignoring :data:`UNCOMPARED` keys; "" if nowhere."""
    import torch

    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found), key=str):
            if key in UNCOMPARED:
                continue
            if key not in expected or key not in found:
                return f"{where}/{key}: only in one run"
            differs = _differences(expected[key], found[key], f"{where}/{key}")
            if differs:
                return differs
        return ""
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        if len(expected) != len(found):
            return f"{where}: {len(expected)} entries, found {len(found)}"
        return next((d for d in (_differences(e, f, f"{where}[{i}]") for i, (e, f) in
                                 enumerate(zip(expected, found))) if d), "")
    if isinstance(expected, torch.Tensor) and isinstance(found, torch.Tensor):
        same = expected.shape == found.shape and expected.dtype == found.dtype and torch.equal(expected, found)
        return "" if same else f"{where}: tensors differ"
    return "" if expected == found else f"{where}: {expected!r} != {found!r}"


# ---------------------------------------------------------------------------------------------
# Fuzzing


def _lines(data: bytes) -> List[bytes]:
    return data.split(b"\n")


def _at_line(data: bytes, rng: np.random.Generator, edit: Callable[[bytes], bytes], skip_header: bool = True) -> bytes:
    lines = _lines(data)
    i = int(rng.integers(1 if skip_header and len(lines) > 1 else 0, len(lines)))
    lines[i] = edit(lines[i])
    return b"\n".join(lines)


def _at_byte(data: bytes, rng: np.random.Generator, insert: bytes) -> bytes:
    i = int(rng.integers(0, len(data) + 1))
    return data[:i] + insert + data[i:]


def _field_edit(rng: np.random.Generator, edit: Callable[[List[bytes], int], None]) -> Callable[[bytes], bytes]:
    def apply(line: bytes) -> bytes:
        fields = line.split(b",")
        edit(fields, int(rng.integers(0, len(fields))))
        return b",".join(fields)
    return apply


def _number_edit(rng: np.random.Generator, new: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """Replace one number of a line (a pixel or a vote) with ``new(number)``."""
    def apply(line: bytes) -> bytes:
        tokens = line.replace(b",", b" , ").split(b" ")
        digits = [i for i, t in enumerate(tokens) if t.strip(b'"\r').isdigit()]
        if digits:
            i = digits[int(rng.integers(0, len(digits)))]
            tokens[i] = new(tokens[i])
        return b" ".join(tokens).replace(b" , ", b",")
    return apply


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for i in rng.integers(0, max(len(buf), 1), size=int(rng.integers(1, 9))):
        if buf:
            buf[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)


def _delete_span(data: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(0, len(data) + 1))
    return data[:i] + data[i + int(rng.integers(1, 64)):]


def _swap_lines(data: bytes, rng: np.random.Generator) -> bytes:
    lines = _lines(data)
    i, j = rng.integers(0, len(lines), size=2)
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _header_edit(data: bytes, rng: np.random.Generator) -> bytes:
    lines = _lines(data)
    fields = lines[0].split(b",")
    i = int(rng.integers(0, len(fields)))
    fields[i] = (fields[i][::-1], b"", fields[i].upper(), fields[i] + b" x")[int(rng.integers(0, 4))]
    lines[0] = b",".join(fields)
    return b"\n".join(lines)


#: Damage that any CSV file can take: name -> (bytes, rng) -> bytes.
CSV_MUTATIONS: Dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "bit flips": _flip,
    "truncated": lambda d, r: d[: int(r.integers(0, len(d) + 1))],
    "bytes deleted": _delete_span,
    "field inserted": lambda d, r: _at_line(d, r, _field_edit(r, lambda f, i: f.insert(i, b"7"))),
    "field deleted": lambda d, r: _at_line(d, r, _field_edit(r, lambda f, i: f.pop(i))),
    "field emptied": lambda d, r: _at_line(d, r, _field_edit(r, lambda f, i: f.__setitem__(i, b""))),
    "huge number": lambda d, r: _at_line(d, r, _number_edit(r, lambda t: b"1" + b"0" * int(r.integers(3, 40)))),
    "negative number": lambda d, r: _at_line(d, r, _number_edit(r, lambda t: b"-" + t)),
    "fraction": lambda d, r: _at_line(d, r, _number_edit(r, lambda t: t + b".5")),
    "unicode digit": lambda d, r: _at_line(d, r, _number_edit(r, lambda t: "\u0663".encode())),
    "NUL byte": lambda d, r: _at_byte(d, r, b"\0"),
    "non-UTF-8 bytes": lambda d, r: _at_byte(d, r, b"\xff\xfe\xc3"),
    "quote": lambda d, r: _at_byte(d, r, b'"'),
    "BOM": lambda d, r: b"\xef\xbb\xbf" + d,
    "BOM inside": lambda d, r: _at_byte(d, r, b"\xef\xbb\xbf"),
    "UTF-16": lambda d, r: d.decode("latin-1").encode("utf-16"),
    "CRLF": lambda d, r: d.replace(b"\n", b"\r\n"),
    "CR only": lambda d, r: d.replace(b"\n", b"\r"),
    "no final newline": lambda d, r: d.rstrip(b"\n"),
    "empty line": lambda d, r: _at_line(d, r, lambda line: line + b"\n"),
    "trailing empty lines": lambda d, r: d + b"\n" * int(r.integers(1, 4)),
    "whitespace line": lambda d, r: _at_line(d, r, lambda line: line + b"\n \t "),
    "line duplicated": lambda d, r: _at_line(d, r, lambda line: line + b"\n" + line),
    "line deleted": lambda d, r: _at_line(d, r, lambda line: b"", skip_header=False).replace(b"\n\n", b"\n", 1),
    "lines swapped": _swap_lines,
    "spaces around a field": lambda d, r: _at_line(d, r, _field_edit(r, lambda f, i: f.__setitem__(i, b" " + f[i]))),
    "double space": lambda d, r: _at_line(d, r, lambda line: line.replace(b" ", b"  ", 1)),
    "tab separator": lambda d, r: _at_line(d, r, lambda line: line.replace(b",", b"\t", 1)),
    "header damaged": _header_edit,
    "only the header": lambda d, r: _lines(d)[0] + b"\n",
    "empty file": lambda d, r: b"",
    "long line": lambda d, r: _at_line(d, r, lambda line: line + b"9" * (1 << 20)),
}


def _label_name(name: Callable[[Path], str]) -> Callable[[bytes, np.random.Generator, Path], bytes]:
    """A label.csv damage: one line's image name replaced by ``name(folder)``."""
    def apply(data: bytes, rng: np.random.Generator, folder: Path) -> bytes:
        lines = [line for line in _lines(data) if line]
        i = int(rng.integers(0, len(lines)))
        lines[i] = name(folder).encode() + lines[i][lines[i].index(b","):]
        return b"\n".join(lines) + b"\n"
    return apply


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.png")
    return "pipe.png"


def _subfolder(folder: Path) -> str:
    (folder / "sub.png").mkdir()
    return "sub.png"


#: Damage only a label.csv can take: names that are not regular image files of the folder.
LABEL_MUTATIONS: Dict[str, Callable[[bytes, np.random.Generator, Path], bytes]] = {
    "missing image": _label_name(lambda folder: "nothing.png"),
    "FIFO as image": _label_name(_fifo),
    "folder as image": _label_name(_subfolder),
    "device as image": _label_name(lambda folder: "/dev/zero"),
    "parent path": _label_name(lambda folder: "../label.csv"),
    "NUL in name": _label_name(lambda folder: "fer\0.png"),
    "duplicate name": lambda data, rng, folder: data + _lines(data)[int(rng.integers(0, len(_lines(data)) - 1))]
    + b"\n",
}


def fer_csv_fuzz(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Run the generator on damaged copies of fer2013.csv or fer2013new.csv, over an existing output."""
    tally = Tally("fer csv fuzz")
    fer, ferplus = write_sample(work / "csv", per_split=PER_SPLIT // 4, seed=4)
    existing = work / "existing"
    generate_training_data(existing, fer, ferplus, progress=False)
    before = split_snapshots(existing)
    scratch = work / "scratch"
    scratch.mkdir()
    names = list(CSV_MUTATIONS)
    for i in range(cases):
        damaged = fer if i % 2 == 0 else ferplus
        mutation = names[int(rng.integers(0, len(names)))]
        case_dir = work / f"case{i}"
        case_dir.mkdir()
        paths = {p: case_dir / p.name for p in (fer, ferplus)}
        for source, target in paths.items():
            shutil.copyfile(source, target)
        paths[damaged].write_bytes(CSV_MUTATIONS[mutation](damaged.read_bytes(), rng))
        base = _copy(existing, case_dir / "data")
        run = run_child(GENERATOR, ["-d", base, "-fer", paths[fer], "-ferplus", paths[ferplus], "--quiet"], timeout,
                        scratch=scratch)
        case = f"{damaged.name}: {mutation}"
        result, detail = outcome(run, GENERATOR.name), run.stderr.strip()[-300:]
        if result == "handled" and run.code == 2 and split_snapshots(base) != before:
            result, detail = "data lost", "the existing output changed although the run failed"
        elif result == "handled" and run.code == 0:
            detail = _unreadable_output(base)
            result = "data lost" if detail else result
        if result == "handled":
            tally.events["exit 0: still a valid pair" if run.code == 0 else "exit 2 with one line"] += 1
        tally.add(result, case, run.leftovers, detail)
        if result == "handled":
            shutil.rmtree(case_dir)
    return tally


def _unreadable_output(base: Path) -> str:
    """Why the trainer could not use a generator's output ("" when it can)."""
    extra = sorted(p.name for p in base.iterdir() if p.name not in USAGE_FOLDERS.values())
    if extra:
        return f"left in the base folder: {extra}"
    for folder in SPLIT_FOLDERS.values():
        try:
            read_folder(base / folder)
        except FerplusError as e:
            return f"the output does not read back: {e}"
        except Exception as e:  # a reader crash on the output counts against the generator too
            return f"the output does not read back: {type(e).__name__}: {e}"
    return ""


def label_csv_fuzz(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Run ``train.py -e 0`` on a prepared data folder with one damaged label.csv."""
    tally = Tally("label.csv fuzz")
    if cases == 0:
        return tally
    data = work / "data"
    generate_training_data(data, *write_sample(work / "csv", per_split=PER_SPLIT // 4, seed=5), progress=False)
    scratch = work / "scratch"
    scratch.mkdir()
    mutations = {**{name: (lambda f: lambda d, r, folder: f(d, r))(f) for name, f in CSV_MUTATIONS.items()},
                 **LABEL_MUTATIONS}
    names = list(mutations)
    for i in range(cases):
        mutation = names[int(rng.integers(0, len(names)))]
        case_data = _copy(data, work / f"case{i}")
        folder = case_data / list(SPLIT_FOLDERS.values())[i % len(SPLIT_FOLDERS)]
        label = folder / LABEL_FILE
        label.write_bytes(mutations[mutation](label.read_bytes(), rng, folder))
        run = run_child(TRAINER, ["-d", case_data, "-e", "0", "--model", "vgg13_tiny", "--device", "cpu"], timeout,
                        scratch=scratch)
        result = outcome(run, TRAINER.name)
        if result == "handled":
            tally.events["exit 0: still a valid label.csv" if run.code == 0 else "exit 2 with one line"] += 1
        tally.add(result, f"{folder.name}/{LABEL_FILE}: {mutation}", run.leftovers, run.stderr.strip()[-300:])
        shutil.rmtree(case_data)
    return tally


# ---------------------------------------------------------------------------------------------


def format_table(tallies: Sequence[Tally]) -> str:
    """The figures of every part, one row each."""
    header = f"{'part':<22}{'tried':>7}" + "".join(f"{name:>11}" for name in OUTCOMES) + f"{'leftovers':>11}"
    rows = [header]
    for t in tallies:
        rows.append(f"{t.name:<22}{t.tried:>7}" + "".join(f"{t.counts[n]:>11}" for n in OUTCOMES)
                    + f"{t.leftovers:>11}")
    return "\n".join(rows)


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of the fault injection."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator-kills", type=int, default=6,
                        help="random-instant kills of the generator (the kills at each rename come on top)")
    parser.add_argument("--train-kills", type=int, default=2, help="kills of train.py, each followed by --resume")
    parser.add_argument("--checkpoint-kills", type=int, default=6,
                        help="kills of train.py halfway through writing a checkpoint, each followed by --resume")
    parser.add_argument("--end-kills", type=int, default=20,
                        help="cuts of a run's end: the first 20 at each of its writes, the rest at random instants")
    parser.add_argument("--fuzz", type=int, default=40, help="damaged fer2013.csv / fer2013new.csv inputs")
    parser.add_argument("--label-fuzz", type=int, default=6, help="damaged label.csv inputs for train.py -e 0")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds after which a run counts as hung")
    parser.add_argument("--json", type=Path, help="also write the table and the notes as JSON here")
    return parser


def main(args: argparse.Namespace) -> List[Tally]:
    """Run the six parts and print the table, then a note per case that was not handled."""
    rng = np.random.default_rng(args.seed)
    parts = (
        (generator_kills, args.generator_kills), (train_kills, args.train_kills),
        (checkpoint_write_kills, args.checkpoint_kills), (run_end_kills, args.end_kills),
        (fer_csv_fuzz, args.fuzz), (label_csv_fuzz, args.label_fuzz),
    )
    tallies = []
    with tempfile.TemporaryDirectory(prefix="ferplus-faults-") as tmp:
        for part, count in parts:
            work = Path(tmp) / part.__name__
            work.mkdir()
            started = time.perf_counter()
            tallies.append(part(work, count, rng, args.timeout))
            print(f"{tallies[-1].name}: {tallies[-1].tried} cases in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr, flush=True)
    print(format_table(tallies))
    for tally in tallies:
        for event, count in sorted(tally.events.items()):
            print(f"{tally.name}: {count} x {event}")
    for tally in tallies:
        for note in tally.notes:
            print(note)
    if args.json:
        args.json.write_text(json.dumps([{"part": t.name, "tried": t.tried, **t.counts, "leftovers": t.leftovers,
                                          "events": t.events, "notes": t.notes} for t in tallies], indent=2))
    return tallies


if __name__ == "__main__":
    main(get_args_parser().parse_args())
