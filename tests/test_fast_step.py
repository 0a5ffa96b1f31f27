"""The fast training step makes the eager step's updates: uncaptured on the CPU, as a CUDA graph on a GPU;
a capture that fails or replays wrongly leaves the eager step's run, with one warning."""

from __future__ import annotations

import copy
from typing import Callable, Optional

import pytest
import torch

from ferplus.engine import make_optimizer
from ferplus.labels import MODES, NUM_EMOTIONS
from ferplus.labels import get_mode
from ferplus.models import INPUT_SIZE, create_model
from ferplus.step import CudaGraphs, EagerStep, FastStep

BATCH = 4
STEPS = 3  # full minibatches, then one smaller one (an epoch's last)
LAST_BATCH = 3
LRS = (0.005, 0.005, 0.0025, 0.0005)  # a schedule change between steps
MODEL = "vgg13_small"  # with dropout, drawn inside the step
BN_MODEL = "vgg13_tiny"  # with batch norm, whose statistics the step updates


def minibatches(device: torch.device, mode: str, seed: int = 0) -> list:
    """``STEPS`` minibatches of ``BATCH`` and one of ``LAST_BATCH``: inputs, the mode's targets, labels."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for size in [BATCH] * STEPS + [LAST_BATCH]:
        inputs = torch.randn(size, 1, INPUT_SIZE, INPUT_SIZE, generator=generator)
        labels = torch.randint(0, NUM_EMOTIONS, (size,), generator=generator)
        if mode == "multi_target":  # every emotion a small share, the labelled one most
            targets = torch.full((size, NUM_EMOTIONS), 0.001).scatter_(1, labels[:, None], 0.993)
        else:
            targets = torch.softmax(3 * torch.randn(size, NUM_EMOTIONS, generator=generator), dim=1)
        batches.append(tuple(t.to(device) for t in (inputs, targets, labels)))
    return batches


def train_steps(step: EagerStep, batches: list, seed: int = 0) -> None:
    torch.manual_seed(seed)  # the dropout masks
    step.start_epoch()
    for lr, batch in zip(LRS, batches):
        step.set_lr(lr)
        step(*batch)


def train_both(eager: EagerStep, fast: EagerStep, batches: list) -> None:
    """The same minibatches, learning rates and dropout seed through the eager and the fast step."""
    train_steps(eager, batches)
    train_steps(fast, batches)


def pair(
    device: torch.device, mode: str, amp: bool = False, graph: bool = False, dropout: bool = True, model_name: str = MODEL,
    graphs=None,
):
    """An eager and a fast step over two identical copies of one freshly initialised network
    (``graphs``: the fast step's graph backend)."""
    torch.manual_seed(0)
    model = create_model(model_name).to(device, memory_format=torch.channels_last)
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    twin = copy.deepcopy(model)
    loss_fn = get_mode(mode).loss
    eager = EagerStep(model, make_optimizer(model, 0.005, 0.9), loss_fn, amp, channels_last=True)
    fast = FastStep(
        twin, make_optimizer(twin, 0.005, 0.9), loss_fn, BATCH, amp, channels_last=True, graph=graph, graphs=graphs
    )
    return eager, fast


def assert_same_state(eager: EagerStep, fast: FastStep, rtol: float, atol: float) -> None:
    for (name, a), b in zip(eager.model.state_dict().items(), fast.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    eager_state, fast_state = eager.optimizer.state_dict(), fast.optimizer.state_dict()
    assert fast_state["param_groups"] == eager_state["param_groups"]  # the learning rate included
    assert eager_state["state"].keys() == fast_state["state"].keys()
    for key, value in eager_state["state"].items():
        torch.testing.assert_close(fast_state["state"][key]["momentum_buffer"], value["momentum_buffer"], rtol=rtol, atol=atol)
    torch.testing.assert_close(fast.loss_sum, eager.loss_sum, rtol=rtol, atol=atol)
    assert fast.correct.item() == eager.correct.item()


@pytest.mark.parametrize("mode", MODES)
def test_fast_step_matches_eager_on_cpu(mode):
    device = torch.device("cpu")
    eager, fast = pair(device, mode)
    batches = minibatches(device, mode)
    train_both(eager, fast, batches)
    # Only the SGD update's rounding differs (one fused multiply-add against two roundings).
    assert_same_state(eager, fast, rtol=1e-3, atol=1e-5)
    assert fast.lr.item() == pytest.approx(LRS[-1])


def test_fast_step_updates_batch_norm_like_eager():
    device = torch.device("cpu")
    eager, fast = pair(device, "majority", model_name=BN_MODEL)
    batches = minibatches(device, "majority")
    train_both(eager, fast, batches)
    # Everything but the convolution biases that batch norm cancels: their gradients are
    # rounding noise, which the two updates round differently.
    cancelled = {f"{name}.bias" for name, module in eager.model.named_modules() if isinstance(module, torch.nn.Conv2d)}
    for (name, a), b in zip(eager.model.state_dict().items(), fast.model.state_dict().values()):
        if name in cancelled:
            continue
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(fast.loss_sum, eager.loss_sum, rtol=1e-5, atol=0)


#: How far the fast step's bf16 update of a tensor may be from the eager one's, relative to its size.
BF16_UPDATE_TOLERANCE = 0.05


def assert_same_updates(eager: EagerStep, fast: FastStep, start: dict, tolerance: float) -> None:
    """Each parameter moved from ``start`` alike in both steps: the difference of the two updates
    is within ``tolerance`` of the eager update's norm (weights themselves barely move in a few
    steps, so comparing them would not see a broken update)."""
    for (name, a), b in zip(eager.model.named_parameters(), fast.model.parameters()):
        eager_update, fast_update = a.detach() - start[name], b.detach() - start[name]
        assert eager_update.norm() > 0, name
        error = (fast_update - eager_update).norm() / eager_update.norm()
        assert error <= tolerance, f"{name}: the updates differ by {error:.3f} of the eager update"


def test_fast_step_matches_eager_under_cpu_bf16_autocast():
    device = torch.device("cpu")
    eager, fast = pair(device, "majority", amp=True)
    start = {name: p.detach().clone() for name, p in eager.model.named_parameters()}
    batches = minibatches(device, "majority")
    train_both(eager, fast, batches)
    assert_same_updates(eager, fast, start, BF16_UPDATE_TOLERANCE)
    eager_state, fast_state = eager.optimizer.state_dict(), fast.optimizer.state_dict()
    assert fast_state["param_groups"] == eager_state["param_groups"]
    torch.testing.assert_close(fast.loss_sum, eager.loss_sum, rtol=2e-2, atol=0)
    assert fast.correct.item() == eager.correct.item()


def test_fast_step_optimizer_state_saves_and_resumes():
    """The fast step keeps torch.optim.SGD's state: it saves, loads into a new run and continues alike."""
    device = torch.device("cpu")
    eager, fast = pair(device, "crossentropy")
    batches = minibatches(device, "crossentropy")
    train_steps(fast, batches[:2])
    model, optimizer_state = copy.deepcopy(fast.model.state_dict()), copy.deepcopy(fast.optimizer.state_dict())
    train_steps(fast, batches[2:], seed=1)

    resumed = create_model(MODEL).to(device, memory_format=torch.channels_last)
    resumed.load_state_dict(model)
    optimizer = make_optimizer(resumed, 0.005, 0.9)
    optimizer.load_state_dict(optimizer_state)
    continued = EagerStep(resumed, optimizer, get_mode("crossentropy").loss, channels_last=True)
    train_steps(continued, batches[2:], seed=1)
    for a, b in zip(fast.model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_fast_step_rejects_another_optimiser():
    model = create_model(MODEL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    with pytest.raises(ValueError, match="without dampening, Nesterov or weight decay"):
        FastStep(model, optimizer, get_mode("majority").loss, BATCH)


# --- a graph that fails or disagrees: the eager step, one warning -----------------------------------


class ReplayingGraphs:
    """A graph backend for the CPU whose "graph" is the step itself: replays exactly as eager."""

    def capture(self, step: Callable[[], None], warmup: int) -> Callable[[], None]:
        for _ in range(warmup):
            step()
        step()  # what a capture runs
        return step


class RaisingGraphs(ReplayingGraphs):
    """Warms up and gets through the step, then fails as a CUDA graph capture can."""

    def capture(self, step: Callable[[], None], warmup: int) -> Callable[[], None]:
        super().capture(step, warmup)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


class WrongGraphs(ReplayingGraphs):
    """Captures, then replays a wrong update (two steps for one)."""

    def capture(self, step: Callable[[], None], warmup: int) -> Callable[[], None]:
        super().capture(step, warmup)
        return lambda: (step(), step())


def assert_equal_state(a: EagerStep, b: EagerStep) -> None:
    """Bit for bit: weights, batch-norm statistics, momentum, learning rate and totals."""
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    state_a, state_b = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    for key, value in state_a["state"].items():
        assert torch.equal(value["momentum_buffer"], state_b["state"][key]["momentum_buffer"]), key
    assert torch.equal(a.loss_sum, b.loss_sum) and torch.equal(a.correct, b.correct)


@pytest.mark.parametrize("model_name", [MODEL, BN_MODEL])  # dropout; batch norm
@pytest.mark.parametrize(
    "graphs, warning",
    [(RaisingGraphs(), "warm-up or CUDA graph capture failed (RuntimeError: CUDA error: operation not permitted"),
     (WrongGraphs(), "first replay disagrees with the eager step (weights: relative difference")],
    ids=["capture raises", "replay wrong"],
)
def test_a_failed_graph_leaves_the_eager_steps_run_and_one_warning(graphs, warning, model_name, capsys):
    device = torch.device("cpu")
    eager, fast = pair(device, "majority", graph=True, graphs=graphs, model_name=model_name)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and warning in lines[0] and lines[0].endswith("the run goes on with the eager step")
    assert (fast.kind, fast.fallback) == ("eager", lines[0][len("warning: "):-len("; the run goes on with the eager step")])
    train_both(eager, fast, minibatches(device, "majority"))
    # Warm-up, capture and check are undone, dropout draws included: the eager step's run exactly.
    assert_equal_state(eager, fast)
    assert capsys.readouterr().err == ""


def test_a_graph_that_passes_its_check_changes_nothing_before_the_run(capsys):
    device = torch.device("cpu")
    _, uncaptured = pair(device, "majority", model_name=BN_MODEL)
    _, checked = pair(device, "majority", graph=True, graphs=ReplayingGraphs(), model_name=BN_MODEL)
    assert (checked.kind, checked.fallback, capsys.readouterr().err) == ("graph", None, "")
    batches = minibatches(device, "majority")
    train_steps(uncaptured, batches)
    train_steps(checked, batches)
    assert_equal_state(uncaptured, checked)


# --- the CUDA graph ----------------------------------------------------------------------------------


@pytest.fixture
def restored_cuda_flags():
    """Puts back the cuDNN and TF32 settings a test (or a train() it calls) changes."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32
    yield
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


@pytest.fixture
def exact_cuda(restored_cuda_flags):
    """fp32 convolutions and matmuls without TF32, so that eager and graph agree to float tolerance."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


class SyncingCudaGraphs(CudaGraphs):
    """The real capture of a step that reads a value back to the host, which CUDA refuses mid-capture
    (the capture is invalidated, and torch <= 2.12 leaves the generator flagged as capturing)."""

    def capture(self, step: Callable[[], None], warmup: int) -> Callable[[], None]:
        probe = torch.ones((), device=self.device)
        return super().capture(lambda: (step(), probe.item()), warmup)


@pytest.mark.cuda
def test_a_capture_cuda_refuses_leaves_the_eager_step_and_a_working_generator(exact_cuda, capsys):
    stream = torch.cuda.current_stream()
    eager, fast = pair(exact_cuda, "majority", graph=True, graphs=SyncingCudaGraphs(exact_cuda))
    (line,) = capsys.readouterr().err.splitlines()
    assert "capture failed" in line and fast.kind == "eager"
    assert not torch.cuda.is_current_stream_capturing() and torch.cuda.current_stream() == stream
    train_both(eager, fast, minibatches(exact_cuda, "majority"))  # draws dropout masks: the generator works
    assert_same_state(eager, fast, rtol=1e-3, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_graph_matches_eager(mode, exact_cuda):
    # Replays draw their dropout masks at the philox offsets eager steps would use, so the
    # masks agree too.
    eager, fast = pair(exact_cuda, mode, graph=True)
    assert fast.kind == "graph" and fast.replay is not None
    batches = minibatches(exact_cuda, mode)
    train_both(eager, fast, batches)
    assert_same_state(eager, fast, rtol=1e-3, atol=1e-5)


@pytest.mark.cuda
def test_graph_matches_eager_without_dropout(exact_cuda):
    eager, fast = pair(exact_cuda, "probability", graph=True, dropout=False)
    batches = minibatches(exact_cuda, "probability")
    train_both(eager, fast, batches)
    assert_same_state(eager, fast, rtol=1e-3, atol=1e-5)


@pytest.mark.cuda
def test_graph_matches_eager_under_bf16_autocast():
    device = torch.device("cuda")
    eager, fast = pair(device, "majority", amp=True, graph=True)
    batches = minibatches(device, "majority")
    train_both(eager, fast, batches)
    assert_same_state(eager, fast, rtol=2e-2, atol=2e-3)


@pytest.mark.cuda
def test_graph_replays_draw_fresh_dropout_masks_that_follow_the_seed():
    device = torch.device("cuda")
    _, fast = pair(device, "majority", graph=True)
    batch = minibatches(device, "majority")[0]
    start = copy.deepcopy(fast.model.state_dict())

    def update(seed: Optional[int]) -> torch.Tensor:
        """The parameters after one replay from the same start, reseeding first unless ``seed`` is None."""
        fast.model.load_state_dict(start)  # copies in place: the graph keeps its tensors
        for buffer in fast.buffers:
            buffer.zero_()
        if seed is not None:
            torch.manual_seed(seed)
        fast(*batch)
        return torch.cat([p.detach().flatten() for p in fast.params])

    first = update(0)
    following = update(None)  # the next replay without reseeding
    assert not torch.equal(following, first)  # fresh masks on every replay
    assert torch.equal(update(0), first)  # and the same ones again after the same seed
    assert not torch.equal(update(1), first)
