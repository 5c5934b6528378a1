"""DiffAugment's diffusion model trained on Ray Train: DDP workers stream the store's train split.

The single-actor path (`pipelines.diffusion.train_diffusion_on_ray`) holds every training row in one
process and reproduces `train_denoiser` bit for bit; this one spreads the steps over workers and never
gathers the features. Each worker reads its share of the relation samples through Ray Data (subject,
predicate, object, union_feature only), looks each row's text and hardness condition up by its triplet in a
`ConditionTable`, and takes `optimizer_step` on batch_size / N rows; DDP averages the gradients, so a step
sees about `cfg.batch_size` rows as in the actor path. The standardiser comes from one streamed pass.
Differences from the actor path, by design: minibatches are a shuffled stream (epochs without replacement,
a local shuffle buffer) instead of draws with replacement, so a seed gives another (equally valid) model;
`balance` > 0 is refused (it weighs every row before drawing); Ray Train's default split drops up to N - 1
rows; a worker lost mid-run restarts from the last checkpoint (weights, optimiser, lr schedule, step, losses)
with a fresh data order.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from components.atomic import ensure_writable_dir, write_bytes, write_json
from components.config import config_hash, from_dict, to_dict
from components.data.store import relation_arrays
from components.diffaug.diffusion import (
    DiffusionBundle,
    DiffusionConfig,
    autocast_dtype,
    build_denoiser,
    make_scheduler,
    one_cycle,
    optimizer_step,
    save_bundle,
)
from components.errors import ConfigError, DataError, InputError
from components.optim import adamw

COLUMNS = ["subject", "predicate", "object", "union_feature"]
STATE_FILE = "train_state.pt"
BUNDLE_FILE = "bundle.safetensors"


def _codes(subject: np.ndarray, predicate: np.ndarray, obj: np.ndarray, num_objects: int,
           num_predicates: int) -> np.ndarray:
    """One int64 code per (subject, predicate, object) triplet: (s * P + p) * O + o."""
    return (np.asarray(subject, np.int64) * num_predicates + np.asarray(predicate, np.int64)) * num_objects + obj


@dataclass
class ConditionTable:
    """Text (and mask) and hardness condition of each distinct (subject, predicate, object) triplet, looked up
    by its code (s * P + p) * O + o: what a worker needs to condition rows it streams, without every row's copy."""

    codes: np.ndarray  # (M,) int64, ascending
    text: np.ndarray  # (M, E) pooled or (M, T, E) tokens
    mask: np.ndarray | None  # (M, T) with tokens
    hardness: np.ndarray | None  # (M, K)
    num_objects: int
    num_predicates: int

    @classmethod
    def build(cls, triplets: np.ndarray, text: np.ndarray, mask: np.ndarray | None, hardness: np.ndarray | None,
              num_objects: int, num_predicates: int) -> ConditionTable:
        """Table of the (M, 3) index `triplets` (each once) and their condition rows, sorted by code."""
        trip = np.asarray(triplets, np.int64)
        if trip.ndim != 2 or trip.shape[1] != 3 or len(trip) == 0:
            raise InputError("triplets", f"shape {trip.shape}", "(M >= 1, 3) subject, predicate, object indices")
        codes = _codes(trip[:, 0], trip[:, 1], trip[:, 2], num_objects, num_predicates)
        if len(np.unique(codes)) != len(codes):
            raise InputError("triplets", "contain duplicates", "each triplet once")
        for name, a in (("text", text), ("mask", mask), ("hardness", hardness)):
            if a is not None and len(a) != len(trip):
                raise InputError(name, f"{len(a)} rows", f"{len(trip)} (one per triplet)")
        order = np.argsort(codes)
        return cls(codes[order], np.asarray(text, np.float32)[order],
                   None if mask is None else np.asarray(mask, bool)[order],
                   None if hardness is None else np.asarray(hardness, np.float32)[order], num_objects, num_predicates)

    def rows(self, subject: np.ndarray, predicate: np.ndarray, obj: np.ndarray) -> np.ndarray:
        """Table rows of the rows' triplets; a triplet without a condition is a DataError naming it."""
        codes = _codes(subject, predicate, obj, self.num_objects, self.num_predicates)
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        missing = self.codes[at] != codes
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise DataError("train split", f"triplet ({subject[i]}, {predicate[i]}, {obj[i]}) has no condition",
                            "a text embedding and hardness for every training triplet")
        return at


def streamed_standardizer(data, column: str = "union_feature", batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of `column` over a Dataset/iterator in one pass (Chan et al.'s pairwise merge
    of batch means and squared deviations, float64): `fit_standardizer`'s numbers without holding the rows."""
    n, mean, m2 = 0, None, None
    for batch in data.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        x = relation_arrays(batch.select([column]))[column].astype(np.float64)
        if not np.isfinite(x).all():
            raise DataError(column, "contains NaN or inf", "finite values")
        bn, bmean = len(x), x.mean(0)
        bm2 = ((x - bmean) ** 2).sum(0)
        if mean is None:
            n, mean, m2 = bn, bmean, bm2
            continue
        delta, total = bmean - mean, n + bn
        mean = mean + delta * bn / total
        m2 = m2 + bm2 + delta ** 2 * n * bn / total
        n = total
    if n < 2:
        raise InputError(column, f"{n} rows", "at least 2 training rows")
    return mean.astype(np.float32), np.maximum(np.sqrt(m2 / n), 1e-6).astype(np.float32)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def train_loop_per_worker(c: dict) -> None:
    """Ray Train loop: DDP denoiser, streamed minibatches conditioned through the table, checkpoints, resume."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model
    from tqdm.auto import tqdm

    from pipelines.ray_runtime import quiet_checkpoint_reports
    from pipelines.train_faults import kill_after_checkpoint

    quiet_checkpoint_reports()
    torch.set_num_threads(c["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = from_dict(DiffusionConfig, c["cfg"])
    table: ConditionTable = ray.get(c["conditions"])
    mean, std = np.asarray(c["mean"], np.float32), np.asarray(c["std"], np.float32)
    device = get_device()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    net = build_denoiser(cfg, len(mean), table.text.shape[-1], 0 if table.hardness is None else table.hardness.shape[1])
    model = prepare_model(net)
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    lr_sched = one_cycle(opt, cfg.lr, cfg.steps)
    start, losses, restarts = 0, [], []  # restarts: the checkpoint steps this run resumed from
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        if state["config_hash"] != config_hash(cfg):
            raise InputError("checkpoint", "written for another diffusion config", "this run's config")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if lr_sched is not None:
            lr_sched.load_state_dict(state["lr_schedule"])
        start, losses, restarts = int(state["step"]), list(state["losses"]), [*state["restarts"], int(state["step"])]
    sched = make_scheduler(cfg)
    dtype = getattr(torch, c["dtype"])
    gen = torch.Generator().manual_seed(_seed(cfg.seed, rank, start))  # noise, timesteps, CFG drops
    per_rank = max(1, math.ceil(cfg.batch_size / world))
    shard = ray.train.get_dataset_shard("train")

    def batches():
        """(x0, rows of the table) minibatches of this rank's stream, epoch after epoch (reshuffled)."""
        epoch = 0
        while True:
            n = 0
            for b in shard.iter_batches(batch_size=per_rank, batch_format="pyarrow",
                                        local_shuffle_buffer_size=max(4 * per_rank, 1024),
                                        local_shuffle_seed=_seed(cfg.seed, rank, start, epoch)):
                a = relation_arrays(b)
                n += 1
                yield (torch.from_numpy((a["union_feature"] - mean) / std),
                       table.rows(a["subject"], a["predicate"], a["object"]))
            if n == 0:
                raise InputError("train split", "no rows reached this worker", "at least one row per worker")
            epoch += 1

    def report(step: int) -> None:
        window = losses[-c["checkpoint_every"]:]
        metrics = {"step": step, "loss": float(np.mean(window))}
        if rank != 0:
            ray.train.report(metrics)
            return
        live = net if device.type == "cpu" else copy.deepcopy(net).cpu()
        with tempfile.TemporaryDirectory() as d:
            save_bundle(DiffusionBundle(live, mean, std, cfg), Path(d) / BUNDLE_FILE)
            torch.save({"config_hash": config_hash(cfg), "step": step, "losses": losses, "restarts": restarts,
                        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                        "optimizer": opt.state_dict(),
                        "lr_schedule": None if lr_sched is None else lr_sched.state_dict()}, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    if start >= cfg.steps:  # finished before a driver crash: hand the final checkpoint back again
        report(start)
        return
    model.train()
    stream = batches()
    for step in tqdm(range(start, cfg.steps), desc="diffusion train (Ray Train)", disable=not (c["progress"] and rank == 0),
                     mininterval=2.0, initial=start, total=cfg.steps):
        x0, rows = next(stream)
        loss = optimizer_step(model, sched, opt, lr_sched, x0, torch.from_numpy(table.text[rows]),
                              None if table.mask is None else torch.from_numpy(table.mask[rows]),
                              None if table.hardness is None else torch.from_numpy(table.hardness[rows]),
                              gen, device, dtype, cfg.cfg_dropout)
        if world > 1:  # the step's loss over every rank's rows
            torch.distributed.all_reduce(loss)
            loss = loss / world
        losses.append(float(loss.item()))
        fault = c.get("fault_injection")  # test hook: fail once (guarded by a marker file) at a step
        if fault and step + 1 == fault["at_step"] and not Path(fault["marker"]).exists():
            kill_after_checkpoint(fault, c["ray_run_dir"], c["checkpoint_every"])
        if (step + 1) % c["checkpoint_every"] == 0 or step + 1 == cfg.steps:
            report(step + 1)


def train_diffusion_on_ray_train(store_root: str | Path, conditions: ConditionTable, cfg: DiffusionConfig,
                                 out_dir: str | Path, num_workers: int = 2, cpus_per_worker: float = 0.5,
                                 gpus_per_worker: float = 0.0, checkpoint_every: int = 500, max_failures: int = 1,
                                 progress: bool = False, loop_extra: dict | None = None) -> dict:
    """Train with `num_workers` Ray Train workers (each `cpus_per_worker` CPUs and, when `gpus_per_worker` > 0,
    that share of a GPU to compute on) streaming `store_root`'s train split; writes
    out_dir/{bundle.safetensors, metrics.json} (Ray Train's run and checkpoints under out_dir/ray) and returns
    the paths + per-step losses (mean over ranks), as `train_diffusion_on_ray` does. `max_failures`: worker
    failures survived, each resumed from the last registered checkpoint. `loop_extra`: added to the loop's
    config (tests: `fault_injection`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_runtime import actor_threads
    from pipelines.streaming import dataset_from_store

    if cfg.balance > 0:
        raise ConfigError("diffusion.balance", f"{cfg.balance} with Ray Train workers",
                          "0 (balanced minibatches need the single training actor: diffusion_workers=0)")
    if num_workers < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0 or checkpoint_every < 1:
        raise InputError("train_diffusion_on_ray_train", f"num_workers={num_workers}, cpus_per_worker="
                         f"{cpus_per_worker}, gpus_per_worker={gpus_per_worker}, checkpoint_every={checkpoint_every}",
                         "positive workers, CPUs and checkpoint interval, GPUs >= 0")
    use_gpu = gpus_per_worker > 0
    out = ensure_writable_dir(out_dir)
    data = dataset_from_store(store_root, "train").select_columns(COLUMNS)
    data.context.enable_progress_bars = False  # a set of Ray Data bars per epoch; rank 0's tqdm shows the steps
    mean, std = streamed_standardizer(data)
    dtype = str(autocast_dtype(cfg, "cuda" if use_gpu else "cpu")).removeprefix("torch.")  # one for every rank
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        train_loop_per_worker, datasets={"train": data},
        train_loop_config={"cfg": to_dict(cfg), "conditions": ray.put(conditions), "mean": mean, "std": std,
                           "dtype": dtype, "threads": actor_threads(cpus_per_worker),
                           "checkpoint_every": checkpoint_every, "progress": progress,
                           "ray_run_dir": str((out / "ray" / "train").resolve()), **(loop_extra or {})},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker,
                                                           **({"GPU": gpus_per_worker} if use_gpu else {})}),
        run_config=RunConfig(storage_path=str((out / "ray").resolve()), name="train",
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise InputError(str(out), "diffusion training finished without a checkpoint", "a reported final checkpoint")
    with result.checkpoint.as_directory() as d:
        bundle = write_bytes(out / BUNDLE_FILE, (Path(d) / BUNDLE_FILE).read_bytes())
        state = torch.load(Path(d) / STATE_FILE, weights_only=True)
    if state["step"] != cfg.steps:
        raise InputError(str(out), f"diffusion training stopped at step {state['step']}", f"{cfg.steps} steps")
    metrics = {"config": to_dict(cfg), "config_hash": config_hash(cfg), "loss": state["losses"],
               "seconds": round(time.perf_counter() - t0, 2), "workers": num_workers, "dtype": dtype,
               "restarts": state["restarts"]}
    write_json(out / "metrics.json", metrics)
    return {"bundle": str(bundle), "metrics": str(out / "metrics.json"), "loss": state["losses"]}
