#!/usr/bin/env python3
"""Fault injection: kill the generator and the trainer at random instants, and fuzz their CSV inputs.

    python benchmarks/faults.py                                    # small sizes, a few minutes
    python benchmarks/faults.py --generator-kills 20 --train-kills 20 --fuzz 500 --seed 1

Every program runs as a real process (``python <script>.py ...``), on small synthetic data in a
temporary folder that is deleted afterwards. The parts:

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
``readers/regen``
    While another process regenerates the data folder from two CSV pairs in turn, ``train.py
    -e 0`` and a library reader (``read_data_folder``) read it: each read must print exactly what
    it prints for one of the two generations read alone (all three splits of one generation).
``hostile names``
    A name that is not one plain file name of its split (``../``, absolute paths, ``./x.png``,
    backslashes, NUL, ...) goes into a ``label.csv``; ``train.py -e 0`` or ``export_labels.py
    --imagefolder`` must refuse it in one line and write nothing.
``hostile model``
    ``evaluate.py``, ``predict.py`` and ``export_onnx.py`` on model files that pass a first look:
    checkpoints with a right digest but odd field types, ONNX files with a ``Loop`` of 2**40
    iterations, a fixed batch size, other tensor names or metadata such as ``"²"``.
``special output``
    ``export_onnx.py``, ``evaluate.py`` and ``predict.py --annotate`` writing where a FIFO, a
    socket, a folder or a device node is (as root), or onto their own input (a hard or a symbolic
    link to it). The file there must stay what it was, and the input unchanged.
``odd path``
    Every tool on paths holding a byte that is not UTF-8 and a character ASCII lacks, under
    ``PYTHONIOENCODING=ascii`` and ``utf-8``: runs on such paths that exist must succeed, missing
    ones must be one ``error:`` line.
``non-finite model``
    The three model tools on checkpoints with NaN weights or scores that overflow to infinity, and
    ONNX files whose scores are NaN or infinite (for some crops only, too). Exit 0 with a
    non-finite figure printed or written counts as ``other``.

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
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ferplus.checkpoint import DIGEST_KEY, FORMAT, content_digest
from ferplus.data import read_folder
from ferplus.errors import FerplusError
from ferplus.fer_format import CROP_SIZE, LABEL_FILE, NUM_EMOTIONS, SPLIT_FOLDERS, USAGE_FOLDERS
from ferplus.models import create_model
from ferplus.pack import PACK_FILE
from ferplus.prepare import RUN_LOCK, generate_training_data, recover
from ferplus.scorers import INPUT_NAME, OUTPUT_NAME
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
              kill_after: Optional[float] = None, patch: str = "", scratch: Path,
              env: Optional[Dict[str, str]] = None) -> Run:
    """Run ``script argv`` as a process (``env`` added to its environment); kill it at its
    ``kill_at``-th rename or ``kill_after`` s after start-up."""
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    ready_r, ready_w = os.pipe()
    out_path, err_path = scratch / "stdout", scratch / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(script), str(kill_at), str(ready_w), patch, *map(str, argv)],
            stdout=out, stderr=err, pass_fds=(ready_w,),
            env={**os.environ, **(env or {}), TRIAL_ENV: marker, "FERPLUS_FAULT_MEMORY": str(CHILD_MEMORY),
                 "PYTHONPATH": SRC},
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
    """Every file under ``folder`` (relative path → bytes); {} for a missing folder.

    A split's pack is left out: it records its PNGs' mtimes and inodes, so equal runs differ
    there (:func:`_pack_problem` checks it is whole instead).
    """
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != PACK_FILE}


def _pack_problem(base: Path) -> str:
    """Why a split's pack does not hold exactly its PNGs and label.csv ("" when every one does)."""
    for folder in USAGE_FOLDERS.values():
        if not (base / folder / PACK_FILE).is_file():
            return f"{folder} has no {PACK_FILE}"
        try:
            with np.load(base / folder / PACK_FILE) as pack:
                names, images, votes = pack["names"].tolist(), pack["images"], pack["votes"]
        except Exception as e:
            return f"{folder}/{PACK_FILE} does not load: {type(e).__name__}: {e}"
        copy = base / f"{folder}-nopack"
        shutil.copytree(base / folder, copy, ignore=shutil.ignore_patterns(PACK_FILE))
        decoded = read_folder(copy)
        shutil.rmtree(copy)
        if decoded.names != names or not np.array_equal(decoded.images, images) or \
                not np.array_equal(decoded.votes, votes):
            return f"{folder}/{PACK_FILE} differs from the PNGs and label.csv"
    return ""


#: What a generator run leaves in the base folder besides the split folders.
GENERATOR_FILES = (RUN_LOCK,)


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
    extra = sorted(p.name for p in base.iterdir() if p.name not in (*USAGE_FOLDERS.values(), *GENERATOR_FILES))
    if extra:
        return "other", f"left in the base folder after recovery: {extra}"
    generate_training_data(base, *new, progress=False)
    if split_snapshots(base) != references["new"] or \
            len(list(base.iterdir())) != len(USAGE_FOLDERS) + len(GENERATOR_FILES):
        return "data lost", "a full rerun did not give the clean run's output"
    problem = _pack_problem(base)
    return ("data lost", problem) if problem else ("handled", "")


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
    extra = sorted(p.name for p in base.iterdir() if p.name not in (*USAGE_FOLDERS.values(), *GENERATOR_FILES))
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


#: train.py reading a data folder and nothing more.
READ_ONLY_TRAIN = ("-e", "0", "--model", "vgg13_tiny", "--device", "cpu")


def _prepared(work: Path, seed: int) -> Tuple[Path, Path]:
    """A small prepared data folder ``work/data`` and an empty ``work/scratch`` for run_child."""
    data = work / "data"
    generate_training_data(data, *write_sample(work / "csv", per_split=PER_SPLIT // 4, seed=seed), progress=False)
    (work / "scratch").mkdir()
    return data, work / "scratch"


def label_csv_fuzz(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Run ``train.py -e 0`` on a prepared data folder with one damaged label.csv."""
    tally = Tally("label.csv fuzz")
    if cases == 0:
        return tally
    data, scratch = _prepared(work, seed=5)
    mutations = {**{name: (lambda f: lambda d, r, folder: f(d, r))(f) for name, f in CSV_MUTATIONS.items()},
                 **LABEL_MUTATIONS}
    names = list(mutations)
    for i in range(cases):
        mutation = names[int(rng.integers(0, len(names)))]
        case_data = _copy(data, work / f"case{i}")
        folder = case_data / list(SPLIT_FOLDERS.values())[i % len(SPLIT_FOLDERS)]
        label = folder / LABEL_FILE
        label.write_bytes(mutations[mutation](label.read_bytes(), rng, folder))
        run = run_child(TRAINER, ["-d", case_data, *READ_ONLY_TRAIN], timeout, scratch=scratch)
        result = outcome(run, TRAINER.name)
        if result == "handled":
            tally.events["exit 0: still a valid label.csv" if run.code == 0 else "exit 2 with one line"] += 1
        tally.add(result, f"{folder.name}/{LABEL_FILE}: {mutation}", run.leftovers, run.stderr.strip()[-300:])
        shutil.rmtree(case_data)
    return tally


# ---------------------------------------------------------------------------------------------
# Readers while the data folder is regenerated

#: Regenerates the data folder from two CSV pairs in turn until it is killed.
REGENERATION_LOOP = r"""
import sys
from ferplus.prepare import generate_training_data
base, pairs = sys.argv[1], [sys.argv[2:4], sys.argv[4:6]]
i = 0
while True:
    generate_training_data(base, *pairs[i % 2], progress=False)
    i += 1
"""

#: A library reader (what train.py, export_labels and the Dataset call): one digest per split.
READER = r"""
import argparse, hashlib
from ferplus.data import read_data_folder
from ferplus.errors import run_cli

def main(args):
    for name, d in read_data_folder(args.base).items():
        digest = hashlib.sha256(d.images.tobytes() + d.votes.tobytes() + "\n".join(d.names).encode()).hexdigest()
        print(name, digest)

def run(argv):
    parser = argparse.ArgumentParser(prog="reader.py")
    parser.add_argument("base")
    return run_cli(main, parser, argv)
"""


def readers_during_regeneration(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Read a data folder (``train.py -e 0`` and the library reader in turn) while another process
    regenerates it from two CSV pairs in turn: every read must see all three splits of one generation."""
    tally = Tally("readers/regen")
    if cases == 0:
        return tally
    pairs = [write_sample(work / name, per_split=PER_SPLIT, seed=seed) for name, seed in (("a", 6), ("b", 7))]
    reader = work / "reader.py"
    reader.write_text(READER)
    scratch = work / "scratch"
    scratch.mkdir()
    trainer_argv = list(READ_ONLY_TRAIN)
    expected: Dict[str, List[str]] = {"train.py": [], "reader.py": []}
    for i, pair in enumerate(pairs):  # what each tool prints for each generation, read alone
        generate_training_data(work / f"ref{i}", *pair, progress=False)
        expected["train.py"].append(run_child(TRAINER, ["-d", work / f"ref{i}", *trainer_argv], timeout,
                                              scratch=scratch).stdout)
        expected["reader.py"].append(run_child(reader, [work / f"ref{i}"], timeout, scratch=scratch).stdout)
    base = work / "data"
    generate_training_data(base, *pairs[0], progress=False)
    loop = subprocess.Popen([sys.executable, "-c", REGENERATION_LOOP, str(base), *map(str, pairs[0] + pairs[1])],
                            env={**os.environ, "PYTHONPATH": SRC}, stderr=subprocess.PIPE)
    try:
        for i in range(cases):
            tool = "train.py" if i % 2 == 0 else "reader.py"
            run = run_child(TRAINER, ["-d", base, *trainer_argv], timeout, scratch=scratch) if tool == "train.py" \
                else run_child(reader, [base], timeout, scratch=scratch)
            result, detail = outcome(run, tool), run.stderr.strip()[-300:]
            if result == "handled" and run.code == 0:
                if run.stdout in expected[tool]:
                    tally.events[f"{tool}: generation {expected[tool].index(run.stdout) + 1} of 2, whole"] += 1
                else:
                    result, detail = "other", "splits of different generations (or of neither)"
            elif result == "handled":
                tally.events[f"{tool}: refused in one line"] += 1
            tally.add(result, f"{tool} read {i}", run.leftovers, detail)
    finally:
        loop.kill()
        _, loop_err = loop.communicate()
    if loop.returncode != -signal.SIGKILL:
        tally.add("traceback", "the regeneration loop ended by itself", 0, loop_err.decode(errors="replace")[-300:])
    return tally


# ---------------------------------------------------------------------------------------------
# Hostile names in label.csv

#: Names that are not one plain file name inside the split; ``ESCAPED.png`` exists beside the data folder.
HOSTILE_NAMES = (
    "../../ESCAPED.png", "../ESCAPED.png", "{outside}", "./fer0000000.png", "FER2013Train/../x.png", "sub/x.png",
    "..", ".", "a\\b.png", "..\\ESCAPED.png", "x.png/", "/", "/dev/zero", "/etc/passwd", "fer\t.png",
    "fer\x00.png", " ../ESCAPED.png ", "%2e%2e/ESCAPED.png/..",
)


def hostile_names(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Put a name from :data:`HOSTILE_NAMES` into a split's label.csv, then run ``train.py -e 0`` or
    ``export_labels.py --imagefolder`` on it: each must refuse in one line and write nothing outside."""
    tally = Tally("hostile names")
    if cases == 0:
        return tally
    data, scratch = _prepared(work, seed=8)
    outside = work / "ESCAPED.png"
    shutil.copyfile(next((data / SPLIT_FOLDERS["train"]).glob("*.png")), outside)
    exporter = ROOT / "export_labels.py"
    for i in range(cases):
        name = HOSTILE_NAMES[i % len(HOSTILE_NAMES)].format(outside=outside)
        case_dir = work / f"case{i}"
        case_data = _copy(data, case_dir / "data")
        folder = case_data / list(SPLIT_FOLDERS.values())[int(rng.integers(0, len(SPLIT_FOLDERS)))]
        lines = (folder / LABEL_FILE).read_bytes().splitlines()
        row = int(rng.integers(0, len(lines)))
        lines[row] = b'"' + name.encode() + b'"' + lines[row][lines[row].index(b","):]
        (folder / LABEL_FILE).write_bytes(b"\n".join(lines) + b"\n")
        before = sorted(p.relative_to(work) for p in work.rglob("*") if "scratch" not in p.parts)
        if i % 2 == 0:
            tool = TRAINER.name
            run = run_child(TRAINER, ["-d", case_data, *READ_ONLY_TRAIN], timeout, scratch=scratch)
        else:
            tool = exporter.name
            run = run_child(exporter, ["-d", case_data, "--imagefolder", case_dir / "tree"], timeout, scratch=scratch)
        result, detail = outcome(run, tool), run.stderr.strip()[-300:]
        after = sorted(p.relative_to(work) for p in work.rglob("*") if "scratch" not in p.parts)
        if result == "handled" and run.code == 0:
            result, detail = "other", "accepted the name"
        elif result == "handled" and after != before:
            result, detail = "data lost", f"wrote {sorted(set(after) - set(before))[:3]}"
        if result == "handled":
            tally.events[f"{tool}: refused in one line"] += 1
        tally.add(result, f"{tool}: {name!r} in {folder.name}/{LABEL_FILE} line {row + 1}", run.leftovers, detail)
        shutil.rmtree(case_dir)
    return tally


# ---------------------------------------------------------------------------------------------
# Hostile model files, output targets, paths and non-finite models

EVALUATOR, PREDICTOR, EXPORTER = ROOT / "evaluate.py", ROOT / "predict.py", ROOT / "export_onnx.py"
TINY_MODEL = "vgg13_tiny"
#: A name with a character ASCII lacks and a byte that is not UTF-8 (a surrogate once decoded).
ODD_NAME = "dätä-" + os.fsdecode(b"\xff")


def write_onnx(path: Path, *, batch: Any = "N", fill: float = 0.5, loop: int = 0, log: bool = False,
               names: Tuple[str, str] = (INPUT_NAME, OUTPUT_NAME), metadata: Optional[Dict[str, str]] = None) -> Path:
    """An ONNX file with the toolkit's interface but another graph: scores = mean(input) * ``fill``
    (of ``log(mean)`` with ``log``: NaN for dark crops), through a ``Loop`` of ``loop`` iterations if any."""
    from onnx import TensorProto, helper, save

    nodes = [helper.make_node("ReduceMean", [names[0]], ["mean"], axes=[2, 3], keepdims=0)]
    if log:
        nodes.append(helper.make_node("Log", ["mean"], ["mean_log"]))
    nodes.append(helper.make_node("Mul", ["mean_log" if log else "mean", "fill"], ["scores"]))
    initializers = [helper.make_tensor("fill", TensorProto.FLOAT, [1, NUM_EMOTIONS], [fill] * NUM_EMOTIONS)]
    result = "scores"
    if loop:
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
        )
        initializers += [helper.make_tensor("trips", TensorProto.INT64, [], [loop]),
                         helper.make_tensor("go", TensorProto.BOOL, [], [True])]
        nodes.append(helper.make_node("Loop", ["trips", "go", "scores"], ["looped"], body=body))
        result = "looped"
    nodes.append(helper.make_node("Identity", [result], [names[1]]))
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [batch, 1, CROP_SIZE, CROP_SIZE])],
        [helper.make_tensor_value_info(names[1], TensorProto.FLOAT, [batch, NUM_EMOTIONS])], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # read by every onnxruntime this toolkit supports
    helper.set_model_props(model, metadata or {})
    save(model, str(path))
    return path


def write_checkpoint_fields(path: Path, **changes: Any) -> Path:
    """An untrained vgg13_tiny checkpoint with ``changes`` to its fields, under a right digest:
    a file another program could have written."""
    torch.manual_seed(0)
    payload = {"format": FORMAT, "model": TINY_MODEL, "mode": "majority",
               "model_state": create_model(TINY_MODEL).state_dict(), "epoch": 0, **changes}
    payload[DIGEST_KEY] = content_digest(payload)
    torch.save(payload, path)
    return path


def _scaled_weights(factor: float, nan: bool = False) -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weights = {k: v * factor if v.is_floating_point() else v for k, v in create_model(TINY_MODEL).state_dict().items()}
    if nan:
        first = next(k for k, v in weights.items() if v.is_floating_point())
        weights[first] = torch.full_like(weights[first], float("nan"))
    return weights


#: Model files with the right form but the wrong insides: name -> maker(path).
HOSTILE_MODELS: Dict[str, Callable[[Path], Path]] = {
    "checkpoint: model a list": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), model=["vgg13"]),
    "checkpoint: model_state a list": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), model_state=[1, 2]),
    "checkpoint: a weight a list": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), model_state={"w": [1.0]}),
    "checkpoint: epoch a string": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), epoch="3"),
    "checkpoint: history an int": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), history=5),
    "checkpoint: history of strings": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), history=["a", "b"]),
    "checkpoint: best_val_accuracy None": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), best_val_accuracy=None),
    "checkpoint: ragged confusion": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), test_confusion=[[1, 2]]),
    "onnx: Loop of 2**40": lambda p: write_onnx(p.with_suffix(".onnx"), loop=2**40),
    "onnx: batch fixed at 1": lambda p: write_onnx(p.with_suffix(".onnx"), batch=1),
    "onnx: metadata epoch '²'": lambda p: write_onnx(p.with_suffix(".onnx"), metadata={"epoch": "²", "mode": "٣"}),
    "onnx: other tensor names": lambda p: write_onnx(p.with_suffix(".onnx"), names=("x", "y")),
    "onnx: random bytes": lambda p: _written(p.with_suffix(".onnx"), np.random.default_rng(0).bytes(4096)),
}
#: Models whose scores are not finite: name -> maker(path).
NON_FINITE_MODELS: Dict[str, Callable[[Path], Path]] = {
    "checkpoint: NaN weights": lambda p: write_checkpoint_fields(p.with_suffix(".pt"), model_state=_scaled_weights(1, True)),
    "checkpoint: scores overflow to inf": lambda p: write_checkpoint_fields(
        p.with_suffix(".pt"), model_state=_scaled_weights(1e30)),
    "onnx: NaN scores": lambda p: write_onnx(p.with_suffix(".onnx"), fill=float("nan")),
    "onnx: infinite scores": lambda p: write_onnx(p.with_suffix(".onnx"), fill=float("inf")),
    "onnx: NaN for dark crops": lambda p: write_onnx(p.with_suffix(".onnx"), log=True),
}


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@dataclass
class ToolKit:
    """What the model-file parts run the tools on: a tiny prepared data folder, a face crop and a checkpoint."""

    data: Path
    photo: Path
    checkpoint: Path


def _toolkit(work: Path) -> ToolKit:
    data = work / "data"
    generate_training_data(data, *write_sample(work / "csv", per_split=PER_SPLIT // 4, seed=5), progress=False)
    photo = next((data / SPLIT_FOLDERS["test"]).glob("*.png"))
    checkpoint = write_checkpoint_fields(work / "best.pt")
    return ToolKit(data, photo, checkpoint)


def _model_commands(kit: ToolKit, model: Path, out: Path) -> Dict[str, Tuple[Path, List[object]]]:
    """Each tool that reads a model file, run on ``model`` and writing under ``out``."""
    commands = {
        "evaluate": (EVALUATOR, [model, "-d", kit.data, "--device", "cpu", "--output", out]),
        "predict": (PREDICTOR, ["--model", model, "--no-detect", "--json", kit.photo]),
    }
    if model.suffix == ".pt":
        commands["export_onnx"] = (EXPORTER, [model, out / "model.onnx"])
    return commands


def _model_cases(name: str, makers: Dict[str, Callable[[Path], Path]], work: Path, cases: int,
                 timeout: float) -> Tally:
    """Run every tool that reads a model on each of ``makers``' files in turn; exit 0 must print
    only finite figures."""
    tally = Tally(name)
    if cases == 0:
        return tally
    kit, scratch = _toolkit(work), work / "scratch"
    scratch.mkdir()
    plan = [(kind, tool) for kind in makers for tool in ("evaluate", "predict", "export_onnx")]
    plan = [(kind, tool) for kind, tool in plan if tool != "export_onnx" or kind.startswith("checkpoint")]
    for i in range(cases):
        kind, tool = plan[i % len(plan)]
        case_dir = work / f"case{i}"
        case_dir.mkdir()
        model = makers[kind](case_dir / "model")
        script, argv = _model_commands(kit, model, case_dir / "out")[tool]
        run = run_child(script, argv, timeout, scratch=scratch)
        result = outcome(run, script.name)
        if result == "handled" and run.code == 0:
            written = "".join(p.read_text(errors="replace") for p in (case_dir / "out").glob("*.json"))
            if "nan" in (run.stdout + written).lower() or "infinity" in (run.stdout + written).lower():
                result = "other"  # a non-finite figure accepted silently
            else:
                tally.events[f"exit 0: {kind} used as it is"] += 1
        elif result == "handled":
            tally.events["exit 2 with one line"] += 1
        tally.add(result, f"{tool} on {kind}", run.leftovers, run.stderr.strip()[-300:])
        shutil.rmtree(case_dir)
    return tally


def hostile_models(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """evaluate, predict and export_onnx on model files that pass a first look: odd checkpoint
    fields under a right digest, ONNX files with control flow, a fixed batch or odd metadata."""
    return _model_cases("hostile model", HOSTILE_MODELS, work, cases, timeout)


def non_finite_models(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """evaluate, predict and export_onnx on models whose scores are NaN or infinite."""
    return _model_cases("non-finite model", NON_FINITE_MODELS, work, cases, timeout)


def _make_target(kind: str, path: Path, kit: ToolKit) -> None:
    """Put a ``kind`` of file at ``path``, where a tool is about to write."""
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":  # a copy of /dev/null, where the process may make one (as root)
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif kind == "the input":
        os.link(kit.checkpoint, path)
    elif kind == "a link to the input":
        path.symlink_to(kit.checkpoint)


def _target_kinds() -> List[str]:
    kinds = ["FIFO", "socket", "folder", "the input", "a link to the input"]
    return kinds + (["device"] if os.geteuid() == 0 else [])


def special_outputs(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Tools writing where a FIFO, socket, folder or device node is, or onto their own input:
    one line and exit 2, with the file there and the input unchanged."""
    tally = Tally("special output")
    if cases == 0:
        return tally
    kit, scratch = _toolkit(work), work / "scratch"
    scratch.mkdir()
    checkpoint_bytes = kit.checkpoint.read_bytes()
    kinds = _target_kinds()
    # predict.py writing over its own photo is another part's: here it meets the special files only.
    plan = [(tool, kind) for tool in ("export_onnx", "evaluate", "predict --annotate") for kind in kinds
            if not (tool.startswith("predict") and "input" in kind)]
    for i in range(cases):
        tool, kind = plan[i % len(plan)]
        out = work / f"case{i}"
        out.mkdir()
        if tool == "export_onnx":
            target = out / "model.onnx"
            script, argv = EXPORTER, [kit.checkpoint, target]
        elif tool == "evaluate":
            target = out / f"eval_{kit.checkpoint.stem}_{Path(kit.data).resolve().name}_test.json"
            script, argv = EVALUATOR, [kit.checkpoint, "-d", kit.data, "--device", "cpu", "--output", out]
        else:
            target = out / kit.photo.name
            script, argv = PREDICTOR, ["--model", kit.checkpoint, "--no-detect", "--annotate", out, kit.photo]
        _make_target(kind, target, kit)
        mode = os.lstat(target).st_mode
        run = run_child(script, argv, timeout, scratch=scratch)
        result = "other" if run.code == 0 else outcome(run, script.name)  # exit 0: written somewhere
        if os.lstat(target).st_mode != mode or kit.checkpoint.read_bytes() != checkpoint_bytes:
            result = "data lost"
        if result == "handled":
            tally.events[f"refused: {kind}"] += 1
        tally.add(result, f"{tool} onto {kind}", run.leftovers, run.stderr.strip()[-300:])
        shutil.rmtree(out)
    return tally


def odd_paths(work: Path, cases: int, rng: np.random.Generator, timeout: float) -> Tally:
    """Every tool on paths that the terminal cannot show (a non-UTF-8 byte, a character ASCII
    lacks), under a UTF-8 and an ASCII output encoding: working runs finish, failing ones say so
    in one line."""
    tally = Tally("odd path")
    if cases == 0:
        return tally
    kit, scratch = _toolkit(work), work / "scratch"
    scratch.mkdir()
    odd = work / ODD_NAME
    shutil.copytree(kit.data, odd / "data")
    shutil.copy(kit.checkpoint, odd / "best.pt")
    shutil.copy(kit.photo, odd / "face.png")
    missing = odd / "missing"
    commands: Dict[str, Tuple[Path, List[object]]] = {
        "train": (TRAINER, ["-d", odd / "data", "--model", TINY_MODEL, "-e", "1", "--device", "cpu"]),
        "train (missing data)": (TRAINER, ["-d", missing, "--device", "cpu"]),
        "generate (missing csv)": (GENERATOR, ["-d", odd / "gen", "-fer", missing / "fer2013.csv"]),
        "evaluate": (EVALUATOR, [odd / "best.pt", "-d", odd / "data", "--device", "cpu"]),
        "evaluate (missing model)": (EVALUATOR, [missing / "best.pt", "-d", odd / "data"]),
        "predict": (PREDICTOR, ["--model", odd / "best.pt", "--no-detect", "--annotate", odd / "annotated",
                                odd / "face.png"]),
        "predict (missing photo)": (PREDICTOR, ["--model", odd / "best.pt", missing / "face.png"]),
        "export_onnx": (EXPORTER, [odd / "best.pt", odd / "model.onnx"]),
        "reproduce (missing data)": (ROOT / "reproduce.py", ["-d", missing, "--seeds", "1", "--device", "cpu"]),
        "export_labels": (ROOT / "export_labels.py", ["-d", odd / "data", "--csv", odd / "labels", "--overwrite"]),
        "export_labels (missing data)": (ROOT / "export_labels.py", ["-d", missing, "--csv", odd / "labels2"]),
    }
    names = list(commands)
    for i in range(cases):
        name, encoding = names[i % len(names)], ("ascii", "utf-8")[(i // len(names)) % 2]
        script, argv = commands[name]
        run = run_child(script, argv, timeout, scratch=scratch, env={"PYTHONIOENCODING": encoding})
        result = outcome(run, script.name)
        if name == "predict (missing photo)" and run.code == 1 and "Traceback" not in run.stderr:
            result = "handled"  # predict.py: a warning per image it could not read, then exit 1 (documented)
        elif result == "handled" and (run.code == 0) == ("missing" in name):
            result = "other"  # a working run that failed, or a missing path that was not reported
        if result == "handled":
            tally.events[f"exit {run.code}"] += 1
        tally.add(result, f"{name} under {encoding}", run.leftovers, run.stderr.strip()[-300:])
        shutil.rmtree(odd / "run", ignore_errors=True)
        shutil.rmtree(odd / "data" / "models", ignore_errors=True)
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
    parser.add_argument("--readers", type=int, default=4,
                        help="reads of a data folder that another process regenerates meanwhile")
    parser.add_argument("--hostile-names", type=int, default=4, help="label.csv files with a name that is not plain")
    parser.add_argument("--hostile-models", type=int, default=20,
                        help="tool runs on checkpoints with odd fields and ONNX files beyond the interface")
    parser.add_argument("--special-outputs", type=int, default=20,
                        help="tool runs writing onto a FIFO, socket, folder, device or their own input")
    parser.add_argument("--odd-paths", type=int, default=22,
                        help="tool runs on paths with a non-UTF-8 byte and a non-ASCII character")
    parser.add_argument("--non-finite", type=int, default=20, help="tool runs on models with NaN or infinite scores")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds after which a run counts as hung")
    parser.add_argument("--json", type=Path, help="also write the table and the notes as JSON here")
    return parser


def main(args: argparse.Namespace) -> List[Tally]:
    """Run the parts and print the table, then a note per case that was not handled."""
    rng = np.random.default_rng(args.seed)
    parts = (
        (generator_kills, args.generator_kills), (train_kills, args.train_kills),
        (checkpoint_write_kills, args.checkpoint_kills), (run_end_kills, args.end_kills),
        (fer_csv_fuzz, args.fuzz), (label_csv_fuzz, args.label_fuzz),
        (readers_during_regeneration, args.readers), (hostile_names, args.hostile_names),
        (hostile_models, args.hostile_models), (special_outputs, args.special_outputs),
        (odd_paths, args.odd_paths), (non_finite_models, args.non_finite),
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
