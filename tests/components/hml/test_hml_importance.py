"""MR formulas against hand computation: Fisher running mean, importance sign, normalisation, penalty."""
import math

import pytest
import torch

from components.errors import InputError
from components.hml.importance import fisher_running_mean, importance_increment, mr_loss, normalize_importance


def test_fisher_running_mean_is_the_mean_of_squared_grads():
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 2.0])]
    f = torch.zeros(2)
    for t, g in enumerate(grads, start=1):
        f = fisher_running_mean(f, g.pow(2), t)
    assert torch.allclose(f, torch.tensor([(1 + 9 + 1) / 3, (4 + 0 + 4) / 3]))
    with pytest.raises(InputError):
        fisher_running_mean(f, f, 0)


def test_importance_increment_sign_and_value():
    grad = torch.tensor([2.0, 2.0, -1.0])
    delta = torch.tensor([-0.5, 0.5, 0.25])  # 1st lowers the loss, 2nd raises it, 3rd lowers it
    fisher = torch.tensor([4.0, 4.0, 1.0])
    got = importance_increment(grad, delta, fisher, eps=0.0)
    # -g*d = 1.0 / (0.5*4*0.25 = 0.5) = 2 ; clamp 0 ; 0.25 / (0.5*1*0.0625) = 8
    assert torch.allclose(got, torch.tensor([2.0, 0.0, 8.0]))
    unmoved = importance_increment(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]), eps=1e-3)
    assert unmoved.item() == 0.0


def test_normalize_importance_hand_values_and_zeros():
    omega = torch.tensor([1.0, 1.0, 2.0, 0.0])  # P*w/sum = 1, 1, 2, 0
    got = normalize_importance(omega)
    want = [0.5, 0.5, 1 / (1 + math.exp(-math.log10(2.0))), 0.0]
    assert torch.allclose(got, torch.tensor(want))
    assert torch.equal(normalize_importance(torch.zeros(3)), torch.zeros(3))
    d = normalize_importance({"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[2.0, 0.0]])})
    assert torch.allclose(d["b"], got[2:].reshape(1, 2)) and torch.allclose(d["a"], got[:2])
    with pytest.raises(InputError):
        normalize_importance(torch.tensor([-1.0, 2.0]))


def test_mr_loss_hand_computation_and_missing_anchor():
    params = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    anchors = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.5])}
    fisher = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0])}
    imp = {"w": torch.tensor([0.5, 0.5]), "b": torch.tensor([0.0])}
    # (1.5*1 + 0.5*4 + 2*1) / 3
    assert mr_loss(params, anchors, fisher, imp).item() == pytest.approx(5.5 / 3)
    assert mr_loss(anchors, anchors, fisher, imp).item() == 0.0
    with pytest.raises(InputError):
        mr_loss(params, {"w": anchors["w"]}, fisher, imp)
