"""vrr-planted: GloVe-shaped prototypes, determinism, long tail with many/medium/few bands in test."""
import numpy as np
import pytest

from components.config import from_dict
from components.data.planted_vrr import (
    PlantedVRRConfig,
    allocate,
    build_vrr_world,
    generate_split,
    semantic_prototypes,
    split_labels,
)
from components.errors import ConfigError
from components.taxonomy.vectors import load_word_vectors, phrase_vectors

SMALL = PlantedVRRConfig(n_train=4000, n_val=200, n_test=1000, shard_size=300)


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def world():
    return build_vrr_world(SMALL)


def test_similar_names_have_closer_prototypes(world):
    o = {n: i for i, n in enumerate(world.objects)}
    p = world.obj_protos
    assert cos(p[o["dog"]], p[o["cat"]]) > cos(p[o["dog"]], p[o["car"]]) + 0.3
    assert cos(p[o["car"]], p[o["truck"]]) > cos(p[o["car"]], p[o["banana"]]) + 0.3
    r = {n: i for i, n in enumerate(world.predicates)}
    q = world.pred_protos
    assert cos(q[r["sitting on"]], q[r["on"]]) > cos(q[r["sitting on"]], q[r["eating"]])


def test_projection_preserves_word_vector_cosines():
    names = ["dog", "cat", "car", "truck", "shirt"]
    proto = semantic_prototypes(names, 128, 0.0, np.random.default_rng(0))
    vec = phrase_vectors(load_word_vectors(), names).astype(np.float64)
    vec -= vec.mean(0)
    for i in range(len(names)):
        for j in range(len(names)):
            assert abs(cos(proto[i], proto[j]) - cos(vec[i], vec[j])) < 1e-9
    with pytest.raises(ConfigError, match="feature_dim"):
        semantic_prototypes(names, 16, 0.0, np.random.default_rng(0))


def test_allocate_hand_case():
    # rest = 10 - 3 = 7 -> raw 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6) -> one remainder to the largest fraction (0.5)
    np.testing.assert_array_equal(allocate(np.array([0.5, 0.3, 0.2]), 10, 1), [5, 3, 2])
    with pytest.raises(ConfigError, match="cannot give"):
        allocate(np.ones(5), 4, 1)


def test_determinism_and_seed(world):
    a = next(generate_split(SMALL, "test", world))
    b = next(generate_split(SMALL, "test", build_vrr_world(SMALL)))
    for key in ("subject", "predicate", "union_feature", "subject_box"):
        np.testing.assert_array_equal(np.asarray([r[key] for r in a]), np.asarray([r[key] for r in b]))
    other = from_dict(PlantedVRRConfig, {"seed": 3, "n_test": 1000})
    c = split_labels(build_vrr_world(other), other, "test")
    assert not np.array_equal(c["predicate"], split_labels(world, SMALL, "test")["predicate"])


def test_long_tail_and_bands_in_test(world):
    tr = split_labels(world, SMALL, "train")
    te = split_labels(world, SMALL, "test")
    n_pred = len(world.predicates)
    train_counts = np.bincount(tr["predicate"], minlength=n_pred)
    test_counts = np.bincount(te["predicate"], minlength=n_pred)
    assert train_counts.min() >= SMALL.min_train_count and test_counts.min() >= 1
    assert np.argmax(train_counts) == world.predicates.index("on")
    share = lambda c: np.sort(c)[::-1][:3].sum() / c.sum()
    assert share(test_counts) < share(train_counts) - 0.2  # test less skewed
    for tr_lab, te_lab, n in ((tr["predicate"], te["predicate"], n_pred),
                              (np.r_[tr["subject"], tr["object"]], np.r_[te["subject"], te["object"]], len(world.objects))):
        present = np.nonzero(np.bincount(te_lab, minlength=n))[0]
        order = present[np.argsort(np.bincount(tr_lab, minlength=n)[present], kind="stable")]
        few, medium, many = np.split(order, [int(0.8 * len(order)), int(0.95 * len(order))])
        assert len(few) and len(medium) and len(many)
        assert np.isin(te_lab, many).mean() < np.isin(tr_lab, many).mean()  # test less dominated by the head


def test_rows_match_schema_semantics(world):
    rows = next(generate_split(SMALL, "train", world))
    assert len(rows) == SMALL.shard_size
    r = rows[0]
    assert r["union_feature"].shape == (128,) and r["sample_id"] == 0 and r["split"] == "train"
    assert 0 <= r["subject"] < len(world.objects) and 0 <= r["predicate"] < len(world.predicates)
    feats = np.stack([x["subject_feature"] for x in rows])
    protos = world.obj_protos[[x["subject"] for x in rows]]
    assert abs(np.std(feats - protos) / SMALL.object_noise - 1) < 0.02
