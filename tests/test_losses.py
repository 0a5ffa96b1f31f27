"""The losses against hand-computed values, the learning-rate schedule, and the optimiser recipe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ferplus.engine import learning_rate, make_optimizer
from ferplus.labels import MODES, get_mode
from ferplus.losses import multi_target_loss

soft_cross_entropy = get_mode("crossentropy").loss

LOG3 = math.log(3.0)
MULTI_TARGET_EPSILON = 0.001  # what the reader mixes into multi_target targets


def test_soft_cross_entropy_hand_values():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[0.0, LOG3], [0.0, LOG3]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    row0 = math.log(4.0)
    row1 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_soft_cross_entropy_uniform_scores_give_log_classes():
    targets = torch.tensor([[0.5, 0.25, 0.25, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1.0]])
    assert soft_cross_entropy(torch.zeros(2, 8), targets).item() == pytest.approx(math.log(8.0), rel=1e-6)


def test_multi_target_loss_hand_values():
    logits = torch.tensor([[0.0, LOG3], [0.0, LOG3]])
    eps = MULTI_TARGET_EPSILON
    # Row 0: both emotions named → max(0.25, 0.75) = 0.75. Row 1: only the first → max(0.25, eps·0.75) = 0.25.
    targets = torch.tensor([[1.0, 1.0], [(1 - eps) * 1 + eps, eps]])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert multi_target_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_multi_target_loss_is_stable_where_softmax_underflows():
    # softmax gives exactly [1, 0]; the only named emotion has probability e^-2000, so
    # the loss is 2000, where a product of probabilities would give log(0) = inf.
    logits = torch.tensor([[1000.0, -1000.0]])
    targets = torch.tensor([[0.0, 1.0]])
    assert multi_target_loss(logits, targets).item() == pytest.approx(2000.0, rel=1e-6)


def test_each_mode_has_its_loss():
    assert [get_mode(name).loss for name in MODES] == [
        soft_cross_entropy, soft_cross_entropy, soft_cross_entropy, multi_target_loss
    ]
    with pytest.raises(ValueError, match="unknown mode 'plurality'; choose one of majority, "):
        get_mode("plurality")


def test_library_cross_entropy_equals_the_written_out_formula():
    """The distribution modes' loss is F.cross_entropy with probability targets: the same numbers,
    and the same gradients, as the formula -sum_k t_k log softmax(z)_k written out."""
    generator = torch.Generator().manual_seed(0)
    logits = (5 * torch.randn(64, 8, generator=generator)).requires_grad_(True)
    targets = torch.softmax(3 * torch.randn(64, 8, generator=generator), dim=1)
    targets[:16] = torch.eye(8)[torch.randint(0, 8, (16,), generator=generator)]  # one-hot rows too
    written_out = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    (grad_written,) = torch.autograd.grad(written_out, logits)
    library = soft_cross_entropy(logits, targets)
    (grad_library,) = torch.autograd.grad(library, logits)
    torch.testing.assert_close(library, written_out, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_library, grad_written, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "epoch, factor",
    [(0, 1.0), (19, 1.0), (20, 0.5), (39, 0.5), (40, 0.1), (99, 0.1)],
)
def test_learning_rate_schedule_counts_epochs_from_zero(epoch, factor):
    assert learning_rate(0.005, epoch) == pytest.approx(0.005 * factor)


def test_sgd_matches_the_reference_unit_gain_momentum_update():
    """The reference: unit-gain momentum, rate 0.05 per minibatch, on the minibatch-mean gradient:
    v = m·v + (1 − m)·0.05·g; w −= v. The trainer's SGD(lr=0.005, momentum=0.9) must do the same."""
    reference_lr_per_minibatch, momentum, batch, steps = 0.05, 0.9, 32, 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 8))
    initial = [p.detach().clone() for p in model.parameters()]
    by_hand = [p.clone() for p in initial]
    velocity = [torch.zeros_like(p) for p in by_hand]
    optimizer = make_optimizer(model, lr=0.005, momentum=momentum)
    data = [(torch.randn(batch, 6), torch.softmax(torch.randn(batch, 8), dim=1)) for _ in range(steps)]

    for inputs, targets in data:
        # By hand, on a functional copy of the weights.
        params = [p.clone().requires_grad_(True) for p in by_hand]
        hidden = torch.relu(inputs @ params[0].T + params[1])
        loss = soft_cross_entropy(hidden @ params[2].T + params[3], targets)
        grads = torch.autograd.grad(loss, params)
        for i, g in enumerate(grads):
            velocity[i] = momentum * velocity[i] + (1 - momentum) * reference_lr_per_minibatch * g
            by_hand[i] = by_hand[i] - velocity[i]
        # The trainer's optimiser.
        optimizer.zero_grad()
        soft_cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    for trained, expected in zip(model.parameters(), by_hand):
        torch.testing.assert_close(trained.detach(), expected, rtol=1e-5, atol=1e-7)
    # The steps moved every weight, so the comparison above is not trivially true.
    assert all((p.detach() - q).abs().max() > 1e-4 for p, q in zip(model.parameters(), initial))
