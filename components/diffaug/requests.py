"""What DiffAugment samples and what it fine-tunes on: tail triplet pools, the sampling plan, box-feature
draws for generated samples, and the real-data control with the same budget.

Plan (paper: 96K = 48K for few-relation + 48K for medium-relation triplets): `n` requests split evenly
between the two bands; each request picks a triplet uniformly (with replacement) from its band's pool =
distinct training triplets + augmented triplets whose predicate is in the band and whose subject and
object classes have box features (a band with an empty pool passes its budget to the other). Sample ids
are 0..n-1 in plan order. The diffusion model generates only the union (relation) feature; a generated
sample's subject and object features are real training box features of its classes, picked by
`seeds.sample_rng(seed, id, 0/1)`: the same boxes whose mean is the subject-object seed.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from components.diffaug.augment import frequency_bands
from components.diffaug.finetune import RelationSet
from components.diffaug.seeds import sample_rng
from components.errors import DataError

PLAN_BANDS = ("few", "medium")


def class_feature_pools(data: RelationSet) -> dict[int, np.ndarray]:
    """Class -> (n_c, D) box features of that class (subject and object boxes alike)."""
    labels = np.concatenate([data.subject, data.object])
    feats = np.concatenate([data.subject_feature, data.object_feature])
    return {int(c): feats[labels == c] for c in np.unique(labels)}


def tail_triplet_pools(triplets: np.ndarray, rel_counts: np.ndarray,
                       has_features: Mapping[int, object]) -> dict[str, np.ndarray]:
    """Band -> (M, 3) distinct (subject, predicate, object) triplets with a few/medium predicate and featured classes."""
    trip = np.unique(np.asarray(triplets, np.int64).reshape(-1, 3), axis=0)
    ok = np.array([int(s) in has_features and int(o) in has_features for s, _, o in trip], bool).reshape(-1)
    band = frequency_bands(rel_counts)[trip[:, 1]] if len(trip) else np.zeros(0, object)
    return {b: trip[ok & (band == b)] for b in PLAN_BANDS}


def sampling_plan(pools: Mapping[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """n requests (sample_id, subject, predicate, object, band), half per band, triplets drawn uniformly."""
    nonempty = [b for b in PLAN_BANDS if len(pools.get(b, ())) > 0]
    if not nonempty:
        raise DataError("tail triplet pools", "no few- or medium-relation triplet has box features for both classes",
                        "training data with tail relations")
    rng = np.random.default_rng([seed, 31])
    share = {b: n // len(nonempty) + (1 if i < n % len(nonempty) else 0) for i, b in enumerate(nonempty)}
    rows = [pools[b][rng.integers(len(pools[b]), size=share[b])] for b in nonempty]
    trip = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
    band = np.concatenate([np.full(share[b], b, dtype=object) for b in nonempty])
    return {"sample_id": np.arange(len(trip), dtype=np.int64), "subject": trip[:, 0], "predicate": trip[:, 1],
            "object": trip[:, 2], "band": band}


def draw_box_features(pools: Mapping[int, np.ndarray], classes: np.ndarray, sample_ids: np.ndarray,
                      seed: int, stream: int) -> np.ndarray:
    """(N, D) one real box feature of each sample's class, picked by sample_rng(seed, id, stream)."""
    return np.stack([pools[int(c)][sample_rng(seed, int(i), stream).integers(len(pools[int(c)]))]
                     for c, i in zip(classes, sample_ids)]).astype(np.float32)


def generated_set(plan: Mapping[str, np.ndarray], union: np.ndarray, pools: Mapping[int, np.ndarray],
                  seed: int, hardness: np.ndarray | None = None) -> RelationSet:
    """Generated union features + drawn real subject/object box features, labelled by the plan."""
    ids = plan["sample_id"]
    return RelationSet(draw_box_features(pools, plan["subject"], ids, seed, 0),
                       draw_box_features(pools, plan["object"], ids, seed, 1), np.asarray(union, np.float32),
                       plan["subject"], plan["object"], plan["predicate"], hardness)


def real_control(train: RelationSet, rel_counts: np.ndarray, n: int, seed: int) -> RelationSet:
    """The control the paper lacks: n REAL training samples, half per tail band, uniform over the band's
    predicates then over each predicate's samples (relation-balanced, with replacement)."""
    bands = frequency_bands(rel_counts)
    rng = np.random.default_rng([seed, 37])
    present = [b for b in PLAN_BANDS if np.isin(train.predicate, np.flatnonzero(bands == b)).any()]
    if not present:
        raise DataError("training data", "has no few- or medium-relation sample", "tail relations in train")
    idx = []
    for i, b in enumerate(present):
        k = n // len(present) + (1 if i < n % len(present) else 0)
        preds = np.intersect1d(np.flatnonzero(bands == b), train.predicate)
        by_pred = {int(p): np.flatnonzero(train.predicate == p) for p in preds}
        for p in rng.choice(preds, size=k):
            idx.append(rng.choice(by_pred[int(p)]))
    return train.subset(np.array(idx, np.int64))
