"""HML on Ray Train: build the predicate tree, train stage after stage (each a TorchTrainer run that
streams the feature store through Ray Data, checkpoints, and resumes after worker failures), run the
one-stage CE and class-balanced CE baselines through the same code, then predict and evaluate.

    python pipelines/hml.py --config cfg.yaml key=value ...

Layout under `output_dir`: tree.json/tree.png, freq_bias.npy, stages/<method>-stage<k>-<key>/ (final.pt,
metrics.jsonl, _DONE.json written last: a rerun with the same config and source code skips complete stages), ray/ (Ray Train storage: an
interrupted stage resumes from its last checkpoint), <method>/ (model.safetensors, predictions/ for
pipelines/evaluate.py, metrics.json),
results.json. Test-split prediction runs in the driver or, with `predict_actors=N`, on a Ray Data actor pool
(pipelines/hml_predict.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import atomic_path, ensure_writable_dir, write_bytes, write_json, write_text
from components.config import config_hash, load_config
from components.data.schema import SCENE_GRAPH
from components.data.store import FeatureStore, sha256_file
from components.errors import ConfigError, InputError
from components.hml.checkpoint import load_checkpoint, save_checkpoint
from components.hml.trainer import PreviousStage, stage_plugins, summarize, train_stage, unwrap
from components.models.checkpoint import load_predictor_state
from components.models.common import MODES
from components.models.registry import PREDICTORS, mode_fields
from components.stages import StageCache, StageResult
from components.taxonomy.tree import PredicateTree, build_predicate_tree
from pipelines.cli import exit_code
from pipelines.hml_predict import (
    build_stage_model,
    load_stage_model,
    predict_on_ray,
    predict_store,
)
from pipelines.threads import run_concurrently
from pipelines.train_faults import kill_after_checkpoint

METHODS = ("hml", "ce", "cb")
STATE_FILE = "state.pt"


@dataclass
class HMLConfig:
    """HML and its baselines on one scene-graph feature store (PredCls, SGCls or SGDet)."""

    store: str = ""
    output_dir: str = "runs/hml"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    predictor: str = field(default="mlp", metadata={"choices": PREDICTORS})
    # PredCls: GT boxes and labels given. SGCls: GT boxes given, object labels predicted by the model (trained
    # with an object CE in every stage) and scored by the evaluator (triplet score x both objects' scores).
    # SGDet: as SGCls over the store's detections (a store written with detections, e.g. sgg-planted-det),
    # trained on targets assigned by IoU >= 0.5, evaluated by IoU matching against the GT boxes.
    mode: str = field(default="predcls", metadata={"choices": MODES})
    hidden_dim: int = field(default=128, metadata={"range": (1, 8192)})
    freq_bias: bool = True
    # Predicate tree
    vectors: str = "glove-6b-50d"
    threshold: float = field(default=0.7, metadata={"range": (-1.0, 1.0)})
    stages: int = field(default=2, metadata={"range": (1, 50)})
    overrides: dict[str, str] = field(default_factory=dict)
    tree: str | None = None  # a saved tree JSON instead of building one
    # Losses. Scale (measured on sgg-planted, MLP, see README): at the start of stage 2 CE ~0.93; CR (raw
    # ~0.03) is ~0.9 with cr_weight 30 (at 1 the fresh stage-2 model forgot the stage-1 classes: recall
    # 93 -> 0). MR is a mean over P ~ 1e5 parameters: ~0.004 raw, i.e. ~0.002 at the paper's lam 0.5;
    # lam 300 makes it CE-sized but measured no gain (mR@100 15.6 vs 17.1, head recall unchanged), so the
    # default stays the paper's 0.5. Every term is logged per step, unweighted and weighted.
    gamma: float = field(default=0.999, metadata={"range": (0.0, 0.999999)})
    lam: float = field(default=0.5, metadata={"range": (0.0, None)})
    cr_weight: float = field(default=30.0, metadata={"range": (0.0, None)})
    background_weight: str = field(default="cb", metadata={"choices": ("cb", "one")})
    cr_span: str = field(default="stage", metadata={"choices": ("stage", "old")})  # see ConceptReconstruction
    # How a stage k>1 model starts: "fresh" (the paper: a new random model) or "previous" (a copy of the
    # frozen stage k-1 model, so the last model has seen the whole budget; MR's anchors are its start).
    stage_init: str = field(default="fresh", metadata={"choices": ("fresh", "previous")})
    # Optimisation
    steps_per_stage: int = field(default=300, metadata={"range": (1, None)})
    # Share of the total budget (stages x steps_per_stage) given to stage 1; the other stages split the rest
    # equally (None = every stage steps_per_stage). Stage 1 of the default tree holds the few head classes
    # and learns them fast: on sgg-planted val, 0.15 raised HML's Mean@100 from 33.0 to 37.5 (see README).
    stage1_share: float | None = field(default=0.15, metadata={"range": (0.01, 0.99)})
    batch_size: int = field(default=8, metadata={"range": (1, None)})  # images per worker per step
    max_fg_per_image: int = field(default=64, metadata={"range": (0, None)})
    max_bg_per_image: int = field(default=64, metadata={"range": (0, None)})
    lr: float = field(default=1e-3, metadata={"range": (0.0, 10.0)})
    checkpoint_every: int = field(default=100, metadata={"range": (1, None)})
    seed: int = 0
    # Ray
    num_workers: int = field(default=1, metadata={"range": (1, 1024)})
    use_gpu: bool = False
    cpus_per_worker: float = field(default=0.5, metadata={"range": (0.01, 1024.0)})
    max_failures: int = field(default=2, metadata={"range": (-1, 1000)})
    ray_address: str | None = None
    num_cpus: int | None = None
    threads_per_worker: int = field(default=1, metadata={"range": (1, 256)})
    # Methods trained at once, at most (each in its own driver thread; a method's stages stay in order). A
    # stage's start-up on Ray Train (~20 s of new processes) dominates short stages, which two at a time
    # overlap (make run's HML: 93-104 s against 111-127 s). Each needs num_workers x cpus_per_worker CPUs
    # (and GPUs) and one CPU stays free for Ray Data's read tasks: a local Ray runs as many as fit.
    # Results do not change.
    concurrent_methods: int = field(default=2, metadata={"range": (1, 16)})
    # Test-split prediction: 0 = in the driver process; N = a Ray Data pool of N actors, each with
    # cpus_per_worker CPUs (and one GPU with use_gpu), e.g. on a cluster whose driver has no GPU
    predict_actors: int = field(default=0, metadata={"range": (0, 1024)})
    # Evaluation and tracking
    eval_split: str = "test"
    eval_images: int | None = None  # cap on evaluated images (None = all)
    ks: list[int] = field(default_factory=lambda: [20, 50, 100])
    track: bool = True
    experiment: str = "hml"
    progress: bool = True

    def validate(self) -> None:
        if not self.store:
            raise ConfigError("store", "is empty", "the path of a scene-graph feature store")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError("methods", f"unknown or empty {bad or self.methods}", f"a subset of {list(METHODS)}")


@dataclass
class StageSpec:
    """One training stage of a method: its positive classes, CE span, losses and step budget."""

    method: str
    stage: int
    positives: list[int]
    seen: list[int]
    gamma: float
    steps: int
    cr_weight: float = 0.0
    lam: float = 0.0
    stage_init: str = "fresh"


def stage_plan(method: str, tree: PredicateTree, cfg: HMLConfig) -> list[StageSpec]:
    """HML: one stage per tree layer (CB-CE, then + CR + lambda MR). Baselines: one stage over all
    predicates with the same total step budget (ce: gamma = 0, i.e. all weights 1; cb: gamma)."""
    all_ids = list(range(1, len(tree.predicates) + 1))
    budget = tree.num_stages * cfg.steps_per_stage
    if method == "ce":
        return [StageSpec("ce", 1, all_ids, all_ids, 0.0, budget)]
    if method == "cb":
        return [StageSpec("cb", 1, all_ids, all_ids, cfg.gamma, budget)]
    steps = stage_steps(tree.num_stages, cfg.steps_per_stage, cfg.stage1_share)
    return [StageSpec("hml", s, tree.stage_predicates(s), tree.seen_predicates(s), cfg.gamma, steps[s - 1],
                      cfg.cr_weight if s > 1 else 0.0, cfg.lam if s > 1 else 0.0,
                      cfg.stage_init if s > 1 else "fresh")
            for s in range(1, tree.num_stages + 1)]


def stage_steps(num_stages: int, steps_per_stage: int, stage1_share: float | None) -> list[int]:
    """Steps of each HML stage: the budget num_stages x steps_per_stage, `stage1_share` of it to stage 1
    and the rest split equally (the last stage takes the rounding remainder); equal with None or 1 stage."""
    budget = num_stages * steps_per_stage
    if stage1_share is None or num_stages == 1:
        return [steps_per_stage] * num_stages
    first = max(1, round(budget * stage1_share))
    rest = [(budget - first) // (num_stages - 1)] * (num_stages - 1)
    rest[-1] += budget - first - sum(rest)
    if min(rest) < 1:
        raise ConfigError("stage1_share", f"{stage1_share} leaves no steps for later stages",
                          "a share that leaves every stage at least one step")
    return [first, *rest]


def label_map(spec: StageSpec, num_predicates: int) -> list[int]:
    """Predicate id -> training label: itself for the stage's positives, -1 (ignored by CE, seen by CR)
    for other annotated predicates; 0 stays background."""
    lm = [-1] * (num_predicates + 1)
    lm[0] = 0
    for p in spec.positives:
        lm[p] = p
    return lm


def train_statistics(store: FeatureStore, use_freq_bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Annotated predicate counts (index = 1-based id) over the train split, and the frequency bias."""
    from components.models.frequency import frequency_bias

    n_pred, n_obj = len(store.manifest.predicates), len(store.manifest.objects)
    columns = ["image_id", "labels", "rels"]  # label scans: no object feature is decoded
    images = ({"image_id": i, "labels": labels, "rels": rels}
              for _, table in store.iter_columns("train", columns)
              for i, labels, rels in zip(*(table.column(c).to_pylist() for c in columns)))
    fb = frequency_bias(images, n_obj, n_pred) if use_freq_bias else None
    return store.predicate_counts("train"), fb


# ----------------------------------------------------------------------------------------- worker side
def _previous_stage(cfg: dict, device) -> PreviousStage | None:
    """Frozen stage k-1 model and its anchors/F/Omega, refused if written for another model/config."""
    if not cfg["prev_checkpoint"]:
        return None
    meta, state = load_checkpoint(cfg["prev_checkpoint"], expect={"model_hash": cfg["model_hash"],
                                                                  "method": cfg["method"],
                                                                  "stage": cfg["stage"] - 1})
    old = load_predictor_state(build_stage_model(cfg, cfg["freq_bias_path"]), state["model"], cfg["prev_checkpoint"])
    old.to(device)
    return PreviousStage(old, list(meta["seen"]), state["anchors"], state["fisher"], state["importance"])


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train loop of one stage: DDP model, streamed batches, CE/CR/MR plugins, checkpoints, resume."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from components.data.detections import detection_graph
    from components.models.pairs import sample_pairs
    from components.optim import adam
    from pipelines.ray_runtime import quiet_checkpoint_reports
    from pipelines.streaming import iter_scene_graph_batches

    quiet_checkpoint_reports()
    torch.set_num_threads(cfg["threads"])
    rank = ray.train.get_context().get_world_rank()
    device = get_device()
    torch.manual_seed(cfg["seed"] * 1000 + cfg["stage"])  # a NEW random model per stage (same on all ranks)
    fresh = build_stage_model(cfg, cfg["freq_bias_path"])
    previous = _previous_stage(cfg, device)
    if previous is not None and cfg["stage_init"] == "previous":
        fresh.load_state_dict(previous.model.state_dict())
    model = prepare_model(fresh)
    base = unwrap(model)
    optimizer = adam(model.parameters(), cfg["lr"])
    counts = {int(k): int(v) for k, v in cfg["counts"].items()}
    plugins, tracker = stage_plugins(base, counts, cfg["seen"], cfg["gamma"], previous, cfg["cr_weight"], cfg["lam"],
                                     background=cfg["background_weight"], cr_span=cfg["cr_span"])
    expect = {"model_hash": cfg["model_hash"], "stage_key": cfg["stage_key"]}
    start, history = 0, []
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            meta, state = load_checkpoint(Path(d) / STATE_FILE, expect=expect)
            load_predictor_state(base, state["model"], Path(d) / STATE_FILE)
        optimizer.load_state_dict(state["optimizer"])
        tracker.load_state_dict(state["tracker"])
        start, history = int(meta["step"]), list(state["history"])

    def report(metrics: dict) -> None:
        if rank != 0:
            ray.train.report(metrics)
            return
        meta = {**expect, "method": cfg["method"], "stage": cfg["stage"], "step": metrics["step"],
                "steps": cfg["steps"], "seen": list(cfg["seen"]), "positives": list(cfg["positives"])}
        fisher, importance = ({n: v.cpu() for n, v in d.items()} for d in tracker.result())  # CPU: loads anywhere
        state = {"model": {k: v.detach().cpu() for k, v in base.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "tracker": tracker.state_dict(), "history": history,
                 "anchors": {n: p.detach().cpu().clone() for n, p in base.relation_parameters()},
                 "fisher": fisher, "importance": importance}
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / STATE_FILE, meta, state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    def on_step(m: dict) -> None:
        m["resumed_from"] = start  # 0 on a fresh start, else the checkpoint step training resumed at
        history.append(m)
        fault = cfg.get("fault_injection")  # test hook: fail once (guarded by a marker file) at a step
        if fault and m["step"] == fault["at_step"] and not os.path.exists(fault["marker"]):
            kill_after_checkpoint(fault, cfg["ray_run_dir"], cfg["checkpoint_every"])
        if m["step"] % cfg["checkpoint_every"] == 0 or m["step"] == cfg["steps"]:
            report({**summarize(history, cfg["checkpoint_every"]), "step": m["step"], "stage": cfg["stage"]})

    shard = ray.train.get_dataset_shard("train")
    lm = np.asarray(cfg["label_map"], dtype=np.int64)

    def batches():
        """Step k trains on the k-th batch of the shard stream (a resumed stage skips the `start` batches it
        already trained on) with pair sampling and dropout seeded by (seed, stage, rank, k): a resumed
        stage replays the uninterrupted run: the shard yields the same rows in the same order (PerRankDataConfig)."""
        step = 0
        while True:
            n = 0
            for images in iter_scene_graph_batches(shard, cfg["batch_size"]):
                n += 1
                step += 1
                if step <= start:
                    continue
                seeds = [cfg["seed"], cfg["stage"], rank, step]
                torch.manual_seed(int(np.random.SeedSequence(seeds).generate_state(1)[0]))  # step's dropout
                if cfg.get("mode") == "sgdet":  # the detections, with targets assigned from the GT
                    images = [detection_graph(im) for im in images]
                pairs = sample_pairs(images, np.random.default_rng(seeds), cfg["max_fg"], cfg["max_bg"], lm)
                yield pairs.to(device)
            if n == 0:
                raise InputError("train split", "no images reached this worker", "at least one image per worker")

    if start >= cfg["steps"]:  # finished before a driver crash: hand the final checkpoint back again
        report({"step": start, "stage": cfg["stage"]})
        return
    train_stage(model, batches(), plugins, optimizer, cfg["steps"], start_step=start, on_step=on_step,
                progress=cfg["progress"] and rank == 0)


# ----------------------------------------------------------------------------------------- driver side
def _fit_stage(stage_dir: Path, cfg: HMLConfig, loop_cfg: dict, train_data: tuple) -> dict:
    """One TorchTrainer run; copies its final checkpoint and metrics into `stage_dir`.
    `train_data` = (whole train split, rank r's fixed part at index r): see `per_rank_datasets`."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.streaming import PerRankDataConfig

    storage = ensure_writable_dir(Path(cfg.output_dir) / "ray").resolve()
    whole, parts = train_data
    trainer = TorchTrainer(
        train_loop_per_worker, datasets={"train": whole},
        train_loop_config={**loop_cfg, "ray_run_dir": str(storage / stage_dir.name)},  # for the fault hook
        dataset_config=PerRankDataConfig({"train": parts}),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(storage_path=str(storage), name=stage_dir.name,
                             failure_config=FailureConfig(max_failures=cfg.max_failures)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise InputError(f"stage {stage_dir.name}", "finished without a checkpoint", "a reported final checkpoint")
    with result.checkpoint.as_directory() as d:
        blob = (Path(d) / STATE_FILE).read_bytes()
    final = write_bytes(stage_dir / "final.pt", blob)
    meta, state = load_checkpoint(final, expect={"stage_key": loop_cfg["stage_key"]})
    if meta["step"] != loop_cfg["steps"]:
        raise InputError(str(final), f"stopped at step {meta['step']}", f"{loop_cfg['steps']} steps")
    write_text(stage_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in state["history"]))
    return {"checkpoint": final.name, "steps": int(meta["step"]), "summary": summarize(state["history"])}


def stage_checkpoint(stage: StageResult) -> Path:
    """Absolute path of a stage's final checkpoint. `_DONE.json` stores its name only, relative to the stage
    directory, so a moved or copied output_dir (or another working directory) still finds its own file."""
    return (stage.path / stage.result["checkpoint"]).resolve()


def build_tree(cfg: HMLConfig, predicates: list[str], counts: np.ndarray) -> PredicateTree:
    """The predicate tree, from `cfg.tree` or built from word vectors (nothing written yet)."""
    if cfg.tree:
        tree = PredicateTree.load(cfg.tree)
        if tree.predicates != predicates:
            raise InputError(cfg.tree, "predicate list differs from the feature store's", "a tree of this store")
        if tree.num_stages != cfg.stages:
            print(f"[hml] warning: stages={cfg.stages} ignored: the tree {cfg.tree} has {tree.num_stages} layers, "
                  "one stage each", file=sys.stderr, flush=True)
    else:
        from components.taxonomy.vectors import load_word_vectors

        tree = build_predicate_tree(predicates, [int(c) for c in counts[1:]], load_word_vectors(cfg.vectors),
                                    cfg.threshold, cfg.stages, cfg.overrides)
    return tree


def train_method(method: str, cfg: HMLConfig, tree: PredicateTree, counts: np.ndarray, base_cfg: dict,
                 cache: StageCache, train_data: tuple, loop_extra: dict | None = None) -> StageResult:
    """All stages of `method` (complete ones skipped); returns the last stage's result."""
    prev: StageResult | None = None
    for spec in stage_plan(method, tree, cfg):
        key_cfg = {**base_cfg, **spec.__dict__, "counts": {p: int(max(counts[p], 1)) for p in spec.positives}}
        name = f"{method}-stage{spec.stage}"
        key = cache.key(name, key_cfg, [prev] if prev else None)
        loop_cfg = {**key_cfg, "stage_key": key, "label_map": label_map(spec, len(tree.predicates)),
                    # absolute: Ray Train workers run in another directory than the driver
                    "prev_checkpoint": str(stage_checkpoint(prev)) if prev else None,
                    "progress": cfg.progress,
                    "max_fg": cfg.max_fg_per_image, "max_bg": cfg.max_bg_per_image}
        loop_cfg.update(loop_extra or {})
        print(f"[hml] {name}: {len(spec.positives)} positive predicates, {len(spec.seen)} in the CE span, "
              f"{spec.steps} steps", flush=True)
        prev = cache.run(name, key_cfg, lambda d, lc=loop_cfg: _fit_stage(d, cfg, lc, train_data),
                         [prev] if prev else None)
        print(f"[hml] {name}: {'cached' if prev.cached else f'trained in {prev.seconds:.1f} s'} -> "
              f"{stage_checkpoint(prev)}", flush=True)
    assert prev is not None
    return prev


def methods_at_once(cfg: HMLConfig, resources: Mapping[str, float], fixed: bool = True) -> int:
    """How many methods train at once: at most `concurrent_methods` and the number of methods; on a Ray of
    `fixed` resources (a local one), as many methods as fit beside one CPU kept for Ray Data's read tasks (which
    would otherwise wait forever for a CPU), at least 1, saying so when that is fewer than asked (a joined
    cluster may grow: there the number asked runs). A method holds a stage's workers while it trains and its
    prediction pool (`predict_actors`) while it predicts, so it needs room for the larger of the two."""
    want = min(cfg.concurrent_methods, len(cfg.methods))
    if not fixed:
        return want
    width = max(cfg.num_workers, cfg.predict_actors)  # workers or actors one method holds at a time
    stage_cpus = width * cfg.cpus_per_worker
    fit = int((float(resources.get("CPU", 0.0)) - 1.0 + 1e-9) // stage_cpus)
    if cfg.use_gpu:
        fit = min(fit, int(float(resources.get("GPU", 0.0)) + 1e-9) // width)
    at_once = max(1, min(want, fit))
    if at_once < want:
        print(f"[hml] concurrent_methods={cfg.concurrent_methods}: {at_once} method(s) at a time, as many as this "
              f"Ray's {resources.get('CPU', 0):g} CPUs hold ({stage_cpus:g} CPUs per method, 1 kept for reading data)",
              flush=True)
    return at_once


def run(cfg: HMLConfig, loop_extra: dict | None = None) -> dict:
    """Tree, training of every method, predictions and evaluation; returns and writes results.json."""
    import ray

    from pipelines.ray_runtime import check_requests, init_ray, joins_cluster
    from pipelines.streaming import dataset_from_store, per_rank_datasets

    store = FeatureStore(cfg.store, kind=SCENE_GRAPH)
    man = store.manifest
    if cfg.mode == "sgdet" and not man.detections:
        raise ConfigError("mode=sgdet", f"store {cfg.store} holds no detections",
                          "a store written with detections (prepare_data.py --dataset sgg-planted-det), "
                          "or mode=predcls / mode=sgcls")
    counts, fb = train_statistics(store, cfg.freq_bias)
    tree = build_tree(cfg, man.predicates, counts)
    gpu = 1.0 if cfg.use_gpu else 0.0
    asks = {"a stage's Ray Train workers (num_workers x cpus_per_worker, 1 GPU each with use_gpu)":
            {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers * gpu}}
    if cfg.predict_actors:
        asks["the prediction actors (predict_actors x cpus_per_worker, 1 GPU each with use_gpu)"] = \
            {"CPU": cfg.predict_actors * cfg.cpus_per_worker, "GPU": cfg.predict_actors * gpu}
    resources, fixed = init_ray(cfg.ray_address, cfg.num_cpus), not joins_cluster(cfg.ray_address)
    check_requests("num_workers / predict_actors / cpus_per_worker / use_gpu", asks, resources, fixed)
    concurrent = methods_at_once(cfg, resources, fixed)
    out = ensure_writable_dir(cfg.output_dir)  # created only once the inputs have been read and checked
    tree.save(out / "tree.json")
    tree.draw(out / "tree.png")
    fb_path = None
    if fb is not None:
        fb_path = out / "freq_bias.npy"
        with atomic_path(fb_path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, fb)
    model_cfg = {"predictor": cfg.predictor, "num_objects": len(man.objects), "num_predicates": len(man.predicates),
                 "feature_dim": man.feature_dim, "hidden_dim": cfg.hidden_dim,
                 **mode_fields(cfg.mode)}
    # What a stage's cache key depends on: contents (frequency bias, data shards) rather than paths, so a
    # copied or moved output_dir keeps its complete stages.
    base_cfg = {**model_cfg, "model_hash": config_hash({**model_cfg, "freq_bias": cfg.freq_bias}),
                "freq_bias_sha256": sha256_file(fb_path) if fb_path else None,
                "data": [f["sha256"] for f in man.splits["train"]], "batch_size": cfg.batch_size,
                "max_fg_per_image": cfg.max_fg_per_image, "max_bg_per_image": cfg.max_bg_per_image,
                "lr": cfg.lr, "seed": cfg.seed, "background_weight": cfg.background_weight, "cr_span": cfg.cr_span,
                "num_workers": cfg.num_workers,
                "checkpoint_every": cfg.checkpoint_every, "threads": cfg.threads_per_worker}
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = cfg.progress
    # one bar per dataset, not one per operator: the operator bars of a stage's streaming split stayed open
    # (redrawn, 100%) until the driver exited, ~120 lines for a two-stage run
    data_ctx.enable_operator_progress_bars = False
    # each rank streams its own fixed part of the train split, in a fixed order: a stage resumed after a
    # worker failure replays the uninterrupted run, with any number of workers
    train_data = (dataset_from_store(cfg.store, "train"),
                  per_rank_datasets(cfg.store, "train", cfg.num_workers, deep_check=False))
    cache = StageCache(out / "stages")
    results: dict[str, Any] = {"tree": tree.to_json(), "methods": {}}
    loop_extra = {"freq_bias_path": str(fb_path.resolve()) if fb_path else None, **(loop_extra or {})}

    def train_and_evaluate(method: str) -> dict:
        final = train_method(method, cfg, tree, counts, base_cfg, cache, train_data, loop_extra)
        return {"checkpoint": str(stage_checkpoint(final)), "stage_dir": str(final.path),
                "train_summary": final.result["summary"],
                **evaluate_method(method, stage_checkpoint(final), cfg, store, tree, model_cfg, fb_path, out)}

    results["methods"] = run_concurrently({m: lambda m=m: train_and_evaluate(m) for m in cfg.methods}, concurrent)
    write_json(out / "results.json", results)
    log_results(cfg, results, out)
    return results


def evaluate_method(method: str, checkpoint: str | Path, cfg: HMLConfig, store: FeatureStore, tree: PredicateTree,
                    model_cfg: dict, fb_path: Path | None, out: Path) -> dict:
    """Predict on the evaluation split, save the predictions, and compute R@K/mR@K/Mean@K (+ hierarchy), in one
    streamed pass (memory bounded by a shard and a batch of images, whatever the split's size)."""
    from components.models.checkpoint import save_predictor

    model = load_stage_model(checkpoint, model_cfg, fb_path)
    mdir = ensure_writable_dir(out / method)
    save_predictor(model, mdir / "model.safetensors", extra={"method": method})
    actors: set[str] = set()
    if cfg.predict_actors:
        predicted = noting_actors(predict_on_ray(checkpoint, model_cfg, fb_path, cfg.store, cfg.eval_split,
                                                 cfg.eval_images, cfg.predict_actors, cfg.cpus_per_worker,
                                                 1.0 if cfg.use_gpu else 0.0), actors)
    else:
        predicted = predict_store(model, store, cfg.eval_split, cfg.eval_images)
    result = evaluate_predictions(predicted, tree, cfg, mdir)
    if cfg.predict_actors:
        result["prediction_actors"] = len(actors)  # how many of the pool's actors predicted
    return result


def noting_actors(predicted: Iterable[tuple[dict, dict]], seen: set[str]) -> Iterator[tuple[dict, dict]]:
    """Pass (image, prediction) pairs through, adding each prediction's actor to `seen`."""
    for img, pred in predicted:
        seen.add(pred["actor"])
        yield img, pred


def evaluate_predictions(predicted: Iterable[tuple[dict, dict]], tree: PredicateTree, cfg: HMLConfig,
                         mdir: Path) -> dict:
    """Save predictions (pipelines/evaluate.py format); R@K, mR@K, Mean@K, hR@K/hmR@K (parent = the HML tree's
    coarse parent) against the annotated labels, and the same against the true fine labels where the store
    has them (sgg-planted); SGCls also `object_accuracy` (percent of objects given their GT label; SGDet: of the
    detections assigned to a GT object). One pass over (image, prediction) pairs: nothing is kept per image."""
    from components.data.detections import assign_detections
    from components.evaluation.predictions import SGGPredictionWriter
    from components.evaluation.sgg import SGGEvaluator

    parent = tree.to_json()["parent"]
    n = len(tree.predicates)
    annotated, fine = SGGEvaluator(n, cfg.ks, tree=parent), SGGEvaluator(n, cfg.ks, tree=parent)
    has_fine = False
    objects = [0, 0]  # SGCls: objects labelled correctly, objects
    with SGGPredictionWriter(mdir / "predictions", n) as writer:
        for img, pred in predicted:
            inputs = sgg_inputs(img, pred, cfg.mode)
            writer.add(inputs)
            annotated.process(inputs)
            fine.process(sgg_inputs(img, pred, cfg.mode, fine=True))
            has_fine = has_fine or not np.array_equal(img["rels"][:, 2], img["rel_fine"])
            if "obj_labels" in pred:
                gt = img["labels"]
                if cfg.mode == "sgdet":
                    match = assign_detections(img["det_boxes"], img["boxes"])
                    gt = np.where(match >= 0, img["labels"][np.maximum(match, 0)], -1)
                objects[0] += int((pred["obj_labels"] == gt).sum())
                objects[1] += int((gt >= 0).sum())
    metrics = annotated.evaluate()
    if objects[1]:
        metrics["object_accuracy"] = 100.0 * objects[0] / objects[1]  # percent, like the recalls
    if has_fine:
        metrics.update({f"fine_{k}": v for k, v in fine.evaluate().items() if isinstance(v, (int, float))})
    write_json(mdir / "metrics.json", metrics)
    return {"metrics": metrics}


def sgg_inputs(img: dict, pred: dict, mode: str = "predcls", fine: bool = False) -> dict:
    """Evaluator input of one image: the GT boxes as predicted boxes (SGDet: the detections' boxes); the
    predicted object labels and scores of an SGCls/SGDet prediction, else (PredCls) the GT labels with object
    scores 1."""
    rels = img["rels"].copy()
    if fine:
        rels[:, 2] = img["rel_fine"]
    labels = pred.get("obj_labels", img["labels"])
    scores = pred.get("obj_scores", np.ones(len(img["labels"]), np.float32))
    boxes = img["det_boxes"] if mode == "sgdet" else img["boxes"]
    return {"gt_boxes": img["boxes"], "gt_labels": img["labels"], "gt_rels": rels, "pred_boxes": boxes,
            "pred_labels": labels, "pred_scores": scores, "rel_pairs": pred["pairs"], "rel_scores": pred["rel_scores"]}


def log_results(cfg: HMLConfig, results: dict, out: Path) -> None:
    """MLflow: a parent run with the config and tree, one child run per method (train curves, metrics)."""
    if not cfg.track:
        return
    from components.tracking import Tracker

    tracker = Tracker.for_run_dir(out, cfg.experiment)
    with tracker.run(f"hml-{Path(cfg.output_dir).name}") as parent:
        tracker.log_config(parent, cfg)
        tracker.log_artifact(parent, out / "tree.png")
        tracker.log_artifact(parent, out / "tree.json")
        for method, res in results["methods"].items():
            with tracker.run(method, parent_run_id=parent) as child:
                tracker.log_params(child, {"method": method})
                offset = 0
                for stage_file in sorted(Path(out / "stages").glob(f"{method}-stage*/metrics.jsonl")):
                    rows = [json.loads(line) for line in stage_file.read_text().splitlines() if line]
                    for m in rows:
                        tracker.log_metrics(child, m, step=offset + int(m["step"]))
                    offset += len(rows)
                flat = {k.replace("@", "_at_"): v for k, v in res.get("metrics", {}).items()
                        if isinstance(v, (int, float))}  # MLflow metric names may not contain '@'
                tracker.log_metrics(child, flat)
    tracker.flush()


def summary_table(results: dict, ks: Sequence[int]) -> str:
    """Markdown table of R@K, mR@K, Mean@K and hierarchy-aware hR@K/hmR@K per method (percent)."""
    cols = [f"{m}@{k}" for k in ks for m in ("R", "mR", "Mean")] + [f"{m}@{max(ks)}" for m in ("hR", "hmR")]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, res in results["methods"].items():
        m = res.get("metrics", {})
        lines.append(f"| {method} | " + " | ".join(f"{m[c]:.1f}" if c in m else "-" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python pipelines/hml.py --config cfg.yaml key=value ...`; errors print one line, exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (HMLConfig fields)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lam=1.0 stages=2")
    args = parser.parse_args(argv)

    def action() -> None:
        cfg = load_config(HMLConfig, args.config, args.overrides)
        print(summary_table(run(cfg), cfg.ks))

    return exit_code(action)


if __name__ == "__main__":
    sys.exit(main())
