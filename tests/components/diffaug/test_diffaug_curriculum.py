"""Curriculum: easy (low hardness entropy) half first, median split, scale-free entropy."""
import numpy as np

from components.diffaug.curriculum import curriculum_order, hardness_entropy


def test_entropy_by_hand():
    h = np.array([[1.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    assert np.allclose(hardness_entropy(h), [np.log(2), 0.0, np.log(2)])


def test_order_easy_then_hard():
    h = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [4, 3, 2, 1], [9, 0, 0, 1], [1, 1, 1, 0]], float)
    ent = hardness_entropy(h)
    order = curriculum_order(h)
    assert sorted(order.tolist()) == list(range(6))
    assert ent[order[:3]].max() <= np.median(ent) < ent[order[3:]].min()
    shuffled = curriculum_order(h, np.random.default_rng(1))
    assert set(shuffled[:3].tolist()) == set(order[:3].tolist())
