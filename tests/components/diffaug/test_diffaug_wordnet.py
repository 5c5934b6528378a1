"""WordNet LCH similarity on class names: REFERENCE values, thresholds, overrides, caches."""
import json
import math

import pytest

from components.code_version import code_fingerprint
from components.diffaug.wordnet import LCHSimilarity, lch_similarity, similar_classes, synset_name


@pytest.fixture(scope="module")
def sim():
    s = LCHSimilarity()
    s("dog", "cat")  # loads WordNet once for the module
    return s


def test_reference_values(sim):
    assert lch_similarity("dog", "cat") == pytest.approx(2.0281482472922856, abs=1e-12)
    assert sim("car", "truck") == pytest.approx(2.5390, abs=1e-4)
    assert sim("dog", "car") == pytest.approx(1.0726, abs=1e-4)
    over = LCHSimilarity({"cake": "cake.n.03"})
    assert over("cake", "cookie") == pytest.approx(2.9444, abs=1e-4)
    # formula: -log((d + 1) / (2 * 19)) with d = path length; cake.n.03 and cookie.n.01 are 1 edge apart
    assert over("cake", "cookie") == pytest.approx(-math.log(2 / 38))


def test_names_and_none(sim):
    assert synset_name("soccer ball") == "soccer_ball.n.01"
    assert sim("xqzzyv", "dog") is None
    assert sim("dog", "dog") == pytest.approx(-math.log(1 / 38))


def test_similar_classes_threshold(sim):
    vocab = ["dog", "cat", "car", "truck", "bus", "xqzzyv"]
    got = similar_classes("car", vocab)
    assert "truck" in got and "dog" not in got and "car" not in got
    assert all(sim("car", v) >= 2.26 for v in got)
    assert similar_classes("dog", vocab, threshold=2.0) == ["cat"]
    assert similar_classes("xqzzyv", vocab) == []


def test_disk_cache_roundtrip(tmp_path, sim):
    path = tmp_path / "lch.json"
    a = LCHSimilarity(cache_path=path)
    a.neighbours(["dog", "cat"], threshold=2.0)
    b = LCHSimilarity(cache_path=path)
    assert b._pairs == a._pairs and len(b._pairs) == 1  # dog-cat (a class is never its own neighbour)
    c = LCHSimilarity({"dog": "dog.n.01"}, cache_path=path)  # different overrides: cache not reused
    assert c._pairs == {}


def test_disk_cache_of_other_code_is_not_read(tmp_path, sim):
    """A memo written by other source code (or by a version that recorded none) is ignored, and the rewritten
    memo records this code."""
    path = tmp_path / "lch.json"
    for stale in ({"overrides": {}, "code": "0123456789ab", "pairs": {"cat\tdog": 99.0}},
                  {"overrides": {}, "pairs": {"cat\tdog": 99.0}}):
        path.write_text(json.dumps(stale))
        fresh = LCHSimilarity(cache_path=path)
        assert fresh("dog", "cat") == pytest.approx(sim("dog", "cat")) != 99.0
    fresh.save()
    saved = json.loads(path.read_text())
    assert saved["code"] == code_fingerprint() and saved["pairs"]["cat\tdog"] != 99.0
    assert LCHSimilarity(cache_path=path)._pairs == saved["pairs"]
