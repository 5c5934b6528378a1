"""Triplet augmentation rules on a hand-made vocabulary with hand-set similarities (via the LCH disk cache)."""
import numpy as np
import pytest

from components.atomic import write_json
from components.code_version import code_fingerprint
from components.diffaug.augment import augment_triplets, frequency_bands
from components.diffaug.wordnet import LCHSimilarity
from components.errors import InputError

VOCAB = ["dog", "cat", "car", "truck", "man", "tree"]


@pytest.fixture()
def sim(tmp_path):
    """Similarities: dog~cat 2.5, car~truck 2.5, everything else 1.0 (hand-set, no WordNet needed)."""
    pairs = {}
    for i, a in enumerate(VOCAB):
        for b in VOCAB[i + 1:]:
            pairs["\t".join(sorted((a, b)))] = 2.5 if {a, b} in ({"dog", "cat"}, {"car", "truck"}) else 1.0
    write_json(tmp_path / "lch.json", {"overrides": {}, "code": code_fingerprint(), "pairs": pairs})
    return LCHSimilarity(cache_path=tmp_path / "lch.json")


def test_bands_follow_ltvrr_cutoffs():
    counts = np.arange(1, 21)  # 20 classes: 16 few, 3 medium, 1 many
    b = frequency_bands(counts)
    assert list(b[:16]) == ["few"] * 16 and list(b[16:19]) == ["medium"] * 3 and b[19] == "many"
    assert frequency_bands(np.array([0, 5, 1]))[0] == ""  # unseen class not ranked


def test_rules(sim):
    # 6 ranked object classes: 4 few (cat, truck, car, dog), 1 medium (tree), 1 many (man)
    obj_counts = np.array([50, 1, 40, 30, 1000, 500])
    rel_counts = np.array([1000] + [1] * 19)  # predicate 0 is 'many', the others few
    trip = np.array([[4, 0, 5],   # man p0 tree: head relation, head classes -> nothing
                     [0, 3, 5],   # dog p3 tree: tail relation -> dog->cat as subject
                     [4, 0, 2],   # man p0 car: object car is few -> subject replaced, man has no neighbour
                     [2, 0, 4]])  # car p0 man: subject car is few -> object man replaced: none
    out = augment_triplets(trip, obj_counts, rel_counts, VOCAB, similarity=sim)
    got = {(int(s), int(p), int(o)): (int(src), r, rule) for s, p, o, src, r, rule in
           zip(out["subject"], out["predicate"], out["object"], out["source"], out["replaced"], out["rule"])}
    assert got == {(1, 3, 5): (1, "subject", "tail_relation")}


def test_tail_subject_replaces_object_and_no_duplicates(sim):
    obj_counts = np.array([1, 2, 3, 4, 1000, 500])  # dog, cat, car, truck few
    rel_counts = np.array([1000] + [1] * 19)
    trip = np.array([[1, 0, 2],    # cat p0 car: subject tail -> object car->truck; object tail -> subject cat->dog
                     [0, 0, 2]])   # dog p0 car already exists: not produced again
    out = augment_triplets(trip, obj_counts, rel_counts, VOCAB, similarity=sim)
    new = set(zip(out["subject"].tolist(), out["predicate"].tolist(), out["object"].tolist()))
    assert new == {(1, 0, 3), (0, 0, 3)}  # cat-car->truck, dog-car->truck; (0,0,2) exists
    dup = augment_triplets(trip, obj_counts, rel_counts, VOCAB, similarity=sim, allow_duplicates=True)
    assert (0, 0, 2) in set(zip(dup["subject"].tolist(), dup["predicate"].tolist(), dup["object"].tolist()))
    assert all(s in range(6) and o in range(6) for s, o in zip(out["subject"], out["object"]))


def test_tail_bands_and_errors(sim):
    obj_counts = np.array([50, 1, 40, 30, 1000, 500])
    rel_counts = np.array([1000] + [1] * 19)
    trip = np.array([[0, 3, 5]])
    assert len(augment_triplets(trip, obj_counts, rel_counts, VOCAB, tail_bands=("many",), similarity=sim)["subject"]) == 0
    with pytest.raises(InputError):
        augment_triplets(np.array([[9, 0, 0]]), obj_counts, rel_counts, VOCAB, similarity=sim)
    with pytest.raises(InputError):
        augment_triplets(trip, obj_counts[:3], rel_counts, VOCAB, similarity=sim)


def test_class_without_synset_is_warned_and_skipped(tmp_path, caplog):
    """A made-up class name has no WordNet noun: augmentation warns once, naming it, and still substitutes
    the other classes (real WordNet: LCH(car, truck) is above 2.26)."""
    vocab = ["car", "truck", "zzqxv"]
    trip = np.array([[0, 1, 2], [2, 1, 0]])  # tail relation 1 on both sides of the unknown class
    with caplog.at_level("WARNING", logger="components.diffaug.augment"):
        out = augment_triplets(trip, np.array([5, 5, 5]), np.array([100, 1]), vocab,
                               similarity=LCHSimilarity(cache_path=tmp_path / "lch.json"))
    warned = [r.getMessage() for r in caplog.records if "no noun synset" in r.getMessage()]
    assert len(warned) == 1 and "zzqxv" in warned[0] and "1 of 3" in warned[0]
    new = set(zip(out["subject"].tolist(), out["predicate"].tolist(), out["object"].tolist()))
    assert new == {(1, 1, 2), (2, 1, 1)}  # car -> truck on either side; zzqxv is never substituted
