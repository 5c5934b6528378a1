"""DiffAugment's two baseline classifiers (CE and WCE) trained as Ray tasks side by side
(`pipelines.classifier`, one CPU each, as the pipeline runs them) vs one after the other in one process on
one thread (what the pipeline did before, and what DiffAugment's driver does with its thread), measured in one
run on the same data: vrr-planted's training split written by the pipeline's own prepare step, the class
phrase vectors of GloVe, and the default classifier sizes.

`classifier_tasks_speedup` = sequential wall time / the tasks' wall time (ray.put of the data, submission
and the weights' return included; the tasks' workers already started), `classifier_tasks_cold_speedup`
the same for the first, cold call (workers start and import torch). `classifier_tasks_equal` is 1 when every
task returned exactly the weights of the in-process training.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from benchmarks.machine import start_local_ray
from components.config import from_dict
from components.diffaug.finetune import TrainConfig
from components.taxonomy.vectors import load_word_vectors, phrase_vectors
from pipelines.classifier import ClassifierJobs, ClassifierSpec, trained_state
from pipelines.diffaug import DiffAugConfig, load_splits
from pipelines.prepare_data import PrepareDataConfig, write_store


def _setup(root: Path, quick: bool):
    """Training split, class counts and the classifier spec (DiffAugConfig's default sizes, seed 0)."""
    write_store(from_dict(PrepareDataConfig, {"dataset": "vrr-planted", "out": str(root / "vrr"),
                                              "vrr": {"scale": 0.25 if quick else 1.0}}))
    store, train, _ = load_splits(str(root / "vrr"))
    objects, predicates = store.manifest.objects, store.manifest.predicates
    kv = load_word_vectors()
    d = DiffAugConfig()
    spec = ClassifierSpec(train.union_feature.shape[1], phrase_vectors(kv, objects), phrase_vectors(kv, predicates),
                          d.embed_dim, d.hidden, seed=0)
    oc = np.bincount(np.concatenate([train.subject, train.object]), minlength=len(objects))
    rc = np.bincount(train.predicate, minlength=len(predicates))
    return train, oc, rc, spec


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(quick: bool = False) -> dict:
    cores = 2
    epochs = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        train, oc, rc, spec = _setup(Path(tmp), quick)
    cfgs = [TrainConfig(epochs=epochs, loss=loss) for loss in ("ce", "wce")]
    threads = torch.get_num_threads()
    try:
        t0 = time.perf_counter()
        local = [trained_state(spec, None, train, c, oc, rc, threads=1, device="cpu") for c in cfgs]
        sequential = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    started = start_local_ray(cores)
    try:
        jobs = ClassifierJobs(spec, oc, rc, cpus=1.0, gpus=0.0)
        walls, equal = [], True
        for _ in range(2):  # cold (workers start), then warm
            t0 = time.perf_counter()
            data = ray.put(train)
            states = ray.get([jobs.submit(data, c) for c in cfgs])
            walls.append(time.perf_counter() - t0)
            equal = equal and all(_equal(s, w) for s, w in zip(states, local))
    finally:
        if started:
            ray.shutdown()
    return {
        "classifier_tasks_speedup": sequential / walls[1],
        "classifier_tasks_cold_speedup": sequential / walls[0],
        "classifier_tasks_equal": float(equal),
        "classifier_sequential_seconds": sequential,
        "classifier_tasks_seconds": walls[1],
        "classifier_tasks_cold_seconds": walls[0],
        "classifier_train_samples": float(len(train)),
        "classifier_epochs": float(epochs),
    }


if __name__ == "__main__":
    from benchmarks.single import main

    main(run, __doc__)
