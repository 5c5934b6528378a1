"""DiffAugment step 1: new (subject, predicate, object) triplets by WordNet-similar class substitution.

Rules (paper): a triplet whose predicate is in a tail band (few/medium by training count) gets its
subject replaced by each similar class and, separately, its object; a triplet whose subject class is tail
gets its object replaced; one whose object class is tail gets its subject replaced. Only vocabulary classes
are substituted (a class without a noun synset is skipped with a warning); new triplets equal to an existing training triplet are dropped unless `allow_duplicates`.
Bands use the LTVRR evaluation's cut-offs (components.evaluation.ltvrr.band_edges): classes sorted
ascending by training count, few = lowest 80%, medium = next 15%, many = top 5%. The ranked classes are
those with a training count > 0, not the evaluation's classes present in the test set (training never
looks at the test split), so a class near a cut-off can sit in a neighbouring band here.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from components.diffaug.wordnet import LCH_THRESHOLD, LCHSimilarity, classes_without_synset
from components.errors import InputError
from components.evaluation.ltvrr import band_edges

BANDS = ("few", "medium", "many")
log = logging.getLogger(__name__)


def frequency_bands(counts: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """Band name per class ('few'/'medium'/'many'; '' for classes not ranked): rank of ascending count."""
    counts = np.asarray(counts)
    ranked = np.flatnonzero(counts > 0) if present is None else np.flatnonzero(np.asarray(present, bool))
    order = ranked[np.argsort(counts[ranked], kind="stable")]  # ascending count, ties by class id
    out = np.full(len(counts), "", dtype=object)
    lo, hi = band_edges(len(order))
    out[order[:lo]], out[order[lo:hi]], out[order[hi:]] = "few", "medium", "many"
    return out


def augment_triplets(triplets: np.ndarray, obj_counts: np.ndarray, rel_counts: np.ndarray,
                     vocabulary: Sequence[str], threshold: float = LCH_THRESHOLD,
                     tail_bands: Sequence[str] = ("few", "medium"), allow_duplicates: bool = False,
                     similarity: LCHSimilarity | None = None) -> dict[str, np.ndarray]:
    """New triplets from `triplets` (N, 3) = (subject, predicate, object) 0-based indices.

    `obj_counts` (len(vocabulary),) and `rel_counts` (P,) are training counts. Returns arrays of equal
    length: subject, predicate, object (the new triplet), source (row of `triplets` it came from, first
    one found), replaced ('subject'/'object') and rule ('tail_relation'/'tail_subject'/'tail_object').
    """
    trip = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
    obj_counts, rel_counts = np.asarray(obj_counts), np.asarray(rel_counts)
    if len(obj_counts) != len(vocabulary):
        raise InputError("obj_counts", f"length {len(obj_counts)}", f"one count per vocabulary class ({len(vocabulary)})")
    if len(trip) and (trip[:, [0, 2]].min() < 0 or trip[:, [0, 2]].max() >= len(vocabulary)
                      or trip[:, 1].min() < 0 or trip[:, 1].max() >= len(rel_counts)):
        raise InputError("triplets", "index out of range",
                         f"subject/object in [0, {len(vocabulary)}) and predicate in [0, {len(rel_counts)})")
    unknown = set(tail_bands) - set(BANDS)
    if unknown:
        raise InputError("tail_bands", f"unknown bands {sorted(unknown)}", f"a subset of {BANDS}")
    sim = similarity or LCHSimilarity()
    names = list(vocabulary)
    missing = classes_without_synset(names, sim.overrides)
    if missing:
        log.warning("warning: WordNet has no noun synset for %d of %d classes, skipped in triplet augmentation: %s "
                    "(name a synset for them in the class -> synset overrides)", len(missing), len(names),
                    ", ".join(missing))
    index = {n: i for i, n in enumerate(names)}
    neigh: dict[int, list[int]] = {}

    def similar(c: int) -> list[int]:
        if c not in neigh:
            neigh[c] = [index[n] for n in sim.similar_classes(names[c], names, threshold)]
        return neigh[c]

    tail_rel = np.isin(frequency_bands(rel_counts), list(tail_bands))
    tail_obj = np.isin(frequency_bands(obj_counts), list(tail_bands))
    seen = {tuple(t) for t in trip.tolist()}
    out: dict[tuple[int, int, int], tuple[int, str, str]] = {}
    for row, (s, p, o) in enumerate(trip.tolist()):
        jobs = []
        if tail_rel[p]:
            jobs += [("subject", "tail_relation"), ("object", "tail_relation")]
        if tail_obj[s]:
            jobs.append(("object", "tail_subject"))
        if tail_obj[o]:
            jobs.append(("subject", "tail_object"))
        for role, rule in jobs:
            for c in similar(s if role == "subject" else o):
                new = (c, p, o) if role == "subject" else (s, p, c)
                if new in out or (not allow_duplicates and new in seen):
                    continue
                out[new] = (row, role, rule)
    sim.save()
    keys = list(out)
    arr = np.array(keys, dtype=np.int64).reshape(-1, 3)
    return {"subject": arr[:, 0], "predicate": arr[:, 1], "object": arr[:, 2],
            "source": np.array([out[k][0] for k in keys], dtype=np.int64),
            "replaced": np.array([out[k][1] for k in keys], dtype=object),
            "rule": np.array([out[k][2] for k in keys], dtype=object)}
