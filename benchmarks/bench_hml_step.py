"""Cost of one HML stage-2 step (CE + CR vs the frozen stage-1 model + lambda MR + importance bookkeeping)
as a ratio to a plain CE step of the same predictor on the same batches, measured side by side.

Both steps run the pipeline's code: stage 2 is `StageTrainer` with `stage_plugins(..., previous=...)`
exactly as pipelines/hml.py builds them (the previous stage comes from a short real stage-1 run through
the same trainer); the baseline is a bare PyTorch step (forward, cross-entropy, backward, Adam). Every
variant uses the pipeline's optimiser (components.optim.adam, fused), so the ratio is the cost of CR, MR
and the bookkeeping alone. A third variant, the pipeline's one-stage "ce" method (StageTrainer + CE plugin
+ importance tracker), shows how much of the overhead is the trainer and tracker rather than CR/MR; a
fourth, the bare step with torch's default (unfused) Adam, shows what the fused optimiser saves. A fifth timing,
the frozen stage-1 model's forward alone (exactly CR's teacher call), bounds the ratio from below: CR needs
that second forward on every step's pairs, so `hml_step_floor_ratio` = 1 + its time / the plain CE step is
what stage 2 would cost if CE, CR's loss, MR and the bookkeeping were free. Steps are interleaved (round-robin in
rotating order over the same pre-sampled batches) after a warm-up, and each variant's median is used.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from components.data import planted_sgg
from components.hml.trainer import PreviousStage, StageTrainer, stage_plugins
from components.models.base import SGBatch
from components.models.frequency import frequency_bias
from components.models.pairs import sample_pairs
from components.models.registry import build_predictor
from components.optim import adam

STAGE1 = list(range(1, 11))  # the head predicates by VG-150 count order are irrelevant to cost: any split works
GAMMA, CR_WEIGHT, LAM, LR = 0.999, 1.0, 0.5, 1e-3


def _images(n: int, feature_dim: int) -> tuple[list[dict], int, int]:
    """`n` sgg-planted training images (generated in memory) and the vocabulary sizes."""
    cfg = planted_sgg.PlantedSGGConfig(n_train=n, n_val=1, n_test=1, shard_size=n, feature_dim=feature_dim)
    world = planted_sgg.build_world(cfg)
    images = [img for shard in planted_sgg.generate_split(cfg, "train", world) for img in shard]
    return images, len(world.objects), len(world.predicates)


def _label_map(positives: list[int], num_predicates: int) -> np.ndarray:
    """Stage label map as pipelines/hml.label_map builds it: positives keep their id, others -1."""
    lm = np.full(num_predicates + 1, -1, dtype=np.int64)
    lm[0] = 0
    lm[positives] = positives
    return lm


def _counts(batches: list[SGBatch], classes: list[int]) -> dict[int, int]:
    """Per-class foreground counts over the batches (>= 1, as the pipeline clamps them)."""
    labels = torch.cat([b.pair_labels for b in batches])
    return {c: max(int((labels == c).sum()), 1) for c in classes}


def _batches(images: list[dict], batch_size: int, lm: np.ndarray, seed: int) -> list[SGBatch]:
    """Pre-sampled training batches (pairs drawn once, shared by every variant)."""
    rng = np.random.default_rng(seed)
    return [sample_pairs(images[i:i + batch_size], rng, 64, 64, lm)
            for i in range(0, len(images) - batch_size + 1, batch_size)]


def _plain_ce_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[SGBatch], None]:
    """A bare PyTorch CE step: forward, cross-entropy over all outputs (-1 ignored), backward, Adam."""
    def step(batch: SGBatch) -> None:
        model.train()
        loss = F.cross_entropy(model(batch), batch.pair_labels, ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _trainer_step(trainer: StageTrainer) -> Callable[[SGBatch], None]:
    """One StageTrainer step (history cleared so it does not grow during the benchmark)."""
    def step(batch: SGBatch) -> None:
        trainer.train_step(batch)
        trainer.history.clear()
    return step


def _teacher_forward(old: torch.nn.Module) -> Callable[[SGBatch], None]:
    """The frozen previous-stage model's forward, as ConceptReconstruction runs it (eval, no grad)."""
    def step(batch: SGBatch) -> None:
        with torch.no_grad():
            old(batch)
    return step


def build_variants(images: list[dict], num_objects: int, num_predicates: int, feature_dim: int,
                   batch_size: int, hidden_dim: int, stage1_steps: int
                   ) -> tuple[dict[str, Callable[[SGBatch], None]], list[SGBatch]]:
    """The timed functions (plain CE with the pipeline's / torch's default Adam, pipeline CE, HML stage 2,
    CR's frozen-teacher forward alone) and the stage-2 batches."""
    fb = frequency_bias(iter(images), num_objects, num_predicates)
    spec = {"name": "mlp", "num_objects": num_objects, "num_predicates": num_predicates,
            "feature_dim": feature_dim, "hidden_dim": hidden_dim, "freq_bias": fb}
    all_ids = list(range(1, num_predicates + 1))
    stage2 = [c for c in all_ids if c not in STAGE1]
    # Stage 1: a real (short) run through the pipeline's trainer gives anchors, F and Omega.
    b1 = _batches(images, batch_size, _label_map(STAGE1, num_predicates), seed=1)
    torch.manual_seed(1)
    old = build_predictor(**spec)
    plugins1, tracker1 = stage_plugins(old, _counts(b1, STAGE1), STAGE1, GAMMA)
    t1 = StageTrainer(old, plugins1, adam(old.parameters(), LR))
    for i in range(stage1_steps):
        t1.train_step(b1[i % len(b1)])
    fisher, importance = tracker1.result()
    anchors = {n: p.detach().clone() for n, p in old.relation_parameters()}
    previous = PreviousStage(old, STAGE1, anchors, fisher, importance)

    b2 = _batches(images, batch_size, _label_map(stage2, num_predicates), seed=2)
    variants: dict[str, Callable[[SGBatch], None]] = {}
    torch.manual_seed(2)
    plain = build_predictor(**spec)
    variants["plain_ce"] = _plain_ce_step(plain, adam(plain.parameters(), LR))
    torch.manual_seed(2)
    unfused = build_predictor(**spec)
    variants["plain_ce_default_adam"] = _plain_ce_step(unfused, torch.optim.Adam(unfused.parameters(), lr=LR))
    torch.manual_seed(2)
    ce = build_predictor(**spec)
    ce_plugins, _ = stage_plugins(ce, _counts(b2, stage2), all_ids, 0.0)
    variants["pipeline_ce"] = _trainer_step(StageTrainer(ce, ce_plugins, adam(ce.parameters(), LR)))
    torch.manual_seed(2)
    new = build_predictor(**spec)
    plugins2, _ = stage_plugins(new, _counts(b2, stage2), all_ids, GAMMA, previous, CR_WEIGHT, LAM)
    variants["hml_stage2"] = _trainer_step(StageTrainer(new, plugins2, adam(new.parameters(), LR)))
    variants["cr_teacher_forward"] = _teacher_forward(previous.model)  # eval + frozen by the CR plugin above
    with torch.no_grad():  # derive each batch's geometry once, as stage 2's new model does before CR's teacher
        for b in b2:
            previous.model(b)
    return variants, b2


def time_interleaved(variants: dict[str, Callable[[SGBatch], None]], batches: list[SGBatch], warmup: int,
                     rounds: int, progress: bool = True,
                     reuse_derived: frozenset[str] = frozenset({"cr_teacher_forward"})) -> dict[str, list[float]]:
    """Per-variant step times: `warmup` untimed rounds, then `rounds` rounds, each variant once per round
    on the same batch, in an order rotated every round (cancels drift and order effects).

    Every variant gets a fresh copy of the batch (no derived geometry: it pays for it, as a training step on a
    new batch does), except those in `reuse_derived`, which get the batch with its geometry already derived
    (CR's teacher, which in stage 2 reuses the geometry the new model derived)."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(warmup + rounds), desc="hml step", disable=not progress, leave=False):
        batch = batches[r % len(batches)]
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            b = batch if n in reuse_derived else dataclasses.replace(batch)
            t0 = time.perf_counter()
            variants[n](b)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[n].append(dt)
    return times


def run(quick: bool = False) -> dict:
    """Median step times and the ratios hml_step_ratio = HML stage 2 / plain CE (goal <= 1.25), with the
    floor CR's teacher forward puts under it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one training thread, as in the pipeline's workers (threads_per_worker=1)
    try:
        n_images, rounds, warmup = (64, 100, 10) if quick else (800, 400, 30)
        batch_size, hidden_dim, feature_dim = 8, 128, 64
        images, n_obj, n_pred = _images(n_images, feature_dim)
        variants, batches = build_variants(images, n_obj, n_pred, feature_dim, batch_size, hidden_dim,
                                           stage1_steps=10 if quick else 100)
        times = time_interleaved(variants, batches, warmup, rounds)
    finally:
        torch.set_num_threads(threads)
    med = {n: statistics.median(t) for n, t in times.items()}
    pairs = float(np.mean([len(b.pair_labels) for b in batches]))
    return {
        "hml_step_ratio": med["hml_stage2"] / med["plain_ce"],
        "hml_step_vs_pipeline_ce_ratio": med["hml_stage2"] / med["pipeline_ce"],
        "hml_pipeline_ce_vs_plain_ratio": med["pipeline_ce"] / med["plain_ce"],
        "hml_stage2_vs_default_adam_ce_ratio": med["hml_stage2"] / med["plain_ce_default_adam"],
        "hml_step_floor_ratio": 1.0 + med["cr_teacher_forward"] / med["plain_ce"],
        "hml_cr_teacher_forward_ms": 1e3 * med["cr_teacher_forward"],
        "hml_default_adam_ce_step_ms": 1e3 * med["plain_ce_default_adam"],
        "hml_plain_ce_step_ms": 1e3 * med["plain_ce"],
        "hml_pipeline_ce_step_ms": 1e3 * med["pipeline_ce"],
        "hml_stage2_step_ms": 1e3 * med["hml_stage2"],
        "hml_pairs_per_batch": pairs,
        "hml_timed_steps_per_variant": float(rounds),
        "hml_loadavg_1min": os.getloadavg()[0],  # other processes on this machine during the run
    }


if __name__ == "__main__":
    from benchmarks.single import main

    main(run, __doc__)
