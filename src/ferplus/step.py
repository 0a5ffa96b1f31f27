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
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .fer_format import NUM_EMOTIONS
from .losses import LossFn
from .models import INPUT_SIZE
from .settings import STEP_KINDS

#: Eager runs of the fast step before capture: cuDNN autotuning and lazy initialisation happen
#: there, not in the graph (the CUDA-graph documentation's warm-up on a side stream).
WARMUP_STEPS = 3


class EagerStep:
    """One training step as a user would write it, with ``optimizer.step()`` (the reference).

    ``model`` may be wrapped in DistributedDataParallel. ``channels_last`` converts each
    minibatch to that layout (the model must have been converted by the caller).
    """

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

    With ``graph=True`` (CUDA only) the step is captured once, for minibatches of
    ``batch_size``, into a CUDA graph; a smaller minibatch (an epoch's last) runs the same
    code eagerly. ``compile=True`` runs the network through ``torch.compile`` inside the step.
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
    ) -> None:
        super().__init__(model, optimizer, loss_fn, amp, channels_last)
        (group,) = optimizer.param_groups
        if group["dampening"] or group["nesterov"] or group["weight_decay"]:
            raise ValueError("FastStep implements momentum SGD without dampening, Nesterov or weight decay")
        self.params: List[torch.Tensor] = list(group["params"])
        self.momentum = float(group["momentum"])
        self.buffers: List[torch.Tensor] = [
            optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))
            for p in self.params
        ]
        self.lr = torch.tensor(group["lr"], dtype=self.params[0].dtype, device=self.device)
        if compile:
            self.forward = torch.compile(model)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static: Sequence[torch.Tensor] = ()
        if graph:
            if self.device.type != "cuda":
                raise ValueError("a CUDA graph needs a model on a CUDA device")
            self._capture(batch_size)

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

    def _capture(self, batch_size: int) -> None:
        """Warm up on a side stream, capture one step, then undo what the warm-up and capture changed."""
        device = self.device
        self.static = (
            torch.zeros((batch_size, 1, INPUT_SIZE, INPUT_SIZE), device=device).contiguous(
                memory_format=self.memory_format
            ),
            torch.full((batch_size, NUM_EMOTIONS), 1.0 / NUM_EMOTIONS, device=device),
            torch.zeros(batch_size, dtype=torch.int64, device=device),
        )
        # The warm-up steps are not training: everything they touch is put back afterwards, so a
        # run's updates do not depend on when the graph was captured.
        touched = [*self.params, *self.buffers, *self.model.buffers(), self.loss_sum, self.correct]
        saved = [t.detach().clone() for t in touched]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._update(*self.static)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._update(*self.static)
        with torch.no_grad():
            for tensor, value in zip(touched, saved):
                tensor.copy_(value)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        """Train on one minibatch: a graph replay when captured for its size, else the same code eagerly."""
        if self.graph is None or len(inputs) != len(self.static[0]):
            self._update(inputs.contiguous(memory_format=self.memory_format), targets, labels)
            return
        for buffer, value in zip(self.static, (inputs, targets, labels)):
            buffer.copy_(value)
        self.graph.replay()


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
) -> EagerStep:
    """The training step of a resolved ``kind`` (``eager``, ``graph`` or ``compiled``).

    ``model`` is what the eager step calls (DistributedDataParallel under torchrun),
    ``raw_model`` the network itself, which the fast steps update directly. ``graph`` and
    ``compiled`` capture a CUDA graph on CUDA and run the same code uncaptured on the CPU.
    """
    if kind == "eager":
        return EagerStep(model, optimizer, loss_fn, amp, channels_last)
    cuda = next(raw_model.parameters()).device.type == "cuda"
    return FastStep(
        raw_model, optimizer, loss_fn, batch_size, amp, channels_last, graph=cuda, compile=(kind == "compiled")
    )
