"""On a GPU, steady-state training epochs make no host synchronisation, and augmentation made ahead
on a side stream serves the minibatches it would serve made in turn (cuda-marked: skipped here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ferplus.data as data
from ferplus.data import SPLIT_FOLDERS, TrainStream, read_folder
from ferplus.engine import epoch_seed, learning_rate, make_optimizer, train_one_epoch
from ferplus.labels import get_mode
from ferplus.models import create_model
from ferplus.step import make_step

#: Images per augmentation chunk here: several chunks per epoch, so that one is made while another trains.
SMALL_CHUNK = 64


@pytest.fixture
def cuda_stream(small_data: Path, monkeypatch: pytest.MonkeyPatch) -> TrainStream:
    monkeypatch.setattr(data, "CHUNK_IMAGES", SMALL_CHUNK)
    return TrainStream(read_folder(small_data / SPLIT_FOLDERS["train"]), "probability", 32, "cuda")


@pytest.mark.cuda
def test_steady_state_epochs_make_no_host_sync(cuda_stream):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model("vgg13").to(device, memory_format=torch.channels_last)
    step = make_step("graph", model, model, make_optimizer(model, 0.005, 0.9), get_mode("probability").loss, 32,
                     amp=True, channels_last=True)
    assert step.kind == "graph"

    def epoch(number: int) -> None:  # what the engine does in an epoch, up to its one read of the totals
        step.set_lr(learning_rate(0.005, number))
        torch.manual_seed(epoch_seed(0, number, 0))
        for _ in train_one_epoch(step, cuda_stream, number):
            pass

    epoch(0)  # set-up: allocations, cuDNN autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for number in (1, 2):
            epoch(number)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(step.loss_sum).item()


@pytest.mark.cuda
def test_chunks_made_ahead_are_not_overwritten_while_in_use(cuda_stream):
    """The caller's stream is kept busy after each minibatch, so that the side stream runs far
    ahead: a chunk freed or reused too early would change the minibatches served."""
    quick = [tuple(t.clone() for t in batch) for batch in cuda_stream.epoch(3)]
    busy = torch.randn(4096, 4096, device="cuda")
    slow = []
    for batch in cuda_stream.epoch(3):
        for _ in range(20):
            busy = busy @ busy / busy.norm()
        slow.append(tuple(t.clone() for t in batch))
    assert len(quick) == len(slow) == len(cuda_stream) > 150 // SMALL_CHUNK
    for a, b in zip(quick, slow):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
