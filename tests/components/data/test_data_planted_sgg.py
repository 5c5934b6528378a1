"""sgg-planted: determinism, planted hierarchy, geometry invariants, VG long tail, recoverable signal."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from components.config import from_dict
from components.data.planted_sgg import (
    CONTAINS,
    INSIDE,
    NEAR,
    ON_TOP,
    PLANTED_PARENTS,
    PlantedSGGConfig,
    build_world,
    generate_image,
    generate_split,
    relation_holds,
    true_predicate_distribution,
    vg150_vocab,
)
from components.errors import ConfigError

SMALL = PlantedSGGConfig(n_train=400, n_val=20, n_test=50, shard_size=150)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


@pytest.fixture(scope="module")
def train(world):
    return [img for shard in generate_split(SMALL, "train", world) for img in shard]


def test_same_seed_same_arrays_and_other_seed_differs(world):
    a = generate_image(world, SMALL, "train", 17)
    b = generate_image(build_world(SMALL), SMALL, "train", 17)
    for key in ("boxes", "labels", "obj_features", "rels", "rel_fine"):
        np.testing.assert_array_equal(a[key], b[key])
    other = from_dict(PlantedSGGConfig, {"seed": 1})
    c = generate_image(build_world(other), other, "train", 17)
    assert a["obj_features"].shape[1] == c["obj_features"].shape[1]
    assert not (a["labels"].shape == c["labels"].shape and np.allclose(a["obj_features"], c["obj_features"]))
    # an image does not depend on which shard it lands in
    shards = list(generate_split(SMALL, "val", world))
    assert [len(s) for s in shards] == [20]
    np.testing.assert_array_equal(shards[0][5]["rels"], generate_image(world, SMALL, "val", 5)["rels"])


def test_hierarchy_is_two_level_and_covers_vg150():
    names = [p["name"] for p in vg150_vocab()["predicates"]]
    assert set(PLANTED_PARENTS) == set(names)
    for parent in PLANTED_PARENTS.values():
        assert PLANTED_PARENTS[parent] == parent  # parents are coarse (their own parent)
    assert PLANTED_PARENTS["parked on"] == "on" and PLANTED_PARENTS["wearing"] == "has"
    assert sum(p != n for n, p in PLANTED_PARENTS.items()) == 28


def test_annotated_label_is_fine_or_its_parent(world, train):
    rels = np.concatenate([g["rels"] for g in train])
    fine = np.concatenate([g["rel_fine"] for g in train])
    parent = world.parent_index[fine - 1] + 1
    assert np.all((rels[:, 2] == fine) | (rels[:, 2] == parent))
    is_fine = parent != fine
    rate = np.mean(rels[is_fine, 2] != fine[is_fine])
    assert abs(rate - SMALL.coarse_label_prob) < 0.06  # ~1000 fine relations: 3 sigma ~ 0.05
    assert np.all(rels[~is_fine, 2] == fine[~is_fine])


def test_geometry_invariants_per_predicate(world, train):
    seen = set()
    for g in train:
        for (s, o, _), f in zip(g["rels"], g["rel_fine"]):
            arch = world.archetype[f - 1]
            assert relation_holds(arch, g["boxes"][s], g["boxes"][o]), (g["image_id"], f)
            seen.add(arch)
        assert g["boxes"].min() >= 0 and g["boxes"][:, 2].max() <= g["width"] and g["boxes"][:, 3].max() <= g["height"]
    assert seen >= {ON_TOP, CONTAINS, INSIDE, NEAR}


def test_relation_holds_hand_cases():
    outer, inner = np.array([0, 0, 10, 10.0]), np.array([2, 2, 5, 5.0])
    assert relation_holds(CONTAINS, outer, inner) and not relation_holds(CONTAINS, inner, outer)
    assert relation_holds(INSIDE, inner, outer)
    assert relation_holds(ON_TOP, np.array([2, -3, 6, 1.0]), outer)  # cup on table: above, x-overlap
    assert not relation_holds(ON_TOP, np.array([20, -3, 26, 1.0]), outer)  # no horizontal overlap
    assert relation_holds(NEAR, np.array([12, 0, 20, 10.0]), outer) and not relation_holds(NEAR, np.array([0, 12, 10, 20.0]), outer)


def test_fine_parent_hierarchy_in_features(world):
    """A fine predicate's components are closer to its parent's than to an unrelated coarse predicate's."""
    idx = {n: i for i, n in enumerate(world.predicates)}
    c = world.comp.reshape(len(world.predicates), -1)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    for fine, parent, other in (("parked on", "on", "has"), ("wearing", "has", "on"), ("over", "above", "in")):
        assert cos(c[idx[fine]], c[idx[parent]]) > cos(c[idx[fine]], c[idx[other]]) + 0.3
    same = build_world(from_dict(PlantedSGGConfig, {"fine_parent_distance": 0.0}))
    np.testing.assert_allclose(same.comp[idx["parked on"]], same.comp[idx["on"]])


def test_planted_component_is_recoverable(world, train):
    """Subject feature minus class prototype correlates with the planted component of its predicate."""
    p = world.predicates.index("on")
    resid = [g["obj_features"][s] - world.prototypes[g["labels"][s] - 1]
             for g in train for s, _, f in zip(g["rels"][:, 0], g["rels"][:, 1], g["rel_fine"]) if f - 1 == p]
    mean = np.mean(resid, 0)
    target = world.comp[p, 0]
    assert mean @ target / np.linalg.norm(mean) / np.linalg.norm(target) > 0.8


def test_vg_statistics_and_long_tail(world, train):
    assert abs(np.mean([len(g["labels"]) for g in train]) - 11.5) < 0.6
    assert abs(np.mean([len(g["rels"]) for g in train]) - 5.6) < 0.3
    counts = np.bincount(np.concatenate([g["rels"][:, 2] for g in train]), minlength=51)[1:]
    vg = np.array([p["train_count"] for p in vg150_vocab()["predicates"]])
    assert list(np.argsort(-counts)[:3]) == [0, 1, 2]  # on, has, wearing as in VG-150
    assert spearmanr(counts, vg).statistic > 0.85


def test_true_distribution_reproduces_annotated_counts():
    vocab = vg150_vocab()["predicates"]
    names = [p["name"] for p in vocab]
    counts = np.array([p["train_count"] for p in vocab], dtype=float)
    q = 0.3
    true = true_predicate_distribution(names, counts, q, floor=0.0)
    idx = {n: i for i, n in enumerate(names)}
    ann = np.zeros_like(true)
    for n, parent in PLANTED_PARENTS.items():
        keep = 1 - q if parent != n else 1.0
        ann[idx[n]] += keep * true[idx[n]]
        ann[idx[parent]] += (1 - keep) * true[idx[n]]
    np.testing.assert_allclose(ann / ann.sum(), counts / counts.sum(), rtol=1e-9)
    # "has" (67,144) cannot absorb q/(1-q) * 64,503 of its children at q = 0.6: the floor keeps it positive
    floored = true_predicate_distribution(names, counts, 0.6, floor=0.02)
    assert floored[idx["has"]] > 0


def test_config_scale_and_validation():
    cfg = from_dict(PlantedSGGConfig, {"scale": 10})
    assert cfg.split_sizes() == {"train": 30000, "val": 3000, "test": 10000}
    with pytest.raises(ConfigError, match="objects_mean"):
        from_dict(PlantedSGGConfig, {"objects_mean": 3, "rels_mean": 5})
    with pytest.raises(ConfigError, match="coarse_label_prob"):
        from_dict(PlantedSGGConfig, {"coarse_label_prob": 1.5})
