"""The training step: the eager reference, and the fast step that CUDA replays as one graph.

Both take a minibatch ``(inputs, loss targets, labels)`` and do the same maths: the forward
pass (under bf16 autocast when asked), the mode's loss on float32 scores, the backward pass
and plain momentum SGD (``v = m·v + g; w −= lr·v``, torch.optim.SGD with dampening 0). They
add the minibatch's summed loss and correct count to device totals, so nothing waits for the
device during an epoch.

:class:`EagerStep` calls ``loss.backward()`` and ``optimizer.step()``: the reference, the
CPU path and the path under ``torchrun``. :class:`FastStep` writes the whole step as
``autograd.grad`` plus foreach updates of the optimiser's own momentum buffers, with the
learning rate in a device tensor, and on CUDA captures it once into a CUDA graph over static
input buffers: each full minibatch is then three copies and one replay, with no host
synchronisation and no Python-side allocation. Dropout masks are drawn inside the graph from
the CUDA generator, whose graph-safe philox offset advances on every replay, so each replay
draws fresh masks and reseeding the generator (every epoch) also reseeds the graph's draws.

The fast step must prove itself or step aside: if its warm-up or capture raises, or its first
replay disagrees with the same step run eagerly, it prints one line on stderr, puts back
everything the attempt touched and runs :class:`EagerStep` for the rest of the run, whose
updates are then exactly those of ``--step eager``. What captures and replays is a *graph
backend* (:class:`CudaGraphs` on a GPU), so that tests on the CPU can inject one that fails.
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional, Protocol, Sequence

import torch
from torch import nn

from .fer_format import NUM_EMOTIONS
from .losses import LossFn
from .models import INPUT_SIZE

#: Eager runs of the fast step before capture: cuDNN autotuning and lazy initialisation happen
#: there, not in the graph (the CUDA-graph documentation's warm-up on a side stream).
WARMUP_STEPS = 3
#: How far the graph's first replay may stray from the eager step (relative to the size of each
#: group of changes, e.g. all weight updates), by the precision the network computes in: the
#: two run the same kernels, so only the order of floating-point sums may differ; a wrong
#: replay is off by the order of the update itself.
SELF_CHECK_TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 2e-2}
#: Seed of the random minibatch of the self-check (its own generator: the run's draws are untouched).
SELF_CHECK_SEED = 0x5E1F


class GraphBackend(Protocol):
    """What captures a step and replays it (:class:`CudaGraphs`; tests inject others)."""

    def capture(self, step: Callable[[], None], warmup: int) -> Callable[[], None]:
        """Run ``step`` ``warmup`` times, capture it once and return what replays it.

        On failure it raises, having ended its own capture; the caller restores the state.
        """
        ...


def _clear_cublas_workspaces() -> None:
    # torch's cudagraph trees do this around every capture: cuBLAS keeps one workspace per
    # (handle, stream) for as long as it likes; cleared before capture, the graph allocates its
    # own inside its private memory pool, and cleared after, nothing outside the graph keeps it.
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # absent in some builds
    if clear is not None:
        clear()


class CudaGraphs:
    """Captures a step into a CUDA graph on a capture stream of its own (one backend per run).

    Concurrent runs in one process therefore never share a capture stream, and so neither a
    cuBLAS workspace nor a memory pool: starting or ending one run does not touch another's
    graph. The capture is thread-local, so another thread's CUDA calls (a checkpoint being
    written, say) do not invalidate it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def capture(self, step: Callable[[], None], warmup: int) -> Callable[[], None]:
        """Warm up and capture on this backend's stream; see :class:`GraphBackend`."""
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        try:
            with torch.cuda.stream(self.stream):
                for _ in range(warmup):
                    step()
                torch.cuda.synchronize(self.device)  # nothing of the warm-up in flight during capture
                _clear_cublas_workspaces()
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    step()
                except BaseException:
                    _end_failed_capture(graph)
                    raise
                graph.capture_end()
        except BaseException:
            graph.reset()  # drops what a failed capture made, and (torch >= 2.13) its generator state
            raise
        finally:
            # The caller restores the state on its own stream: after the warm-up's last write.
            current.wait_stream(self.stream)
            _clear_cublas_workspaces()
        return graph.replay


def _end_failed_capture(graph: torch.cuda.CUDAGraph) -> None:
    """End a capture that failed midway, so that its stream leaves capture mode."""
    try:
        graph.capture_end()
    except RuntimeError:
        # An invalidated capture: cudaStreamEndCapture has ended it all the same, but torch
        # raises before it tells the generator (torch <= 2.12 leaves it flagged as capturing:
        # FastStep installs a fresh generator state) and the allocator (whose capture filter
        # no longer matches any stream).
        pass


class _Snapshot:
    """Copies of the tensors a step changes, and the random-number states, to put back."""

    def __init__(self, tensors: Sequence[torch.Tensor], device: torch.device) -> None:
        self.tensors = tensors
        self.values = [t.detach().clone() for t in tensors]
        self.cpu_rng = torch.get_rng_state()
        self.cuda = device.type == "cuda"
        if self.cuda:
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.generator = torch.cuda.default_generators[index]
            self.cuda_rng = self.generator.get_state()
            # A generator state never used in a capture (a clone is not flagged as capturing).
            self.fresh = self.generator.clone_state()

    def restore(self, fresh_generator: bool = False) -> None:
        """Put the tensors and random-number states back; ``fresh_generator`` also replaces the CUDA
        generator's graph-safe state by a clean one (after a failed capture)."""
        with torch.no_grad():
            for tensor, value in zip(self.tensors, self.values):
                tensor.copy_(value)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda:
            if fresh_generator:
                self.generator.graphsafe_set_state(self.fresh)
            # In place: a captured graph keeps drawing from the state object it was captured with.
            self.generator.set_state(self.cuda_rng)


class EagerStep:
    """One training step as a user would write it, with ``optimizer.step()`` (the reference).

    ``model`` may be wrapped in DistributedDataParallel. ``channels_last`` converts each
    minibatch to that layout (the model must have been converted by the caller). ``kind`` is
    the step that runs (a ``--step`` choice); ``fallback`` why a fast step runs eagerly, else None.
    """

    kind = "eager"
    fallback: Optional[str] = None

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.model, self.optimizer, self.loss_fn, self.amp = model, optimizer, loss_fn, amp
        self.forward = model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = next(model.parameters()).device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)

    def set_lr(self, lr: float) -> None:
        """Use learning rate ``lr`` from the next step on (also what ``optimizer.state_dict()`` records)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def start_epoch(self) -> None:
        """Zero the summed loss and correct count."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def _scores_and_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # No autocast weight cache: each weight is cast once per pass anyway, and a CUDA graph
        # must not capture a cache that outlives it.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.forward(inputs)
        return logits, self.loss_fn(logits.float(), targets)

    def _count(self, logits: torch.Tensor, loss: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.detach().argmax(dim=1) == labels).sum()

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        """Train on one minibatch and add its loss and correct count to the totals."""
        logits, loss = self._scores_and_loss(inputs.contiguous(memory_format=self.memory_format), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._count(logits, loss, labels)


class FastStep(EagerStep):
    """The same step as :class:`EagerStep`, as foreach updates with the learning rate on the device.

    ``optimizer`` must be the single-group momentum SGD of ``engine.make_optimizer``; its
    momentum buffers (created as zeros where missing, which gives the same first update) are
    updated in place, so ``optimizer.state_dict()`` saves and loads as before. Build the step
    after loading any checkpoint into the model and optimiser.

    With ``graph=True`` the step is captured once, for minibatches of ``batch_size``, by
    ``graphs`` (by default :class:`CudaGraphs`, CUDA only) and checked against the eager step;
    a smaller minibatch (an epoch's last) runs the same code eagerly. Should the capture raise
    or the check fail, the step says so on stderr and runs as :class:`EagerStep` from then on
    (``kind`` ``"eager"``, ``fallback`` the reason). ``compile=True`` runs the network through
    ``torch.compile`` inside the step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        batch_size: int,
        amp: bool = False,
        channels_last: bool = False,
        graph: bool = False,
        compile: bool = False,
        graphs: Optional[GraphBackend] = None,
    ) -> None:
        super().__init__(model, optimizer, loss_fn, amp, channels_last)
        (group,) = optimizer.param_groups
        if group["dampening"] or group["nesterov"] or group["weight_decay"]:
            raise ValueError("FastStep implements momentum SGD without dampening, Nesterov or weight decay")
        self.kind = "compiled" if compile else "graph"
        self.params: List[torch.Tensor] = list(group["params"])
        self.momentum = float(group["momentum"])
        self.buffers: List[torch.Tensor] = [
            optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))
            for p in self.params
        ]
        self.lr = torch.tensor(group["lr"], dtype=self.params[0].dtype, device=self.device)
        if compile:
            self.forward = torch.compile(model)
        self.replay: Optional[Callable[[], None]] = None
        self.eager: Optional[EagerStep] = None
        self.static: Sequence[torch.Tensor] = ()
        if graph:
            if graphs is None:
                if self.device.type != "cuda":
                    raise ValueError("a CUDA graph needs a model on a CUDA device")
                graphs = CudaGraphs(self.device)
            self._capture(batch_size, graphs)

    def set_lr(self, lr: float) -> None:
        """Use learning rate ``lr`` from the next step on: a device write, no re-capture."""
        super().set_lr(lr)
        self.lr.fill_(lr)

    def _update(self, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        """The whole step, graph-capturable: no host reads, no data-dependent control flow."""
        logits, loss = self._scores_and_loss(inputs, targets)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            # torch.optim.SGD's update: buf = momentum * buf + grad; param -= lr * buf.
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, grads)
            torch._foreach_sub_(self.params, torch._foreach_mul(self.buffers, self.lr))
        self._count(logits, loss, labels)

    def _checked_state(self) -> Dict[str, List[torch.Tensor]]:
        """What a step changes in floating point, by what it is (the self-check compares each group)."""
        return {
            "weights": self.params,
            "momentum": self.buffers,
            "batch-norm statistics": [b for b in self.model.buffers() if b.is_floating_point()],
            "loss": [self.loss_sum],
        }

    def _changed_state(self) -> List[torch.Tensor]:
        """Everything a step changes: the checked state first, then the counters."""
        counters = [b for b in self.model.buffers() if not b.is_floating_point()]
        return [t for group in self._checked_state().values() for t in group] + counters + [self.correct]

    def _capture(self, batch_size: int, graphs: GraphBackend) -> None:
        """Warm up and capture one step, check its first replay, then undo what all that changed.

        Warm-up and check are not training: the run's updates do not depend on when (or
        whether) the graph was captured.
        """
        device = self.device
        self.static = (
            torch.zeros((batch_size, 1, INPUT_SIZE, INPUT_SIZE), device=device).contiguous(
                memory_format=self.memory_format
            ),
            torch.full((batch_size, NUM_EMOTIONS), 1.0 / NUM_EMOTIONS, device=device),
            torch.zeros(batch_size, dtype=torch.int64, device=device),
        )
        start = _Snapshot(self._changed_state(), device)
        try:
            replay = graphs.capture(lambda: self._update(*self.static), WARMUP_STEPS)
        except Exception as e:  # whatever the reason, the run must go on
            start.restore(fresh_generator=True)
            self._fall_back(f"the fast step's warm-up or CUDA graph capture failed ({_one_line(e)})")
            return
        start.restore()
        try:
            mismatch = self._self_check(replay, start)
        except Exception as e:
            mismatch = f"it raised {_one_line(e)}"
        start.restore()
        if mismatch is not None:
            self._fall_back(f"the CUDA graph's first replay disagrees with the eager step ({mismatch})")
            return
        self.replay = replay

    def _self_check(self, replay: Callable[[], None], start: _Snapshot) -> Optional[str]:
        """One replay against one eager step, from ``start`` on a random minibatch with the same
        dropout draws: what differs beyond :data:`SELF_CHECK_TOLERANCE`, or None."""
        generator = torch.Generator(self.device).manual_seed(SELF_CHECK_SEED)
        inputs, targets, labels = self.static
        inputs.normal_(generator=generator)  # never zeros: they would hide a replay that reads nothing
        targets.copy_(torch.softmax(torch.randn(targets.shape, generator=generator, device=self.device), dim=1))
        labels.random_(0, NUM_EMOTIONS, generator=generator)
        groups = self._checked_state()

        def changes() -> Dict[str, List[torch.Tensor]]:
            values = iter(start.values)  # the snapshot holds the checked state first, in this order
            return {name: [t.detach().double() - next(values).double() for t in group] for name, group in groups.items()}

        self._update(*self.static)
        expected = changes()
        start.restore()
        replay()
        replayed = changes()
        tolerance = SELF_CHECK_TOLERANCE[torch.bfloat16 if self.amp else torch.float32]
        for name, reference in expected.items():
            if not reference:
                continue
            want = torch.cat([t.flatten() for t in reference])
            got = torch.cat([t.flatten() for t in replayed[name]])
            error = ((got - want).norm() / want.norm().clamp_min(torch.finfo(torch.float32).tiny)).item()
            if not error <= tolerance:  # NaN fails too
                return f"{name}: relative difference {error:.2g} > {tolerance:g}"
        return None

    def _fall_back(self, reason: str) -> None:
        """Run as :class:`EagerStep` from now on, on the same totals, saying so in one line."""
        print(f"warning: {reason}; the run goes on with the eager step", file=sys.stderr, flush=True)
        self.eager = EagerStep(self.model, self.optimizer, self.loss_fn, self.amp, self.memory_format == torch.channels_last)
        self.eager.loss_sum, self.eager.correct = self.loss_sum, self.correct
        self.kind, self.fallback = "eager", reason
        self.static = ()

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        """Train on one minibatch: a graph replay when captured for its size, else the same code eagerly."""
        if self.eager is not None:
            self.eager(inputs, targets, labels)
        elif self.replay is None or len(inputs) != len(self.static[0]):
            self._update(inputs.contiguous(memory_format=self.memory_format), targets, labels)
        else:
            for buffer, value in zip(self.static, (inputs, targets, labels)):
                buffer.copy_(value)
            self.replay()


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message``, for a one-line warning."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def resolve_step_kind(kind: str, device: torch.device, distributed: bool) -> str:
    """``auto`` → ``graph`` on a single CUDA device, else ``eager``; the other kinds as given."""
    if kind == "auto":
        return "graph" if device.type == "cuda" and not distributed else "eager"
    return kind


def make_step(
    kind: str,
    model: nn.Module,
    raw_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    batch_size: int,
    amp: bool,
    channels_last: bool,
    graphs: Optional[GraphBackend] = None,
) -> EagerStep:
    """The training step of a resolved ``kind`` (``eager``, ``graph`` or ``compiled``).

    ``model`` is what the eager step calls (DistributedDataParallel under torchrun),
    ``raw_model`` the network itself, which the fast steps update directly. ``graph`` and
    ``compiled`` capture a CUDA graph on CUDA and run the same code uncaptured on the CPU;
    ``graphs`` captures instead where given (tests). The step's ``kind`` says what runs.
    """
    if kind == "eager":
        return EagerStep(model, optimizer, loss_fn, amp, channels_last)
    capture = graphs is not None or next(raw_model.parameters()).device.type == "cuda"
    return FastStep(
        raw_model, optimizer, loss_fn, batch_size, amp, channels_last, graph=capture, compile=(kind == "compiled"),
        graphs=graphs,
    )
