"""Avalanche-style plugins of the HML stage trainer: each adds loss terms before backward and/or does
bookkeeping after backward / after the optimiser step. Small, self-contained, composable.

Conventions: predicate ids are 1-based model columns, column 0 is background. A stage's CE softmax
spans background + all classes seen so far (stages 1..k): classes of earlier stages stay competitors
of the new ones (their knowledge is carried by CR), classes of later stages are not yet in play.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.errors import DataError, InputError
from components.hml.importance import (
    EPS,
    mr_buffers,
    mr_loss_flat,
    normalize_importance,
)
from components.models.base import SGBatch
from components.models.common import check_object_labels
from components.softmax import softmax_lastdim


@dataclass
class StepContext:
    """What plugins see at one step: the batch, the new model's logits, the (unwrapped) model, 1-based step."""

    batch: SGBatch
    logits: torch.Tensor
    model: nn.Module
    step: int


@dataclass
class LossTerm:
    """A named loss term: `value` (unweighted, logged) times `weight` enters the total loss."""

    name: str
    value: torch.Tensor
    weight: float


class Plugin:
    """Hooks of the stage trainer (all optional)."""

    def loss_terms(self, ctx: StepContext) -> list[LossTerm]:
        return []

    def after_backward(self, ctx: StepContext) -> None:
        return None

    def after_step(self, ctx: StepContext) -> None:
        return None


def class_balanced_weights(counts: Mapping[int, int], gamma: float) -> dict[int, float]:
    """Cui et al. 2019: w_c = (1-gamma)/(1-gamma^n_c), normalised to mean 1 over the given classes.
    gamma = 0 gives all ones (plain CE)."""
    if not 0.0 <= gamma < 1.0:
        raise InputError("gamma", f"{gamma}", "a value in [0, 1)")
    bad = {c: n for c, n in counts.items() if n < 1}
    if bad:
        raise InputError("class counts", f"classes without training samples {bad}", "counts >= 1")
    raw = {c: (1.0 - gamma) / (1.0 - gamma ** int(n)) for c, n in counts.items()}
    mean = sum(raw.values()) / max(len(raw), 1)
    return {c: w / mean for c, w in raw.items()}


class ClassBalancedCE(Plugin):
    """Class-balanced CE on the CURRENT stage's classes over the softmax span background + `seen`.

    Weights follow `class_balanced_weights` on the current stage's counts (mean 1). Seen-but-not-current
    classes get weight 1 (they never appear as targets in this stage: their pairs are labelled -1).
    Background: `background="cb"` (default) treats it as the most frequent class, n -> inf, so its weight
    is (1 - gamma) divided by the same normaliser (the smallest weight of all; gamma = 0 gives 1, plain
    CE). `background="one"` gives it weight 1, which on sgg-planted made HML's stage 2 call its own head
    classes background (mR@100 8.7 vs 17.1 with "cb").
    Batch labels: 0 background, a seen predicate id, or -1 ignore (excluded from CE)."""

    name = "ce"

    def __init__(self, counts: Mapping[int, int], gamma: float, seen: Sequence[int] | None = None,
                 num_predicates: int | None = None, background: str = "cb") -> None:
        if background not in ("cb", "one"):
            raise InputError("ClassBalancedCE.background", f"{background!r}", "'cb' or 'one'")
        self.current = sorted(int(c) for c in counts)
        self.seen = sorted({int(c) for c in (seen if seen is not None else self.current)})
        missing = [c for c in self.current if c not in self.seen]
        if missing:
            raise InputError("ClassBalancedCE.seen", f"misses current classes {missing}", "a superset of counts")
        if min(self.seen, default=1) < 1 or (num_predicates is not None and max(self.seen) > num_predicates):
            raise InputError("ClassBalancedCE classes", f"{self.seen}", f"ids in 1..{num_predicates}")
        self.span = [0] + self.seen
        cnt = {int(c): int(n) for c, n in counts.items()}
        w = class_balanced_weights(cnt, gamma)
        w[0] = 1.0
        if background == "cb" and cnt:
            norm = sum((1.0 - gamma) / (1.0 - gamma ** n) for n in cnt.values()) / len(cnt)
            w[0] = (1.0 - gamma) / norm
        self.weight = torch.tensor([w.get(c, 1.0) for c in self.span], dtype=torch.float32)
        lut = torch.full((max(self.span) + 2,), -2, dtype=torch.long)  # last entry: any label above the span
        lut[self.span] = torch.arange(len(self.span))
        self._lut = lut
        self._cols = span_index(self.span)

    def span_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Map batch labels (0, seen ids, -1) to positions in the span (-1 stays ignored)."""
        if self._lut.device != labels.device:
            self._lut = self._lut.to(labels.device)  # moved once, as `weight` in loss_terms
        lut = self._lut
        out = torch.where(labels >= 0, lut[labels.clamp(0, len(lut) - 1)], labels)
        if (out == -2).any():
            bad = sorted(set(labels[out == -2].tolist()))
            raise DataError("batch pair_labels", f"labels {bad} outside this stage's span",
                            f"0, -1 or one of {self.seen}")
        return out

    def loss_terms(self, ctx: StepContext) -> list[LossTerm]:
        targets = self.span_targets(ctx.batch.pair_labels)
        logits = ctx.logits[:, self._cols]
        if not (targets >= 0).any():
            return [LossTerm(self.name, logits.sum() * 0.0, 1.0)]
        self.weight = self.weight.to(logits.device)
        loss = F.cross_entropy(logits, targets, weight=self.weight, ignore_index=-1)
        return [LossTerm(self.name, loss, 1.0)]


def span_index(span: Sequence[int]) -> slice | list[int]:
    """Column index of `span` for logits[:, index], computed once per plugin: a slice when span is 0..k
    (the usual case: a view, no copy, no scatter in backward), else the list of columns."""
    span = [int(c) for c in span]
    return slice(0, len(span)) if span == list(range(len(span))) else span


class ObjectClassification(Plugin):
    """SGCls/SGDet: cross-entropy of the model's object logits (set by its forward) against the GT object labels
    (SGDet: the labels assigned to the detections, 0 = background), in every stage (objects are not staged;
    only predicates are). Weight 1, as MOTIFS adds its object loss."""

    name = "obj"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def loss_terms(self, ctx: StepContext) -> list[LossTerm]:
        logits = getattr(ctx.model, "object_logits", None)
        if logits is None:
            raise InputError("ObjectClassification", "the model set no object_logits in its forward",
                             "a predictor built with mode='sgcls' or 'sgdet'")
        check_object_labels(ctx.batch.labels, logits.shape[1] - 1, background=getattr(ctx.model, "mode", "") == "sgdet")
        return [LossTerm(self.name, F.cross_entropy(logits, ctx.batch.labels), self.weight)]


class ConceptReconstruction(Plugin):
    """CR = sum_{i, j in old classes} (softmax(x_old)_ij - softmax(z_new)_ij)^2 / N on the SAME pairs.

    The old model's softmax spans its own CE span (background + `old_classes`), the output space it was
    trained on. Eq. 5 leaves the new model's span open; `new_span` chooses it:
    - None ("old" mode): the same old span, renormalised. CR then fixes only how old classes compare
      with background, not with the new classes, which the stage's CE pushes down as never-target
      negatives: on sgg-planted the final model's stage-1 classes fell to ~8% recall.
    - the stage's CE span (background + all seen classes; "stage" mode, the pipeline's default): the new
      model must give each old class the old model's absolute probability, so new classes can only
      take the mass the old model gave to background and to other old classes.
    The squared differences are summed over the old (non-background) classes, N = number of pairs in
    the batch (all pairs: fine-annotated, other-stage (-1) and background)."""

    name = "cr"

    def __init__(self, old_model: nn.Module, old_classes: Sequence[int], weight: float,
                 new_span: Sequence[int] | None = None) -> None:
        if not old_classes:
            raise InputError("ConceptReconstruction.old_classes", "empty", "the previous stages' classes")
        self.old_model = old_model.eval()
        for p in self.old_model.parameters():
            p.requires_grad_(False)
        self.span = [0] + sorted(int(c) for c in old_classes)
        self.new_span = sorted(set(self.span) | {int(c) for c in new_span}) if new_span is not None else self.span
        self._old_cols, self._new_cols = span_index(self.span), span_index(self.new_span)
        self._old_in_new = span_index([self.new_span.index(c) for c in self.span[1:]])
        self.weight = float(weight)

    def loss_terms(self, ctx: StepContext) -> list[LossTerm]:
        with torch.no_grad():
            old = softmax_lastdim(self.old_model(ctx.batch)[:, self._old_cols])  # a few old classes: see softmax.py
        new = torch.softmax(ctx.logits[:, self._new_cols], dim=1)
        n = max(ctx.logits.shape[0], 1)
        value = (old[:, 1:] - new[:, self._old_in_new]).pow(2).sum() / n
        return [LossTerm(self.name, value, self.weight)]


class ModelReconstruction(Plugin):
    """MR = sum_p (F_p + Omega_p) (theta_p - theta*_p)^2 / P towards the previous stage's parameters.

    theta* and F + Omega are flattened once (on the first step, in the model's parameter order, on the
    logits' device), so a step costs a few whole-vector ops (see `mr_loss_flat`)."""

    name = "mr"

    def __init__(self, anchors: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor],
                 importance: Mapping[str, torch.Tensor], lam: float) -> None:
        self.anchors, self.fisher, self.importance = dict(anchors), dict(fisher), dict(importance)
        self.lam = float(lam)
        self._model: nn.Module | None = None
        self._params: list[torch.Tensor] = []
        self._anchor = self._weight = torch.zeros(0)

    def loss_terms(self, ctx: StepContext) -> list[LossTerm]:
        dev = ctx.logits.device
        if ctx.model is not self._model or self._anchor.device != dev:
            named = relation_parameters(ctx.model)
            anchor, weight = mr_buffers([n for n, _ in named], self.anchors, self.fisher, self.importance)
            self._model, self._params = ctx.model, [p for _, p in named]
            self._anchor, self._weight = anchor.to(dev), weight.to(dev)
        return [LossTerm(self.name, mr_loss_flat(self._params, self._anchor, self._weight), self.lam)]


def relation_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """MR-regularised named params (RelationPredictor.relation_parameters, else all trainable ones)."""
    fn = getattr(model, "relation_parameters", None)
    if callable(fn):
        return list(fn())
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class ImportanceTracker(Plugin):
    """Accumulates the Fisher running mean and RWalk importance from each step's gradient (read after
    backward, i.e. after DDP's all-reduce) and parameter move; `result()` gives F and normalised Omega.

    Speed (same values as the per-tensor formulas, tested): every quantity lives in one flat buffer over
    all MR parameters, so a step is a few whole-vector ops whatever the number of parameter tensors, and
    the tracker keeps S_t = sum of g^2, so F_t = S_t / t (the closed form of `fisher_running_mean`), folded
    into `importance_increment`'s denominator. A parameter without gradient (g = 0) adds 0 to S and max(0, -g * dtheta) = 0 to Omega."""

    def __init__(self, model: nn.Module, eps: float = EPS) -> None:
        named = relation_parameters(model)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.t = 0
        self.eps = eps
        like = self._params[0].detach() if self._params else torch.zeros(0)
        self._eps = like.new_tensor(eps)
        zeros = lambda: like.new_zeros(sum(p.numel() for p in self._params))
        self.sq_sum, self.omega = zeros(), zeros()
        self._grad, self._before, self._delta = zeros(), zeros(), zeros()
        self._pending = False

    def _flatten_into(self, tensors: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Concatenate `tensors` (one per MR parameter) into the preallocated flat buffer `out`."""
        return torch.cat([x.detach().reshape(-1) for x in tensors], out=out)

    def after_backward(self, ctx: StepContext) -> None:
        if not self._params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        g = self._flatten_into(grads, self._grad)
        self.sq_sum.addcmul_(g, g)
        self._flatten_into(self._params, self._before)
        self._pending = True

    def after_step(self, ctx: StepContext) -> None:
        self.t += 1
        if not self._pending:
            return  # no backward this step: g = 0, nothing to add
        delta = self._flatten_into(self._params, self._delta).sub_(self._before)
        # importance_increment with F_t = S_t / t, in five whole-vector ops instead of ten:
        # omega -= min(0, g * delta) / (eps + (0.5 / t) * delta^2 * S_t)
        loss_change = torch.mul(self._grad, delta).clamp_(max=0.0)
        cost = torch.addcmul(self._eps, delta.square_(), self.sq_sum, value=0.5 / self.t)
        self.omega.addcdiv_(loss_change, cost, value=-1.0)
        self._pending = False

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter tensors (own storage, the parameters' shapes) of a flat buffer."""
        parts = flat.split([p.numel() for p in self._params])
        return {n: x.reshape(p.shape).clone() for n, x, p in zip(self.names, parts, self._params)}

    def result(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(F, normalised Omega) of the stage so far."""
        return self._fisher(), self._split(normalize_importance(self.omega))

    def _fisher(self) -> dict[str, torch.Tensor]:
        """F_t = S_t / t (zeros before the first step)."""
        return self._split(self.sq_sum / max(self.t, 1))

    def state_dict(self) -> dict:
        """Step count and the raw sums S and Omega (not F = S / t: S = F * t would not restore S bit for bit)."""
        cpu = lambda d: {k: v.cpu() for k, v in d.items()}
        return {"t": self.t, "sq_sum": cpu(self._split(self.sq_sum)), "omega": cpu(self._split(self.omega))}

    def load_state_dict(self, state: Mapping) -> None:
        if set(state.get("sq_sum", {})) != set(self.names) or set(state.get("omega", {})) != set(self.names):
            raise InputError("ImportanceTracker state", "parameter names differ or sums missing",
                             f"sq_sum and omega for {self.names[:3]}...")
        self.t = int(state["t"])
        dev = self.sq_sum.device
        self.sq_sum = torch.cat([state["sq_sum"][n].reshape(-1) for n in self.names]).to(dev)
        self.omega = torch.cat([state["omega"][n].reshape(-1) for n in self.names]).to(dev)
