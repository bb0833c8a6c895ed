"""The pure tensor metrics and classification accuracy."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.eval import accuracy, cosine_agreement, kl_divergence, top1_agreement


def test_kl_divergence_by_hand():
    ref = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    q = torch.tensor([[1.5, 1.0, 0.0], [0.0, 1.0, 2.0]])
    expected = 0.0
    for row_p, row_q in zip(ref.tolist(), q.tolist()):
        zp, zq = sum(math.exp(x) for x in row_p), sum(math.exp(x) for x in row_q)
        expected += sum(
            math.exp(a) / zp * (a - math.log(zp) - b + math.log(zq)) for a, b in zip(row_p, row_q)
        )
    assert kl_divergence(ref, q) == pytest.approx(expected / 2, rel=1e-5)
    assert kl_divergence(ref, ref) == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(ref, ref + 3.0) == pytest.approx(0.0, abs=1e-6)  # shift-invariant


def test_top1_agreement():
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [5.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 1.0], [2.0, 3.0], [1.0, 4.0]])
    assert top1_agreement(a, b) == 0.5
    assert top1_agreement(a, a) == 1.0


def test_cosine_agreement():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_agreement(a, 3 * a) == pytest.approx(1.0)
    assert cosine_agreement(a, -a) == pytest.approx(-1.0)
    assert cosine_agreement(a, torch.tensor([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [kl_divergence, top1_agreement, cosine_agreement])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(2, 3), torch.zeros(3, 3))


def test_accuracy_tensors_and_loader():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    inputs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    result = accuracy(model, (inputs, labels), batch_size=2)
    assert (result.accuracy, result.num_correct, result.num_samples) == (0.8, 4, 5)
    loader = [(inputs[:3], labels[:3]), (inputs[3:], labels[3:])]
    assert accuracy(model, loader) == result
    assert result.as_dict() == {"accuracy": 0.8, "num_correct": 4, "num_samples": 5}
    with pytest.raises(ValueError, match="labels"):
        accuracy(model, (inputs, labels[:3]))
