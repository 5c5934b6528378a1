"""Pair geometry on hand-computed boxes."""
from __future__ import annotations

import math

import torch

from components.models.geometry import PAIR_GEOMETRY_DIM, pair_geometry, pair_iou


def test_pair_geometry_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])
    g = pair_geometry(boxes, torch.tensor([0, 0]), torch.tensor([[100.0, 50.0]]), torch.tensor([[0, 1], [1, 0]]))
    assert g.shape == (2, PAIR_GEOMETRY_DIM)
    assert torch.allclose(g[0, :5], torch.tensor([0.0, 0.0, 0.1, 0.2, 100 / 5000]))
    dx, dy = 15 - 5, 10 - 5
    iou = 25 / (100 + 200 - 25)
    expect = torch.tensor([dx / 10, dy / 10, math.log(2.0), 0.0, iou, dx / 100, dy / 50])
    assert torch.allclose(g[0, 10:], expect, atol=1e-6)
    assert torch.allclose(g[1, 10:], torch.tensor([-dx / 20, -dy / 10, math.log(0.5), 0.0, iou, -dx / 100, -dy / 50]))


def test_iou_disjoint_and_degenerate_boxes_are_finite():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    b = torch.tensor([[2.0, 2.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]])
    assert pair_iou(a, b).tolist() == [0.0, 0.0]
    g = pair_geometry(torch.cat([a, b]), torch.zeros(4, dtype=torch.long), torch.tensor([[10.0, 10.0]]),
                      torch.tensor([[1, 3], [0, 2]]))
    assert torch.isfinite(g).all()
