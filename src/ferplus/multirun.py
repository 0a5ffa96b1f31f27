"""Several training runs at once: interleaved step by step in one process, one process per GPU.

On one device, up to ``jobs`` runs advance round-robin, one training step each in turn (a run
is :func:`~ferplus.engine.train_steps`, a generator). Small-batch training keeps a GPU busy
launching kernels rather than computing, so several runs on their own CUDA streams fill it
far better than one. Each run owns its stream and its own CPU and CUDA random-number states,
switched in before each of its steps, so it draws exactly what it would draw trained alone:
its folder, log and results are those of the run trained alone (bit-identical on the CPU; on a
GPU up to its usual non-determinism). With several GPUs, one worker process per GPU trains
every n-th run.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import List, Optional, Sequence, TextIO, Tuple

import torch

from . import stopping
from .engine import EPOCH_SAVED, RunSteps, RunStopped, TrainConfig, train_steps
from .runtime import resolve_device
from .errors import FerplusError, make_output_safe

Results = Optional[dict]


class _PrefixedLines(io.TextIOBase):
    """A text stream that writes each complete line to ``target`` behind ``prefix``."""

    def __init__(self, prefix: str, target: TextIO) -> None:
        super().__init__()
        self.prefix, self.target, self.pending = prefix, target, ""

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self.target.write(f"{self.prefix}{line}\n")
        if lines:
            self.target.flush()
        return len(text)

    def isatty(self) -> bool:  # no progress bars from interleaved runs
        return False


class InterleavedRun:
    """One run's step generator and what it owns in a process shared with other runs.

    :meth:`advance` switches in the run's CUDA stream, random-number states and prefixed
    output, takes one step of the generator and switches them out again.
    """

    def __init__(self, steps: RunSteps, device: torch.device, name: Optional[str] = None) -> None:
        self.steps = steps
        self.cpu_rng = torch.get_rng_state()
        self.stream = self.cuda_generator = self.cuda_rng = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.stream = torch.cuda.Stream(index)
            # The default generator is pointed at this run's own state: dropout draws, the
            # epoch's reseeding and a CUDA graph captured meanwhile all use (and keep using) it.
            self.cuda_generator = torch.cuda.default_generators[index]
            self.cuda_rng = self.cuda_generator.clone_state()
        self.output: Tuple[Optional[TextIO], Optional[TextIO]] = (None, None)
        if name is not None:
            self.output = (_PrefixedLines(f"[{name}] ", sys.stdout), _PrefixedLines(f"[{name}] ", sys.stderr))

    def advance(self) -> str:
        """One step of the run: what the generator yields; ``StopIteration`` carries its results."""
        saved_output = sys.stdout, sys.stderr
        if self.output[0] is not None:
            sys.stdout, sys.stderr = self.output
        torch.set_rng_state(self.cpu_rng)
        if self.stream is not None:
            self.cuda_generator.graphsafe_set_state(self.cuda_rng)
            torch.cuda.set_stream(self.stream)
        try:
            return next(self.steps)
        finally:
            self.cpu_rng = torch.get_rng_state()
            if self.stream is not None:
                # The run may have replaced the generator's state (a failed capture does): keep
                # whichever it now draws from.
                self.cuda_rng = self.cuda_generator.graphsafe_get_state()
            sys.stdout, sys.stderr = saved_output

    def close(self) -> None:
        """Stop the run where it is (after a saved epoch it resumes from there)."""
        self.steps.close()


def _expired(deadline: Optional[float]) -> bool:
    return deadline is not None and time.time() >= deadline


def train_interleaved(configs: Sequence[TrainConfig], jobs: int, deadline: Optional[float] = None) -> List[Results]:
    """Train ``configs`` in this process, up to ``jobs`` interleaved at a time, on their device.

    A run starts when a slot is free; from the ``deadline`` (a ``time.time()`` value) on, no run
    starts and running ones stop after their next saved epoch (their ``last.pt`` resumes them).
    Returns each config's results in order, None for a run stopped or never started. An error
    in one run stops all and is raised. SIGTERM or SIGINT stops every running run at its next
    step, each saving where it was, and then raises the first run's stop.
    """
    results: List[Results] = [None] * len(configs)
    waiting = deque(enumerate(configs))
    active: List[Tuple[int, InterleavedRun]] = []
    cuda_state = None
    if configs and resolve_device(configs[0].device).type == "cuda":
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        cuda_state = generator, generator.graphsafe_get_state(), torch.cuda.current_stream()
    stopped: List[BaseException] = []
    try:
        with stopping.stop_on_signals():
            _advance_all(configs, jobs, deadline, waiting, active, results, stopped)
        if stopped:
            raise stopped[0]
    finally:
        for _, run in active:
            run.close()
        if cuda_state is not None:
            generator, state, stream = cuda_state
            generator.graphsafe_set_state(state)
            torch.cuda.set_stream(stream)
    return results


def _advance_all(
    configs: Sequence[TrainConfig],
    jobs: int,
    deadline: Optional[float],
    waiting: deque,
    active: List[Tuple[int, InterleavedRun]],
    results: List[Results],
    stopped: List[BaseException],
) -> None:
    """Round-robin steps of the active runs until all have ended (see :func:`train_interleaved`)."""
    while waiting or active:
        while waiting and len(active) < jobs and not _expired(deadline) and not stopping.requested():
            index, config = waiting.popleft()
            name = Path(config.output).name if config.output else None
            print(f"== {name}: training", flush=True)
            device = resolve_device(config.device)
            active.append((index, InterleavedRun(train_steps(config), device, name)))
        if not active:
            break
        for entry in list(active):
            index, run = entry
            try:
                marker = run.advance()
            except StopIteration as stop:
                results[index] = stop.value
                active.remove(entry)
                continue
            except (RunStopped, KeyboardInterrupt) as stop:
                if not stopping.requested():
                    raise
                stopped.append(stop)  # saved; the others stop at their own next step
                active.remove(entry)
                print(f"== {Path(configs[index].output).name}: {stop}", flush=True)
                continue
            if marker == EPOCH_SAVED and _expired(deadline):
                run.close()
                active.remove(entry)
                print(f"== {Path(configs[index].output).name}: stopped at the time budget (resumable)", flush=True)


def _worker(task: Tuple[int, int, bool, List[TrainConfig], int, Optional[float]]) -> object:
    """Worker ``index``: its share of the runs with ``threads`` CPU threads, on its own GPU when on CUDA."""
    index, threads, cuda, configs, jobs, deadline = task
    if cuda:  # before CUDA starts in this process: the worker sees its own GPU as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    make_output_safe()  # a spawned worker prints run folders too: any path must print
    torch.set_num_threads(threads)
    try:
        return train_interleaved(configs, jobs, deadline)
    except FerplusError as e:  # pickled back as plain values: the exit code survives
        return (str(e), e.exit_code)


def train_runs(
    configs: Sequence[TrainConfig], jobs: int = 1, deadline: Optional[float] = None, workers: Optional[int] = None
) -> List[Results]:
    """Train ``configs`` (all on one device type), ``jobs`` at a time per device.

    ``workers`` processes share the runs (every n-th each); by default one per visible GPU on
    CUDA, else none: the runs are trained in this process. See :func:`train_interleaved`.
    """
    if not configs:
        return []
    cuda = resolve_device(configs[0].device).type == "cuda"
    if workers is None:
        workers = torch.cuda.device_count() if cuda else 1
    workers = min(workers, len(configs))
    if workers <= 1:
        return train_interleaved(configs, jobs, deadline)
    shares = [list(range(w, len(configs), workers)) for w in range(workers)]
    # The workers share this process's CPU threads rather than each spinning as many.
    threads = max(1, torch.get_num_threads() // workers)
    tasks = [(w, threads, cuda, [configs[i] for i in share], jobs, deadline) for w, share in enumerate(shares)]
    with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        outcomes = pool.map(_worker, tasks, chunksize=1)
    results: List[Results] = [None] * len(configs)
    for share, outcome in zip(shares, outcomes):
        if isinstance(outcome, tuple):
            message, exit_code = outcome
            raise FerplusError(message, exit_code)
        for index, value in zip(share, outcome):
            results[index] = value
    return results
