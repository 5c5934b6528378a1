"""Copy rate of generated features: nearest same-label training distances by hand, scale set by real held-out."""
from __future__ import annotations

import numpy as np
import pytest

from components.diffaug.fidelity import (
    copy_rate,
    copy_threshold,
    nearest_same_label_distance,
    spread_ratio,
    spread_warning,
)
from components.errors import InputError

TRAIN = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
TRAIN_LABELS = np.array([0, 1, 1])


def test_nearest_distance_only_counts_training_samples_of_the_same_label():
    feats = np.array([[9.0, 0.0], [0.0, 7.0], [1.0, 1.0], [5.0, 5.0]], np.float32)
    got = nearest_same_label_distance(feats, np.array([0, 1, 1, 2]), TRAIN, TRAIN_LABELS)
    # [9, 0] is 1 from a label-1 sample but labelled 0: its distance is to [0, 0]
    np.testing.assert_allclose(got[:3], [9.0, 3.0, np.sqrt(82.0)], rtol=1e-6)
    assert np.isinf(got[3])  # label 2 has no training sample


def test_copy_rate_by_hand():
    real = np.array([[2.0, 0.0], [10.0, 2.0], [0.0, 8.0], [0.5, 0.0]], np.float32)  # 2, 2, 2, 0.5 from their nearest
    threshold, real_rate = copy_threshold(TRAIN, TRAIN_LABELS, real, np.array([0, 1, 1, 0]))
    assert threshold == pytest.approx(1.0)  # 0.5 x median 2
    assert real_rate == pytest.approx(1 / 4)  # [0.5, 0] is a real sample within the threshold
    gen = np.array([[0.5, 0.0], [3.0, 0.0], [10.0, 0.1], [0.0, 0.2], [4.0, 4.0]], np.float32)
    # [0.5, 0] (0.5) and [10, 0.1] (0.1) are copies; [3, 0] is 3 away; [0, 0.2] has no label-2 sample;
    # [4, 4] is 7.2 from both label-1 samples
    assert copy_rate(gen, np.array([0, 0, 1, 2, 1]), TRAIN, TRAIN_LABELS, threshold) == pytest.approx(2 / 5)
    assert copy_rate(TRAIN, TRAIN_LABELS, TRAIN, TRAIN_LABELS, threshold) == 1.0
    assert copy_rate(gen, np.array([0, 0, 1, 2, 1]), TRAIN, TRAIN_LABELS, 0.05) == 0.0


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="same D"):
        nearest_same_label_distance(np.zeros((2, 3)), np.zeros(2), TRAIN, TRAIN_LABELS)
    with pytest.raises(InputError, match="one label per row"):
        nearest_same_label_distance(np.zeros((2, 2)), np.zeros(3), TRAIN, TRAIN_LABELS)
    with pytest.raises(InputError, match="overlapping labels"):
        copy_threshold(TRAIN, TRAIN_LABELS, np.zeros((1, 2)), np.array([5]))


def test_spread_ratio_by_hand():
    real = np.array([[0.0, 0.0], [2.0, 4.0]])  # per-dim std 1 and 2: mean 1.5
    gen = np.array([[0.0, 1.0], [6.0, 1.0]])  # per-dim std 3 and 0: mean 1.5
    assert spread_ratio(gen, real) == pytest.approx(1.0)
    assert spread_ratio(10 * gen, real) == pytest.approx(10.0)
    with pytest.raises(InputError, match="zero spread"):
        spread_ratio(gen, np.ones((3, 2)))
    with pytest.raises(InputError, match="generated and"):
        spread_ratio(np.zeros((2, 3)), real)


def test_spread_warning_only_outside_the_bounds():
    assert spread_warning(1.0) is None and spread_warning(3.0) is None and spread_warning(0.34) is None
    assert "31.00x" in spread_warning(31.0) and "diffusion.lr" in spread_warning(31.0)
    assert "collapsed" in spread_warning(0.1)
