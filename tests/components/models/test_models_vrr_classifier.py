"""VRR classifier: output shapes, cosine-logit bound, errors."""
import warnings

import numpy as np
import pytest
import torch

from components.errors import InputError
from components.models.vrr_classifier import VRRClassifier


def test_shapes_and_cosine_bound():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = VRRClassifier(16, rng.normal(size=(7, 5)), rng.normal(size=(4, 5)), embed_dim=8, hidden=12).eval()
    x = [torch.randn(3, 16) for _ in range(3)]
    out = m(*x)
    assert out["subject"].shape == (3, 7) and out["object"].shape == (3, 7) and out["relation"].shape == (3, 4)
    scale = float(m.log_scale.detach().exp())
    assert scale == pytest.approx(16.0)
    for v in out.values():
        assert v.abs().max() <= scale + 1e-4  # scaled cosine
    out["relation"].sum().backward()
    assert m.predicate_classes[0].weight.grad is not None and m.log_scale.grad is not None


def test_swapping_subject_object_changes_relation_logits():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = VRRClassifier(8, rng.normal(size=(3, 4)), rng.normal(size=(2, 4)), embed_dim=8, hidden=8).eval()
    a, b, u = (torch.randn(2, 8) for _ in range(3))
    assert not torch.allclose(m(a, b, u)["relation"], m(b, a, u)["relation"])


def test_errors():
    with pytest.raises(InputError):
        VRRClassifier(8, np.zeros((3, 4)), np.zeros((2, 5)))
    m = VRRClassifier(8, np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(InputError):
        m(torch.zeros(2, 8), torch.zeros(2, 7), torch.zeros(2, 8))


def test_read_only_word_vectors_are_copied_without_warning():
    """Vectors arrive as read-only views of Ray's object store: the model copies them (no PyTorch warning about
    non-writable arrays, no buffer sharing their memory)."""
    ov, pv = np.ones((4, 6), np.float32), np.ones((3, 6), np.float32)
    ov.flags.writeable = pv.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = VRRClassifier(5, ov, pv, embed_dim=4, hidden=8)
    assert not np.shares_memory(m.object_vectors.numpy(), ov)
    assert torch.equal(m.predicate_vectors, torch.ones(3, 6))
