"""Word vectors: the offline GloVe package, word2vec/GloVe files, phrase means, missing-word errors."""
import numpy as np
import pytest

from components.errors import InputError
from components.taxonomy.tree import build_predicate_tree
from components.taxonomy.vectors import load_word_vectors, phrase_vector, phrase_vectors


def test_default_glove_phrase_mean_and_missing_words():
    kv = load_word_vectors()
    assert kv.vector_size == 50 and len(kv) == 400000
    assert load_word_vectors() is kv  # cached per process
    got = phrase_vector(kv, "Parked_on")
    assert np.allclose(got, (kv["parked"] + kv["on"]) / 2, atol=1e-6)
    with pytest.raises(InputError) as e:
        phrase_vectors(kv, ["on", "qzxqzx", "blorptt fnargl"])
    assert "qzxqzx" in str(e.value) and "blorptt fnargl" in str(e.value)
    tree = build_predicate_tree(["on", "sitting on", "has", "wearing"], [10, 5, 8, 4], kv, threshold=0.7)
    assert tree.layer[0] == 1 and sorted(i for g in tree.groups for i in g) == [0, 1, 2, 3]


@pytest.mark.parametrize("header", [True, False])
def test_text_vector_files(tmp_path, header):
    body = "on 1.0 0.0\nparked 0.0 1.0\n"
    path = tmp_path / "vecs.txt"
    path.write_text(("2 2\n" if header else "") + body)
    kv = load_word_vectors(str(path))
    assert np.allclose(phrase_vector(kv, "parked on"), [0.5, 0.5])
    with pytest.raises(InputError, match="not found"):
        load_word_vectors(str(tmp_path / "missing.txt"))
