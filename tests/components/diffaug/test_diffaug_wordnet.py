"""WordNet LCH similarity on class names: REFERENCE values, thresholds, overrides, caches."""
import json
import math
import shutil
import subprocess
import sys

import pytest

from components.code_version import code_fingerprint
from components.diffaug import wordnet_data
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


_LCH_SCRIPT = """
import json, sys
import nltk
from components.diffaug import wordnet_data
nltk.data.path[:0] = [sys.argv[1]]  # the copied corpus first; the project's dir present, so not put before it
nltk.data.path.append(str(wordnet_data.DEFAULT_DIR))
from nltk.corpus import wordnet as wn
if sys.argv[2] == "forbid-walk":  # the walk over every noun synset is what the memo saves
    wn.ensure_loaded()
    def refuse(*a, **k):
        raise AssertionError("walked all synsets")
    wn.all_synsets = refuse
from components.diffaug.wordnet import noun_max_depth, lch_similarity
print(json.dumps([noun_max_depth(), lch_similarity("dog", "cat"), str(wn.root.path)]))
"""


def _run_lch(data_dir, mode):
    """The script in a fresh process (NLTK keeps D per process) over the corpus under `data_dir`."""
    return subprocess.run([sys.executable, "-c", _LCH_SCRIPT, str(data_dir), mode], check=False, capture_output=True,
                          text=True)


def test_noun_max_depth_memo(tmp_path, sim):
    """The first process computes D with NLTK and memoises it beside the WordNet files; a later process reads
    it without walking the synsets and gives the same similarities; a memo of other WordNet files is ignored."""
    src = wordnet_data.DEFAULT_DIR / "corpora" / "wordnet"
    corpus = tmp_path / "nltk" / "corpora" / "wordnet"
    shutil.copytree(src, corpus, ignore=shutil.ignore_patterns("max_depth.json"))
    dog_cat = sim("dog", "cat")

    first = _run_lch(tmp_path / "nltk", "plain")
    assert first.returncode == 0, first.stderr
    depth, value, root = json.loads(first.stdout)
    assert (depth, root) == (19, str(corpus)) and value == dog_cat  # WordNet 3.0's noun depth, D of LCH
    memo = json.loads((corpus / "max_depth.json").read_text())
    assert memo["depth"] == 19 and memo["key"]["size"] == (corpus / "data.noun").stat().st_size

    second = _run_lch(tmp_path / "nltk", "forbid-walk")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)[:2] == [19, dog_cat]

    memo["key"]["size"] += 1  # as if data.noun had changed: the memo no longer applies, so NLTK must walk
    (corpus / "max_depth.json").write_text(json.dumps(memo))
    stale = _run_lch(tmp_path / "nltk", "forbid-walk")
    assert stale.returncode != 0 and "walked all synsets" in stale.stderr
