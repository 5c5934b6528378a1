"""Frequency bias from a hand-made dataset: counts of predicates and background per label pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.errors import InputError
from components.models.frequency import FrequencyBias, frequency_bias


def img(labels, rels):
    return {"labels": np.array(labels), "rels": np.array(rels, dtype=np.int64).reshape(-1, 3)}


def test_frequency_bias_hand_computed():
    # labels 1=man, 2=horse; predicates 1=on, 2=near.
    images = [img([1, 2], [(0, 1, 1)]),            # man-on-horse; horse->man background
              img([1, 2, 2], [(0, 1, 1), (0, 2, 2)])]  # man-on-horse, man-near-horse; 4 bg pairs
    fb = frequency_bias(iter(images), num_objects=2, num_predicates=2, smoothing=1.0)
    assert fb.shape == (3, 3, 3) and fb.dtype == np.float32
    # (man, horse): bg 0, on 2, near 1 -> +1 smoothing: 1, 3, 2 over 6
    np.testing.assert_allclose(np.exp(fb[1, 2]), [1 / 6, 3 / 6, 2 / 6], rtol=1e-6)
    # (horse, man): bg 1 + 2 = 3 -> 4, 1, 1 over 6
    np.testing.assert_allclose(np.exp(fb[2, 1]), [4 / 6, 1 / 6, 1 / 6], rtol=1e-6)
    # (horse, horse): 2 bg pairs (1,2),(2,1) -> 3, 1, 1 over 5
    np.testing.assert_allclose(np.exp(fb[2, 2]), [3 / 5, 1 / 5, 1 / 5], rtol=1e-6)
    np.testing.assert_allclose(np.exp(fb[1, 1]), [1 / 3] * 3, rtol=1e-6)  # unseen pair: uniform


def test_frequency_bias_rejects_bad_input():
    with pytest.raises(InputError, match="predicate out of range"):
        frequency_bias([img([1, 2], [(0, 1, 3)])], 2, 2)
    with pytest.raises(InputError, match="smoothing"):
        frequency_bias([], 2, 2, smoothing=0)


@pytest.mark.parametrize("rel", [(-1, 1, 1), (0, 2, 1), (1, 1, 1)])
def test_frequency_bias_rejects_relation_indices_outside_the_image_or_to_itself(rel):
    # -1 used to wrap to the last object, 2 (of 2 objects) gave a bare IndexError, (1, 1) counted a self-pair.
    images = [img([1, 2], [(0, 1, 1)]), dict(img([1, 2], [rel]), image_id="vg-7")]
    with pytest.raises(InputError, match=r"image 1 \(vg-7\): rels index an object outside the image or relate an "
                                         r"object to itself \(expected subject != object, indices in \[0, 2\)\)"):
        frequency_bias(images, 2, 2)


def test_frequency_module_looks_up_table():
    fb = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    mod = FrequencyBias(fb)
    out = mod(torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert out.tolist() == [fb[1, 0].tolist(), fb[0, 1].tolist()]
