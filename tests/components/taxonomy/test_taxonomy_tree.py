"""Predicate tree on a hand-made 2-D vector set: grouping, running-mean update, layers, rare
singletons, threshold, overrides, JSON round trip and drawing."""
import json

import numpy as np
import pytest

from components.errors import DataError, InputError
from components.taxonomy.tree import PredicateTree, build_predicate_tree

NAMES = ["on", "has", "wears", "sitting on", "parked on", "flying"]
COUNTS = {"on": 100, "has": 80, "wears": 30, "sitting on": 20, "parked on": 10, "flying": 2}
VECS = {"on": [1, 0], "has": [0, 1], "wears": [0.1, 0.95], "sitting on": [0.9, 0.2],
        "parked on": [0.95, 0.1], "flying": [-1, 0]}


def _layers(tree):
    return {n: tree.layer[i] for i, n in enumerate(tree.predicates)}


def test_grouping_layers_and_rare_singleton_last():
    tree = build_predicate_tree(NAMES, COUNTS, VECS, threshold=0.7)
    groups = [[NAMES[i] for i in g] for g in tree.groups]
    assert groups == [["on", "sitting on", "parked on"], ["has", "wears"], ["flying"]]
    assert _layers(tree) == {"on": 1, "has": 1, "wears": 2, "sitting on": 2, "parked on": 3, "flying": 3}
    assert tree.num_stages == 3
    assert tree.stage_predicates(1) == [1, 2]  # 1-based ids of "on", "has"
    assert tree.seen_predicates(2) == [1, 2, 3, 4]
    parent = {NAMES[i]: NAMES[p] for i, p in enumerate(tree.parent)}
    assert parent["parked on"] == "on" and parent["wears"] == "has" and parent["flying"] == "flying"


def test_num_layers_caps_depth_into_last_layer():
    tree = build_predicate_tree(NAMES, COUNTS, VECS, threshold=0.7, num_layers=2)
    assert _layers(tree) == {"on": 1, "has": 1, "wears": 2, "sitting on": 2, "parked on": 2, "flying": 2}


def test_threshold_effect_all_singletons_is_one_layer():
    tree = build_predicate_tree(NAMES, COUNTS, VECS, threshold=0.9999)
    assert len(tree.groups) == len(NAMES) and tree.num_stages == 1
    loose = build_predicate_tree(NAMES, COUNTS, VECS, threshold=-1.0)
    assert len(loose.groups) == 1


def test_running_mean_representation_decides_membership():
    names, counts = ["a", "b", "c"], [3, 2, 1]
    vecs = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    # c has cosine 0.6 with a (below 0.7) but 0.82 with the group mean (0.9, 0.3) after b joined.
    tree = build_predicate_tree(names, counts, vecs, threshold=0.7)
    assert tree.groups == [[0, 1, 2]]


def test_overrides_move_predicate_before_layers():
    tree = build_predicate_tree(NAMES, COUNTS, VECS, threshold=0.7, overrides={"parked on": "has"})
    assert [[NAMES[i] for i in g] for g in tree.groups][:2] == [["on", "sitting on"], ["has", "wears", "parked on"]]
    assert _layers(tree)["parked on"] == 3 and tree.parent[NAMES.index("parked on")] == NAMES.index("has")
    with pytest.raises(InputError, match="nope"):
        build_predicate_tree(NAMES, COUNTS, VECS, overrides={"nope": "on"})
    for chained in ({"parked on": "parked on"}, {"parked on": "wears", "wears": "on"}):  # order-dependent
        with pytest.raises(InputError, match="itself moved"):
            build_predicate_tree(NAMES, COUNTS, VECS, overrides=chained)


def test_json_round_trip_save_load_and_draw(tmp_path):
    tree = build_predicate_tree(NAMES, COUNTS, VECS, threshold=0.7)
    d = tree.to_json()
    assert d["parent"]["5"] == 1 and d["parent"]["3"] == 2 and d["parent"]["1"] == 1
    back = PredicateTree.from_json(json.loads(json.dumps(d)))
    assert back == tree
    path = tree.save(tmp_path / "tree.json")
    assert PredicateTree.load(path) == tree
    png = tree.draw(tmp_path / "tree.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = dict(d, groups=d["groups"][:1])
    with pytest.raises(DataError, match="partition"):
        PredicateTree.from_json(bad)
    gap = dict(d, layer={**d["layer"], "wears": 3, "sitting on": 3})  # layer 2 left empty: an empty stage
    with pytest.raises(DataError, match=r"layers \[1, 3\]"):
        PredicateTree.from_json(gap)
    with pytest.raises(DataError, match=r"layers \[0, 1, 2, 3\]"):  # layer 0: a predicate in no stage
        PredicateTree.from_json(dict(d, layer={**d["layer"], "flying": 0}))


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="counts"):
        build_predicate_tree(NAMES, {"on": 1}, VECS)
    with pytest.raises(InputError, match="vectors"):
        build_predicate_tree(NAMES, COUNTS, np.zeros((2, 2)))
