"""One HML stage of training: plugins add loss terms (CE, CR, MR) and do bookkeeping (importance)
around a plain PyTorch step; works with a DDP-wrapped model (plugins see the unwrapped module)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from components.errors import DataError, InputError
from components.hml.plugins import (
    ClassBalancedCE,
    ConceptReconstruction,
    ImportanceTracker,
    ModelReconstruction,
    ObjectClassification,
    Plugin,
    StepContext,
)
from components.models.base import SGBatch
from components.models.common import OBJECT_MODES


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class StageTrainer:
    """Runs steps of one stage: forward, plugin loss terms, backward, plugin bookkeeping, optimiser step."""

    model: nn.Module
    plugins: Sequence[Plugin]
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[dict] = field(default_factory=list)

    def train_step(self, batch: SGBatch) -> dict:
        """One optimiser step; returns its metrics (each term's unweighted and weighted magnitude)."""
        self.model.train()
        t0 = time.perf_counter()
        logits = self.model(batch)
        ctx = StepContext(batch=batch, logits=logits, model=unwrap(self.model), step=self.step + 1)
        terms = [t for p in self.plugins for t in p.loss_terms(ctx)]
        if not terms:
            raise InputError("StageTrainer.plugins", "no plugin adds a loss term", "e.g. ClassBalancedCE")
        total = sum(t.weight * t.value for t in terms)
        if not torch.isfinite(total.detach()):
            raise DataError(f"step {ctx.step}", f"non-finite loss {float(total.detach())}",
                            "finite loss terms (lower the learning rate or check the features)")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for p in self.plugins:
            p.after_backward(ctx)
        self.optimizer.step()
        for p in self.plugins:
            p.after_step(ctx)
        self.step += 1
        metrics = {"step": self.step, "loss": float(total.detach()), "pairs": int(logits.shape[0]),
                   "fg_pairs": int((batch.pair_labels > 0).sum()), "seconds": time.perf_counter() - t0}
        for t in terms:
            value = float(t.value.detach())
            metrics[f"loss_{t.name}"] = value
            metrics[f"weighted_{t.name}"] = t.weight * value
        self.history.append(metrics)
        return metrics

    def run(self, batches: Iterable[SGBatch], steps: int,
            on_step: Callable[[dict], None] | None = None, progress: bool = True) -> list[dict]:
        """Train until `self.step == steps` (continuing from the current step); metrics of the new steps."""
        it: Iterator[SGBatch] = iter(batches)
        out = []
        with tqdm(total=steps, initial=self.step, desc="stage", disable=not progress, leave=False) as bar:
            while self.step < steps:
                try:
                    batch = next(it)
                except StopIteration:
                    raise DataError("stage batches", f"ran out after step {self.step}",
                                    f"{steps} steps (an endless/repeating batch iterator)") from None
                m = self.train_step(batch)
                out.append(m)
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}")
                if on_step is not None:
                    on_step(m)
        return out


def train_stage(model: nn.Module, batches: Iterable[SGBatch], plugins: Sequence[Plugin],
                optimizer: torch.optim.Optimizer, steps: int, start_step: int = 0,
                on_step: Callable[[dict], None] | None = None, progress: bool = True) -> list[dict]:
    """Train one stage for `steps` total steps (resuming at `start_step`); returns per-step metrics."""
    return StageTrainer(model, plugins, optimizer, step=start_step).run(batches, steps, on_step, progress)


@dataclass
class PreviousStage:
    """What stage k>1 needs from stage k-1: the frozen model, its classes, anchors, F and Omega."""

    model: nn.Module
    classes: list[int]
    anchors: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    importance: dict[str, torch.Tensor]


def stage_plugins(model: nn.Module, counts: Mapping[int, int], seen: Sequence[int], gamma: float,
                  previous: PreviousStage | None = None, cr_weight: float = 1.0, lam: float = 0.5,
                  track_importance: bool = True, background: str = "cb",
                  cr_span: str = "stage") -> tuple[list[Plugin], ImportanceTracker | None]:
    """Plugins of one HML stage: CB-CE (+ CR + lambda MR after stage 1) and the importance tracker, plus the
    object classification loss when the model predicts object labels (SGCls).
    `cr_span`: "stage" compares old classes inside the stage's whole CE span, "old" inside the old span
    (see ConceptReconstruction)."""
    if cr_span not in ("stage", "old"):
        raise InputError("cr_span", f"{cr_span!r}", "'stage' or 'old'")
    plugins: list[Plugin] = [ClassBalancedCE(counts, gamma, seen=seen, background=background)]
    if getattr(unwrap(model), "mode", "predcls") in OBJECT_MODES:
        plugins.append(ObjectClassification())
    if previous is not None:
        if cr_weight > 0:
            plugins.append(ConceptReconstruction(previous.model, previous.classes, cr_weight,
                                                 new_span=seen if cr_span == "stage" else None))
        if lam > 0:
            plugins.append(ModelReconstruction(previous.anchors, previous.fisher, previous.importance, lam))
    tracker = ImportanceTracker(unwrap(model)) if track_importance else None
    if tracker is not None:
        plugins.append(tracker)
    return plugins, tracker


def summarize(history: Sequence[dict], last: int = 20) -> dict[str, float]:
    """Mean of each numeric metric over the last `last` steps (for logging and reports)."""
    tail = list(history)[-last:]
    keys = [k for k in (tail[0] if tail else {}) if k != "step"]
    return {k: float(sum(m[k] for m in tail) / len(tail)) for k in keys
            if all(isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) for m in tail)}
