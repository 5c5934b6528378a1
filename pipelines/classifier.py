"""DiffAugment's relation classifiers, trained and fine-tuned as Ray tasks.

Each training (the CE and WCE baselines, every variant's fine-tuning) is one task with `cpus_per_actor` CPUs
and `gpus_per_actor` GPUs, so independent trainings run side by side (the two baselines on a laptop's two
cores, every variant's fine-tuning across a cluster) and on GPUs where the driver has none. A task starts
from the spec's seeded initial weights (or given weights), trains with `train_classifier` and returns the
final weights on the CPU: the same weights as training in the driver with the same seed and thread count.
Ray retries a task whose worker dies; being deterministic, the retry returns the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray
import torch

from components.diffaug.finetune import RelationSet, TrainConfig, train_classifier
from components.models.vrr_classifier import VRRClassifier
from pipelines.ray_runtime import actor_device, actor_threads


@dataclass(frozen=True)
class ClassifierSpec:
    """What builds a fresh classifier: its sizes, the class phrase vectors and the seed of its initial weights."""

    feature_dim: int
    object_vectors: np.ndarray
    predicate_vectors: np.ndarray
    embed_dim: int
    hidden: int
    seed: int

    def build(self, state: dict[str, torch.Tensor] | None = None) -> VRRClassifier:
        """The seeded initial classifier, or one holding `state`."""
        torch.manual_seed(self.seed)
        model = VRRClassifier(self.feature_dim, self.object_vectors, self.predicate_vectors, self.embed_dim,
                              self.hidden)
        if state is not None:
            model.load_state_dict(state)
        return model


def trained_state(spec: ClassifierSpec, start: dict[str, torch.Tensor] | None, data: RelationSet, cfg: TrainConfig,
                  obj_counts: np.ndarray, rel_counts: np.ndarray, threads: int, device: str,
                  progress: bool = False, name: str = "classifier") -> dict[str, torch.Tensor]:
    """Train the spec's classifier (from `start` if given) on `data`; its final weights, on the CPU. `name`
    labels the progress bar."""
    torch.set_num_threads(threads)
    model = spec.build(start).to(device)
    train_classifier(model, data, cfg, obj_counts, rel_counts, progress, desc=name)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


class ClassifierJobs:
    """Submits classifier trainings as Ray tasks; `model(ref)` waits for one and loads its weights."""

    def __init__(self, spec: ClassifierSpec, obj_counts: np.ndarray, rel_counts: np.ndarray, cpus: float,
                 gpus: float, progress: bool = False) -> None:
        self.spec = spec
        self.counts = ray.put((obj_counts, rel_counts))
        self.threads, self.device, self.progress = actor_threads(cpus), actor_device(gpus), progress
        self._task = ray.remote(_train_task).options(num_cpus=cpus, num_gpus=gpus)

    def submit(self, data: RelationSet | ray.ObjectRef, cfg: TrainConfig, start: ray.ObjectRef | None = None,
               name: str = "classifier") -> ray.ObjectRef:
        """Start a training on `data` (a RelationSet or a reference to one put once for several tasks), from
        the seeded initial weights or from the weights another task returns (`start`, waited for by Ray);
        `name` labels its progress bar."""
        return self._task.remote(self.spec, start, data, cfg, self.counts, self.threads, self.device,
                                 self.progress, name)

    def model(self, ref: ray.ObjectRef) -> VRRClassifier:
        """The classifier a task trained (waits for it), on the CPU, in eval mode."""
        return self.spec.build(ray.get(ref)).eval()


def _train_task(spec: ClassifierSpec, start: dict[str, torch.Tensor] | None, data: RelationSet, cfg: TrainConfig,
                counts: tuple[np.ndarray, np.ndarray], threads: int, device: str, progress: bool,
                name: str) -> dict[str, torch.Tensor]:
    """The Ray task: `trained_state` with the class counts shared through the object store."""
    return trained_state(spec, start, data, cfg, *counts, threads=threads, device=device, progress=progress,
                         name=name)
