"""Text encoders: shapes, role preservation (swapped subject/object differ), caches."""
import hashlib

import numpy as np
import pytest

from components.diffaug.text import GloVeEncoder, MiniLMEncoder, OpenCLIPEncoder, embed_triplets, triplet_text
from components.errors import InputError

SWAP = [("man", "on", "horse"), ("horse", "on", "man")]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


def test_triplet_text():
    assert triplet_text("soccer_ball", "on", "table") == "soccer ball on table"


def test_minilm_roles_and_shapes(minilm):
    pooled = minilm.encode_triplets(SWAP)
    assert pooled.shape == (2, 384) and minilm.dim == 384
    assert np.allclose(np.linalg.norm(pooled, axis=1), 1, atol=1e-5)
    assert not np.allclose(pooled[0], pooled[1], atol=1e-3)
    tok, mask = minilm.encode_triplet_tokens(SWAP + [("man", "wearing", "shirt")])
    assert tok.shape[0] == 3 and tok.shape[2] == 384 and mask.shape == tok.shape[:2]
    assert mask[:, 0].all() and not np.allclose(tok[0][mask[0]], tok[1][mask[1]])


def test_glove_mean_loses_roles_and_roles_mode_keeps_them():
    mean = GloVeEncoder(mode="mean")
    m = mean.encode_triplets(SWAP)
    assert np.allclose(m[0], m[1])  # the REFERENCE pitfall, reproduced on purpose
    roles = GloVeEncoder(mode="roles")
    r = roles.encode_triplets(SWAP)
    assert r.shape == (2, 150) and not np.allclose(r[0], r[1])
    assert np.allclose(r[0, :50], r[1, 100:])  # subject block of one = object block of the other
    tok, mask = roles.encode_triplet_tokens(SWAP)
    assert tok.shape == (2, 3, 53) and mask.all()
    with pytest.raises(InputError):
        roles.encode(["man on horse"])


def test_embed_triplets_cache(tmp_path):
    enc = GloVeEncoder(mode="roles")
    trip = [("man", "on", "horse"), ("man", "on", "horse"), ("horse", "on", "man")]
    e = embed_triplets(enc, trip, cache_dir=tmp_path)
    assert len(e.triplets) == 2 and e.pooled.shape == (2, 150)
    assert list(e.rows(trip)) == [0, 0, 1]
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as z:
        assert np.array_equal(z["pooled"], e.pooled)
    with pytest.raises(InputError):
        e.rows([("dog", "on", "cat")])
    pooled_only = embed_triplets(enc, trip, cache_dir=tmp_path, tokens=False)
    assert pooled_only.tokens is None and np.array_equal(pooled_only.pooled, e.pooled)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_embed_triplets_ignores_a_cache_entry_not_keyed_by_this_code(tmp_path):
    """An entry named as before the source fingerprint was keyed in (texts only) holds embeddings of unknown
    code: it is never read."""
    enc = GloVeEncoder(mode="roles")
    trip = [("dog", "near", "cat"), ("cat", "under", "table")]
    texts_only = hashlib.sha256("\n".join("\t".join(t) for t in trip).encode()).hexdigest()[:16]
    np.savez(tmp_path / f"{enc.key}-pooled-{texts_only}.npz", pooled=np.zeros((2, 150), np.float32))
    e = embed_triplets(enc, trip, cache_dir=tmp_path, tokens=False)
    assert np.allclose(e.pooled, enc.encode_triplets(trip)) and np.abs(e.pooled).sum() > 0
    assert len(list(tmp_path.glob("*.npz"))) == 2  # its own entry, beside the stale one


def test_openclip_random_tiny_model():
    enc = OpenCLIPEncoder("ViT-S-32", pretrained=None)  # random weights: checks plumbing, not semantics
    pooled = enc.encode_triplets(SWAP)
    assert pooled.shape == (2, enc.dim) and not np.allclose(pooled[0], pooled[1])
    tok, mask = enc.encode_triplet_tokens(SWAP)
    assert tok.shape[0] == 2 and tok.shape[2] == enc.dim and mask.sum(1).min() >= 5  # sot + 3 words + eot
