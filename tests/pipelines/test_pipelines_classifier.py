"""DiffAugment's classifier trainings as Ray tasks: the weights a task returns equal those of the same training
in this process (same seed, one thread), for a fresh classifier and for a fine-tuning that starts from another
task's result; two trainings run side by side."""
import copy

import numpy as np
import torch

from components.diffaug.finetune import (
    RelationSet,
    TrainConfig,
    finetune_classifier,
    finetune_config,
    train_classifier,
)
from pipelines.classifier import ClassifierJobs, ClassifierSpec


def _data(n: int, rng: np.random.Generator, d: int = 12) -> RelationSet:
    po, pp = rng.normal(size=(6, d)).astype(np.float32), rng.normal(size=(4, d)).astype(np.float32)
    s, o, p = rng.integers(0, 6, n), rng.integers(0, 6, n), rng.integers(0, 4, n)
    noise = lambda: rng.normal(0, 0.5, (n, d)).astype(np.float32)
    return RelationSet(po[s] + noise(), po[o] + noise(), pp[p] + noise(), s, o, p, rng.random((n, 5)).astype(np.float32))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_task_trained_weights_equal_in_process_training(ray_local):
    rng = np.random.default_rng(0)
    train, extra = _data(300, rng), _data(120, rng)
    oc = np.bincount(np.concatenate([train.subject, train.object]), minlength=6)
    rc = np.bincount(train.predicate, minlength=4)
    spec = ClassifierSpec(12, rng.normal(size=(6, 8)), rng.normal(size=(4, 8)), embed_dim=8, hidden=16, seed=3)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, loss="wce", relmix=True, seed=3)
    ft = finetune_config(epochs=1, batch_size=32, lr=1e-3, curriculum=True, seed=3)

    torch.set_num_threads(1)
    local = spec.build()
    train_classifier(local, train, cfg, oc, rc)
    tuned = copy.deepcopy(local)
    finetune_classifier(tuned, extra, oc, rc, epochs=1, batch_size=32, lr=1e-3, curriculum=True, seed=3)

    jobs = ClassifierJobs(spec, oc, rc, cpus=0.5, gpus=0.0)
    base_ref = jobs.submit(train, cfg)
    other_ref = jobs.submit(train, TrainConfig(epochs=1, batch_size=64, seed=4))  # runs beside base_ref
    tuned_ref = jobs.submit(extra, ft, start=base_ref)  # Ray waits for base_ref's weights
    assert _equal(ray_local.get(base_ref), local.state_dict())
    assert _equal(ray_local.get(tuned_ref), tuned.state_dict())
    assert not _equal(ray_local.get(other_ref), local.state_dict())
    model = jobs.model(tuned_ref)
    assert not model.training and _equal(model.state_dict(), tuned.state_dict())
