"""Pair sampling invariants: GT pairs kept up to the cap, no self pairs, background 0, label_map, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.errors import InputError
from components.models.pairs import all_pairs, sample_pairs


def make_image(n: int, rels: list[tuple[int, int, int]], dim: int = 4, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    xy = r.uniform(0, 50, (n, 2))
    boxes = np.concatenate([xy, xy + r.uniform(5, 40, (n, 2))], 1).astype(np.float32)
    return {"image_id": f"img{seed}", "split": "train", "width": 100, "height": 90, "boxes": boxes,
            "labels": r.integers(1, 6, n), "obj_features": r.normal(size=(n, dim)).astype(np.float32),
            "rels": np.asarray(rels, dtype=np.int64).reshape(-1, 3),
            "rel_fine": np.asarray([t[2] for t in rels], dtype=np.int64)}


IMAGES = [make_image(5, [(0, 1, 3), (1, 2, 1), (0, 1, 2), (4, 0, 5)], seed=1),
          make_image(3, [(2, 0, 4)], seed=2),
          make_image(7, [], seed=3)]


def per_image(batch, b):
    offset = int((batch.obj_to_img < b).sum())
    m = batch.pair_to_img == b
    return batch.pairs[m] - offset, batch.pair_labels[m]


def test_sample_pairs_invariants():
    batch = sample_pairs(IMAGES, np.random.default_rng(0), max_bg_per_image=1000)
    assert batch.obj_features.shape == (15, 4) and batch.num_images == 3
    assert (batch.pairs[:, 0] != batch.pairs[:, 1]).all()
    assert (batch.obj_to_img[batch.pairs[:, 0]] == batch.pair_to_img).all()
    assert (batch.obj_to_img[batch.pairs[:, 1]] == batch.pair_to_img).all()
    for b, img in enumerate(IMAGES):
        pairs, labels = per_image(batch, b)
        n = len(img["labels"])
        keys = [tuple(p) for p in pairs.tolist()]
        assert len(set(keys)) == len(keys) == n * (n - 1)  # bg cap above N(N-1): every pair once
        gt = {}
        for s, o, p in img["rels"].tolist():
            gt.setdefault((s, o), set()).add(p)
        for key, lab in zip(keys, labels.tolist()):
            assert (lab in gt[key]) if key in gt else lab == 0


def test_bg_cap_and_random_predicate_choice():
    seen = set()
    for seed in range(30):
        batch = sample_pairs(IMAGES[:1], np.random.default_rng(seed), max_bg_per_image=4)
        pairs, labels = per_image(batch, 0)
        assert (labels == 0).sum() == 4 and (labels > 0).sum() == 3
        seen.add(int(labels[[tuple(p) == (0, 1) for p in pairs.tolist()]][0]))
    assert seen == {2, 3}  # the pair (0,1) has two GT predicates: both get drawn across steps


def test_fg_cap_keeps_stage_pairs_first():
    lm = np.array([0, -1, -1, -1, -1, 1])  # only predicate 5 is in the stage
    batch = sample_pairs(IMAGES[:1], np.random.default_rng(0), max_fg_per_image=1, max_bg_per_image=0,
                         label_map=lm)
    assert batch.pairs.tolist() == [[4, 0]] and batch.pair_labels.tolist() == [1]


def test_label_map_ignores_and_relabels():
    lm = np.array([0, -1, -1, 1, 2, -1])  # stage keeps predicates 3 and 4 as labels 1 and 2
    for seed in range(10):
        batch = sample_pairs(IMAGES, np.random.default_rng(seed), max_bg_per_image=2, label_map=lm)
        got = {(int(b), tuple(p)): int(l) for b, p, l in
               zip(batch.pair_to_img, batch.pairs.tolist(), batch.pair_labels)}
        assert got[(0, (0, 1))] == 1  # (0,1) has predicates 3 (kept) and 2 (ignored): kept wins
        assert got[(0, (1, 2))] == -1 and got[(0, (4, 0))] == -1
        assert got[(1, (7, 5))] == 2  # image 1 objects start at 5
        assert sum(1 for (b, _), l in got.items() if l == 0) == 6


def test_determinism_given_rng():
    a = sample_pairs(IMAGES, np.random.default_rng(7), max_bg_per_image=3)
    b = sample_pairs(IMAGES, np.random.default_rng(7), max_bg_per_image=3)
    c = sample_pairs(IMAGES, np.random.default_rng(8), max_bg_per_image=3)
    assert torch.equal(a.pairs, b.pairs) and torch.equal(a.pair_labels, b.pair_labels)
    assert not torch.equal(a.pairs, c.pairs)


def test_all_pairs_counts_and_labels():
    batch = all_pairs(IMAGES)
    assert len(batch.pairs) == 5 * 4 + 3 * 2 + 7 * 6
    assert (batch.pairs[:, 0] != batch.pairs[:, 1]).all()
    labels = {(int(b), tuple(p)): int(l) for b, p, l in zip(batch.pair_to_img, batch.pairs.tolist(), batch.pair_labels)}
    assert labels[(0, (0, 1))] == 3 and labels[(0, (4, 0))] == 5 and labels[(1, (7, 5))] == 4
    assert sum(v > 0 for v in labels.values()) == 4


def test_bad_inputs_raise():
    bad = dict(IMAGES[0], rels=np.array([[0, 9, 1]]))
    with pytest.raises(InputError, match="outside the image"):
        sample_pairs([bad], np.random.default_rng(0))
    with pytest.raises(InputError, match="label_map"):
        sample_pairs(IMAGES, np.random.default_rng(0), label_map=np.array([0, 1, 2]))
    with pytest.raises(InputError, match="empty"):
        all_pairs([])
