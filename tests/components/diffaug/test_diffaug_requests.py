"""Sampling plan (half per tail band), box-feature draws consistent with the S-O seed, real-data control."""
import numpy as np
import pytest

from components.diffaug.finetune import RelationSet
from components.diffaug.requests import (
    class_feature_pools,
    draw_box_features,
    generated_set,
    real_control,
    sampling_plan,
    tail_triplet_pools,
)
from components.diffaug.seeds import subject_object_seed
from components.errors import DataError

REL_COUNTS = np.array([1000] + [50] * 3 + [1] * 16)  # 20 predicates: p0 many, p1-3 medium, p4-19 few


def toy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    s, o = rng.integers(0, 4, n), rng.integers(0, 4, n)
    p = rng.choice([0, 1, 2, 5, 6], n)
    f = lambda: rng.normal(size=(n, 3)).astype(np.float32)
    return RelationSet(f(), f(), f(), s, o, p)


def test_pools_and_plan():
    trip = np.array([[0, 0, 1], [0, 1, 1], [2, 5, 3], [2, 5, 3], [9, 6, 0]])  # class 9 has no features
    pools = tail_triplet_pools(trip, REL_COUNTS, {0: 1, 1: 1, 2: 1, 3: 1})
    assert pools["medium"].tolist() == [[0, 1, 1]] and pools["few"].tolist() == [[2, 5, 3]]
    plan = sampling_plan(pools, 11, seed=0)
    assert (plan["band"] == "few").sum() == 6 and (plan["band"] == "medium").sum() == 5  # odd one to "few"
    assert plan["sample_id"].tolist() == list(range(11))
    assert set(plan["predicate"][plan["band"] == "few"].tolist()) == {5}
    only_few = sampling_plan({"few": pools["few"], "medium": pools["medium"][:0]}, 4, seed=0)
    assert (only_few["band"] == "few").all() and len(only_few["band"]) == 4
    with pytest.raises(DataError):
        sampling_plan({"few": pools["few"][:0]}, 4, seed=0)


def test_box_draws_match_seed():
    data = toy()
    pools = class_feature_pools(data)
    assert sum(len(v) for v in pools.values()) == 2 * len(data)
    subj, obj, ids = np.array([0, 1, 2]), np.array([3, 3, 1]), np.array([7, 8, 9])
    seeds = subject_object_seed(pools, pools, subj, obj, ids, seed=4)
    s = draw_box_features(pools, subj, ids, 4, 0)
    o = draw_box_features(pools, obj, ids, 4, 1)
    assert np.allclose(seeds, (s + o) / 2)
    plan = {"sample_id": ids, "subject": subj, "object": obj, "predicate": np.array([5, 5, 1])}
    g = generated_set(plan, np.ones((3, 3)), pools, 4)
    assert np.allclose(g.subject_feature, s) and (g.union_feature == 1).all() and g.predicate.tolist() == [5, 5, 1]


def test_real_control_is_balanced_tail():
    data = toy(2000)
    ctl = real_control(data, REL_COUNTS, 1000, seed=0)
    assert len(ctl) == 1000 and not np.isin(ctl.predicate, [0]).any()
    few, med = np.isin(ctl.predicate, [5, 6]), np.isin(ctl.predicate, [1, 2])
    assert few.sum() == 500 and med.sum() == 500
    assert abs((ctl.predicate == 5).sum() - 250) < 60  # uniform over the band's present predicates
