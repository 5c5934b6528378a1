"""WordNet Leacock-Chodorow similarity between class names (DiffAugment triplet augmentation).

A class name maps to its first noun synset (spaces become underscores: "soccer ball" -> soccer_ball.n.01)
unless an override map names the synset (first senses can be wrong, e.g. "plate"). LCH =
-log((d + 1) / (2 D)) with D = 19 for nouns; the paper's threshold 2.26 means "at most 2 edges apart".
Names without a noun synset, or pairs without a path, give None. WordNet's first access costs ~10 s, so
results are cached per process and, with `cache_path`, on disk as JSON (keyed by the override map and the source fingerprint).
D itself is what NLTK computes by walking every noun synset (~17 s, once per process); `noun_max_depth`
memoises it beside the WordNet files (`max_depth.json`, keyed by data.noun's size and mtime and NLTK's
version), so only the first process on a machine pays it (`make setup` does).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from components.atomic import write_json
from components.code_version import code_fingerprint
from components.diffaug.wordnet_data import ensure_nltk_path
from components.errors import InputError

LCH_THRESHOLD = 2.26


@lru_cache(maxsize=1)
def _wordnet():
    """NLTK's WordNet reader (project-local data dir on the path); loaded once per process."""
    ensure_nltk_path()
    from nltk.corpus import wordnet as wn

    try:
        wn.ensure_loaded()
    except LookupError as e:
        raise InputError("WordNet", "NLTK cannot find WordNet 3.0",
                         "`python components/diffaug/wordnet_data.py` or NLTK_DATA pointing at a wordnet corpus") from e
    return wn


MAX_DEPTH_MEMO = "max_depth.json"


def _memo_key(wn) -> dict | None:
    """What the noun max depth depends on: data.noun's size and mtime and NLTK's version (None when the
    corpus is not a plain directory, e.g. read from a zip: then nothing is memoised)."""
    import nltk

    path = getattr(getattr(wn, "root", None), "path", None)
    data = Path(path) / "data.noun" if path else None
    if data is None or not data.is_file():
        return None
    st = data.stat()
    return {"data.noun": str(data.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "nltk": nltk.__version__}


def _noun_depth_key(wn) -> tuple:
    """NLTK's key of the noun entry in its max-depth table ((pos, needs_root), as lch_similarity looks it up)."""
    return ("n", wn.synset("entity.n.01")._needs_root())


def _read_memo(path: Path, key: dict) -> int | None:
    """The depth recorded in the memo at `path` for `key`; None when missing, unreadable or of other files."""
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(memo, dict) and memo.get("key") == key and isinstance(memo.get("depth"), int)
    return memo["depth"] if ok else None


@lru_cache(maxsize=1)
def noun_max_depth() -> int:
    """D of the LCH formula for nouns (19 in WordNet 3.0), handed to NLTK's own table so that its
    lch_similarity skips the walk over all noun synsets: the memoised value, else NLTK's walk, whose result is
    then memoised beside the WordNet files (when that directory is writable)."""
    wn = _wordnet()
    nkey, key = _noun_depth_key(wn), _memo_key(wn)
    memo = Path(key["data.noun"]).parent / MAX_DEPTH_MEMO if key is not None else None
    known = _read_memo(memo, key) if memo is not None else None
    table = getattr(wn, "_max_depth", None)
    if known is not None and isinstance(table, dict):
        table.setdefault(nkey, known)
        return int(table[nkey])
    depth = int(wn._compute_max_depth(*nkey))
    if memo is not None:
        try:
            write_json(memo, {"key": key, "depth": depth})
        except (OSError, InputError):
            pass  # a read-only corpus directory: every process computes D, as without the memo
    return depth


def synset_name(name: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """The noun synset name ('dog.n.01') used for a class name; None when WordNet has no noun for it."""
    if overrides and name in overrides:
        try:
            return _wordnet().synset(overrides[name]).name()
        except Exception as e:  # nltk raises WordNetError / ValueError for unknown synset names
            raise InputError(f"synset override for {name!r}", f"{overrides[name]!r}: {e}", "a synset like 'dog.n.01'") from e
    found = _wordnet().synsets(name.strip().lower().replace(" ", "_"), pos="n")
    return found[0].name() if found else None


def classes_without_synset(vocabulary: Iterable[str], overrides: Mapping[str, str] | None = None) -> list[str]:
    """Vocabulary classes WordNet has no noun synset for: they can be neither substituted nor substitutes."""
    return [v for v in vocabulary if synset_name(v, overrides) is None]


class LCHSimilarity:
    """LCH similarity between class names, memoised in memory and optionally in a JSON file."""

    def __init__(self, overrides: Mapping[str, str] | None = None, cache_path: str | Path | None = None) -> None:
        self.overrides = dict(overrides or {})
        self.cache_path = Path(cache_path) if cache_path else None
        self._pairs: dict[str, float | None] = {}
        self._dirty = False
        if self.cache_path and self.cache_path.is_file():
            data = json.loads(self.cache_path.read_text())
            if data.get("overrides") == self.overrides and data.get("code") == code_fingerprint():
                self._pairs = data["pairs"]

    def __call__(self, a: str, b: str) -> float | None:
        """LCH(a, b) on noun synsets, or None (no noun synset / no path)."""
        key = "\t".join(sorted((a, b)))
        if key not in self._pairs:
            sa, sb = synset_name(a, self.overrides), synset_name(b, self.overrides)
            value = None
            if sa and sb:
                wn = _wordnet()
                noun_max_depth()  # D from the memo, or NLTK's walk once (then memoised)
                value = wn.synset(sa).lch_similarity(wn.synset(sb))
            self._pairs[key] = None if value is None else float(value)
            self._dirty = True
        return self._pairs[key]

    def save(self) -> None:
        """Write the memo to `cache_path` (atomically) when it changed."""
        if self.cache_path and self._dirty:
            write_json(self.cache_path, {"overrides": self.overrides, "code": code_fingerprint(), "pairs": self._pairs})
            self._dirty = False

    def similar_classes(self, name: str, vocabulary: Iterable[str], threshold: float = LCH_THRESHOLD) -> list[str]:
        """Vocabulary classes other than `name` with LCH >= threshold, most similar first (ties by name)."""
        scored = [(s, v) for v in vocabulary if v != name and (s := self(name, v)) is not None and s >= threshold]
        return [v for _, v in sorted(scored, key=lambda t: (-t[0], t[1]))]

    def neighbours(self, vocabulary: list[str], threshold: float = LCH_THRESHOLD) -> dict[str, list[str]]:
        """Every vocabulary class -> its similar classes; saves the memo afterwards."""
        out = {v: self.similar_classes(v, vocabulary, threshold) for v in vocabulary}
        self.save()
        return out


_DEFAULT = LCHSimilarity()


def lch_similarity(a: str, b: str, overrides: Mapping[str, str] | None = None) -> float | None:
    """LCH similarity of two class names' noun synsets (process-cached); None without synset or path."""
    return (LCHSimilarity(overrides) if overrides else _DEFAULT)(a, b)


def similar_classes(name: str, vocabulary: Iterable[str], threshold: float = LCH_THRESHOLD,
                    overrides: Mapping[str, str] | None = None) -> list[str]:
    """Vocabulary classes whose LCH similarity to `name` is >= threshold (most similar first)."""
    return (LCHSimilarity(overrides) if overrides else _DEFAULT).similar_classes(name, vocabulary, threshold)
