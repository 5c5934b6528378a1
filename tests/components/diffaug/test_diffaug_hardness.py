"""Hardness vectors: shape, L1 normalisation and its rescaling by K, distances to the centres."""
import numpy as np
import pytest

from components.diffaug.hardness import HardnessModel, fit_hardness
from components.errors import InputError


def test_shape_and_normalisation():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (30, 4)), rng.normal(5, 0.1, (30, 4))])
    model = fit_hardness(x, k=2, seed=0)
    h = model(x)
    assert h.shape == (60, 2)
    assert np.allclose(h.sum(1), 2.0, atol=1e-5)  # L1-normalised x K
    raw = HardnessModel(model.centres, rescale=False)(x)
    assert np.allclose(raw.sum(1), 1.0, atol=1e-6) and np.allclose(raw * 2, h, atol=1e-6)
    # a point near one centre has a small entry for it
    near = int(np.argmin(np.linalg.norm(model.centres - x[0], axis=1)))
    assert h[0, near] < h[0, 1 - near]


def test_hand_computed_distances():
    model = HardnessModel(np.array([[0.0, 0.0], [3.0, 4.0]]), rescale=False)
    assert np.allclose(model(np.array([[0.0, 0.0]])), [[0.0, 1.0]])
    assert np.allclose(model(np.array([[3.0, 0.0]])), [[3 / 7, 4 / 7]])


def test_k_capped_and_errors():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert fit_hardness(x, k=10).k == 2
    with pytest.raises(InputError):
        fit_hardness(x[:1], k=2)
    with pytest.raises(InputError):
        fit_hardness(x, k=2)(np.zeros((1, 3)))
