"""DiffAugment phase on a relation-sample store (vrr-planted or GQA-LT features), with baselines and controls.

    python pipelines/diffaug.py --store data/vrr --out runs/diffaug [--config cfg.yaml] [key=value ...]

Steps: load the store -> triplet augmentation (WordNet LCH) -> triplet text embeddings + K-means hardness
-> baseline classifiers (CE, WCE) on real training data -> diffusion training (Ray actor) -> sampling on
a Ray actor pool (n_generated requests, half few-, half medium-relation triplets) -> fine-tuning copies of
the CE baseline -> LTVRR evaluation on test. Every classifier training and fine-tuning is a Ray task
(pipelines/classifier.py), started as soon as its inputs exist. Variants (`variants`):
  baseline_ce, baseline_wce          no fine-tuning
  real_balanced_ft                   control: same fine-tuning budget on REAL relation-balanced tail samples
  diffaug_random / diffaug_so        generated from pure noise / from subject-object seeds (strength)
  diffaug_so_curriculum              diffaug_so samples, easy -> hard curriculum
  diffaug_so_half                    the first half of diffaug_so's samples per band (sample-count ablation)
  diffaug_so_nohardness              a second diffusion model without the hardness condition
Fidelity: the rate at which generated samples get their intended relation from (a) a union-feature
logistic-regression probe and (b) the CE baseline, vs the same rate on real test samples of the same tail
relations. Writes results.json, results.txt, bands.png, projection.png, diffusion_loss.png under --out; logs to
MLflow.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from components.atomic import ensure_writable_dir, write_json, write_text
from components.code_version import code_fingerprint
from components.config import config_hash, load_config, to_dict
from components.data.schema import RELATION_SAMPLE
from components.data.store import FeatureStore, relation_arrays
from components.diffaug.augment import augment_triplets
from components.diffaug.diffusion import DiffusionConfig, load_bundle
from components.diffaug.fidelity import copy_rate, copy_threshold, fidelity, spread_ratio, spread_warning
from components.diffaug.finetune import (
    RelationSet,
    TrainConfig,
    evaluate_classifier,
    finetune_config,
    predict_logits,
)
from components.diffaug.hardness import fit_hardness
from components.diffaug.report import (
    plot_bands,
    plot_loss_curves,
    plot_projection,
    results_table,
    window_means,
)
from components.diffaug.requests import (
    class_feature_pools,
    generated_set,
    real_control,
    sampling_plan,
    tail_triplet_pools,
)
from components.diffaug.seeds import subject_object_seed
from components.diffaug.text import GloVeEncoder, MiniLMEncoder, OpenCLIPEncoder, TextEncoder, embed_triplets
from components.diffaug.wordnet import LCHSimilarity, classes_without_synset
from components.errors import ConfigError, DataError, InputError
from components.models.vrr_classifier import VRRClassifier
from components.stages import arrays_hash
from components.taxonomy.vectors import load_word_vectors, phrase_vectors

if TYPE_CHECKING:
    from pipelines.diffusion import SamplerPool

log = logging.getLogger(__name__)

VARIANTS = ("baseline_ce", "baseline_wce", "real_balanced_ft", "diffaug_random", "diffaug_so",
            "diffaug_so_curriculum", "diffaug_so_half", "diffaug_so_nohardness", "wce_real_balanced_ft",
            "wce_diffaug_so")
# variants that fine-tune on the S-O-seeded samples (diffaug_so's); wce_* start from the WCE baseline (and,
# like every variant, fine-tune with plain CE: their fine-tuning data is already tail-heavy or balanced)
FROM_SO = ("diffaug_so_curriculum", "diffaug_so_half", "wce_diffaug_so")
ENCODERS = ("minilm", "glove-roles", "glove-mean", "openclip")


@dataclass
class DiffAugConfig:
    """Everything the DiffAugment phase needs; defaults are scaled down from the paper so the phase fits
    about 6 minutes on 2 CPU cores (full.py's `paper` preset restores the paper's sizes)."""

    store: str = ""
    out: str = ""
    # where the content-addressed artifacts live (diffusion models, sampled shards, text embeddings, WordNet
    # similarities); "" = inside `out`. Each is keyed by everything that determines it (its config, inputs and
    # the source code), so runs sharing a directory reuse what they have in common: full.py shares one between
    # its DiffAugment phases, and a changed fine-tuning setting trains no diffusion model again
    artifacts_dir: str = ""
    seed: int = 0
    variants: list[str] = field(default_factory=lambda: list(VARIANTS[:6]))
    lch_threshold: float = field(default=2.26, metadata={"range": (0.0, 4.0)})
    # class -> WordNet synset ('plate': 'plate.n.04') where the first noun sense is wrong or missing
    synsets: dict[str, str] = field(default_factory=dict)
    text_encoder: str = field(default="minilm", metadata={"choices": ENCODERS})
    text_tokens: bool = False  # condition on token embeddings (+ mask) instead of the pooled embedding
    clip_model: str = "ViT-L-14"
    clip_checkpoint: str = ""
    hardness_k: int = field(default=64, metadata={"range": (1, 100000)})  # paper: 1200
    embed_dim: int = field(default=256, metadata={"range": (1, None)})
    hidden: int = field(default=512, metadata={"range": (1, None)})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20))  # baselines; was 30
    finetune_epochs: int = field(default=10, metadata={"range": (1, None)})  # paper: 10
    finetune_batch: int = field(default=256, metadata={"range": (1, None)})  # paper: 256
    finetune_lr: float = field(default=1e-4, metadata={"range": (0.0, 1.0)})
    # share of random real training samples added to every fine-tuning set (real_balanced_ft too): 0.5 keeps
    # the many band but measured a lower combined score on real_balanced_ft (10.27 vs 10.60), so off by default
    finetune_real_fraction: float = field(default=0.0, metadata={"range": (0.0, 0.95)})
    n_generated: int = field(default=4000, metadata={"range": (2, None)})  # paper: 96K (half few, half medium)
    strength: float = field(default=0.7, metadata={"range": (0.0, 1.0)})
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    num_actors: int = field(default=2, metadata={"range": (1, 64)})
    # CPUs of each sampling actor; the diffusion training actor gets twice this (both cores by default)
    cpus_per_actor: float = field(default=1.0, metadata={"range": (0.05, 64.0)})
    # GPUs of each sampling actor and of the diffusion training actor (0: they compute on their CPUs)
    gpus_per_actor: float = field(default=0.0, metadata={"range": (0.0, 16.0)})
    # diffusion training: 0 = one actor holding the training rows (2 x cpus_per_actor CPUs; bit-reproducible with
    # train_denoiser); N >= 1 = Ray Train with N DDP workers (cpus_per_actor, gpus_per_actor each) streaming the
    # store's train split (pipelines/diffusion_train.py: shuffled epochs, so another model for the same seed)
    diffusion_workers: int = field(default=0, metadata={"range": (0, 1024)})
    shard_size: int = field(default=1024, metadata={"range": (1, None)})
    # rows a sampling actor denoises at once (x2 with guidance): 256 was 14% faster than 512 on one CPU thread
    # here (cache), with bit-identical samples; on a GPU use thousands
    sample_batch_size: int = field(default=256, metadata={"range": (1, None)})
    ray_address: str = ""
    num_cpus: int | None = field(default=None, metadata={"range": (1, 100000)})  # local Ray's CPUs (None: all)
    experiment: str = "diffaug"
    plots: bool = True

    def validate(self) -> None:
        if not self.store or not self.out:
            raise ConfigError("store/out", "missing", "--store STORE_DIR --out RUN_DIR")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError("variants", f"unknown {bad}" if bad else "empty", f"a subset of {list(VARIANTS)}")
        if self.diffusion_workers and self.diffusion.balance > 0:
            raise ConfigError("diffusion.balance", f"{self.diffusion.balance} with diffusion_workers="
                              f"{self.diffusion_workers}", "0, or diffusion_workers=0 (the single training actor)")
        if self.text_encoder == "openclip" and not self.clip_checkpoint:
            raise ConfigError("clip_checkpoint", "openclip needs a local checkpoint (no network weights here)",
                              "a path to an open_clip checkpoint file")


def make_encoder(cfg: DiffAugConfig) -> TextEncoder:
    """The configured text encoder."""
    if cfg.text_encoder == "minilm":
        return MiniLMEncoder()
    if cfg.text_encoder == "openclip":
        return OpenCLIPEncoder(cfg.clip_model, checkpoint_path=cfg.clip_checkpoint)
    return GloVeEncoder(mode=cfg.text_encoder.split("-")[1])


def load_splits(store_dir: str) -> tuple[FeatureStore, RelationSet, RelationSet]:
    """(store, train, test) of a relation-sample store."""
    store = FeatureStore(store_dir, kind=RELATION_SAMPLE)
    for split in ("train", "test"):
        if split not in store.splits:
            raise DataError(store_dir, f"no {split!r} split", "train and test splits")
    return (store, RelationSet.from_arrays(relation_arrays(store.read("train"))),
            RelationSet.from_arrays(relation_arrays(store.read("test"))))


class _Conditions:
    """Text embeddings (pooled or tokens) and hardness of (subject, predicate, object) index triplets."""

    def __init__(self, cfg: DiffAugConfig, objects: list[str], predicates: list[str], train_trip: np.ndarray,
                 extra_trip: np.ndarray, cache_dir: Path | None) -> None:
        self.objects, self.predicates, self.tokens = objects, predicates, cfg.text_tokens
        every = np.concatenate([train_trip, extra_trip]) if len(extra_trip) else train_trip
        self.emb = embed_triplets(make_encoder(cfg), self._names(np.unique(every, axis=0)), cache_dir,
                                  tokens=cfg.text_tokens)
        train_rows = self.emb.rows(self._names(np.unique(train_trip, axis=0)))
        self.hardness_model = fit_hardness(self.emb.pooled[train_rows], cfg.hardness_k, cfg.seed)
        self.hard_all = self.hardness_model(self.emb.pooled)

    def _names(self, trip: np.ndarray) -> list[tuple[str, str, str]]:
        return [(self.objects[s], self.predicates[p], self.objects[o]) for s, p, o in trip]

    def of(self, trip: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(text, mask or None, hardness) rows for (N, 3) triplets."""
        rows = self.emb.rows(self._names(trip))
        if self.tokens:
            return self.emb.tokens[rows], self.emb.mask[rows], self.hard_all[rows]
        return self.emb.pooled[rows], None, self.hard_all[rows]


def augmented_triplets(cfg: DiffAugConfig, train_trip: np.ndarray, obj_counts: np.ndarray, rel_counts: np.ndarray,
                       objects: list[str], lch_cache: Path | None) -> dict[str, np.ndarray]:
    """The WordNet-augmented tail triplets of `augment_triplets` at the config's LCH threshold and synset map."""
    return augment_triplets(train_trip, obj_counts, rel_counts, objects, cfg.lch_threshold,
                            similarity=LCHSimilarity(cfg.synsets, cache_path=lch_cache))


def tail_plan(train_trip: np.ndarray, aug_trip: np.ndarray, rel_counts: np.ndarray, pools: dict, n: int,
              seed: int) -> dict[str, np.ndarray]:
    """DiffAugment's sampling plan: `n` requests over the tail triplets of the training and augmented sets."""
    return sampling_plan(tail_triplet_pools(np.concatenate([train_trip, aug_trip]), rel_counts, pools), n, seed)


def _triplets(d: RelationSet) -> np.ndarray:
    return np.stack([d.subject, d.predicate, d.object], axis=1)


def _counts(train: RelationSet, n_obj: int, n_pred: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.bincount(np.concatenate([train.subject, train.object]), minlength=n_obj),
            np.bincount(train.predicate, minlength=n_pred))


def _train_diffusion(cfg: DiffAugConfig, dcfg: DiffusionConfig, train: RelationSet, cond: _Conditions,
                     out: Path, progress: bool) -> str:
    """Bundle path, trained in a Ray actor unless a bundle of the same config and data already exists."""
    from pipelines.diffusion import train_diffusion_on_ray
    from pipelines.diffusion_train import ConditionTable, train_diffusion_on_ray_train
    from pipelines.ray_runtime import actor_device

    text, mask, hard = cond.of(_triplets(train))
    # keyed by the config, the training arrays themselves (features, text embeddings, K-means hardness), the
    # source code, the device type and the Ray Train workers: another seed, text encoder, store, code version,
    # device or worker count never reuses it
    inputs = arrays_hash({"features": train.union_feature, "text": text, "mask": mask,
                          "hardness": hard if dcfg.use_hardness else None, "groups": train.predicate})
    key = config_hash({"cfg": to_dict(dcfg), "inputs": inputs, "code": code_fingerprint(),
                       "device": actor_device(cfg.gpus_per_actor), "workers": cfg.diffusion_workers})
    run_dir = out / f"diffusion-{key}"
    bundle = run_dir / "bundle.safetensors"
    if bundle.is_file():
        load_bundle(bundle, expected=dcfg)
        return str(bundle)
    every = max(dcfg.steps // 4, 1)
    if cfg.diffusion_workers:
        trip = np.unique(_triplets(train), axis=0)
        t_text, t_mask, t_hard = cond.of(trip)
        table = ConditionTable.build(trip, t_text, t_mask, t_hard if dcfg.use_hardness else None,
                                     len(cond.objects), len(cond.predicates))
        train_diffusion_on_ray_train(cfg.store, table, dcfg, run_dir, num_workers=cfg.diffusion_workers,
                                     cpus_per_worker=cfg.cpus_per_actor, gpus_per_worker=cfg.gpus_per_actor,
                                     checkpoint_every=every, progress=progress)
        return str(bundle)
    train_diffusion_on_ray(train.union_feature, text, mask, hard, dcfg, run_dir, cpus=cfg.cpus_per_actor * 2,
                           gpus=cfg.gpus_per_actor, checkpoint_every=every, groups=train.predicate)
    return str(bundle)


def check_actor_requests(cfg: DiffAugConfig, resources: Mapping[str, float], fixed: bool,
                         sampling: bool = True) -> None:
    """A classifier training task (cpus_per_actor, gpus_per_actor) and, with `sampling`, the diffusion training
    (one actor of 2 x cpus_per_actor, or diffusion_workers x cpus_per_actor plus a CPU for Ray Data's reads, which
    would starve without it) and the sampler pool (num_actors x each) must each fit the Ray cluster
    (`check_requests`: an error on a local Ray, a warning on a joined one)."""
    from pipelines.ray_runtime import check_requests

    def ask(n: int, cpus: float) -> dict[str, float]:
        return {"CPU": cpus, **({"GPU": n * cfg.gpus_per_actor} if cfg.gpus_per_actor else {})}

    asks = {"a classifier training task (cpus_per_actor)": ask(1, cfg.cpus_per_actor)}
    if sampling:
        n = cfg.diffusion_workers
        if n:
            asks["the diffusion Ray Train workers (diffusion_workers x cpus_per_actor) and a CPU for Ray Data"] = \
                ask(n, n * cfg.cpus_per_actor + 1)
        else:
            asks["the diffusion training actor (2 x cpus_per_actor)"] = ask(1, 2 * cfg.cpus_per_actor)
        asks["the sampler pool (num_actors x cpus_per_actor)"] = ask(cfg.num_actors, cfg.num_actors * cfg.cpus_per_actor)
    check_requests("cpus_per_actor / gpus_per_actor / num_actors", asks, resources, fixed)


def _sample(cfg: DiffAugConfig, bundle: str, plan: dict, cond: _Conditions, pools: dict, strength: float,
            out_dir: Path, sampler: SamplerPool) -> np.ndarray:
    """Union features for the plan's requests (Ray actor pool), in plan order, sampled into `out_dir` suffixed
    with a hash of the requests' content, the strength and the shard size: another plan, seed, condition or
    sampling setting never meets an earlier run's shards, also where runs share `artifacts_dir`."""
    from pipelines.diffusion import load_features, sample_on_ray

    trip = np.stack([plan["subject"], plan["predicate"], plan["object"]], axis=1)
    text, mask, hard = cond.of(trip)
    req = {"sample_id": plan["sample_id"], "subject": plan["subject"], "object": plan["object"],
           "predicate": plan["predicate"], "text": text, "hardness": hard}
    if mask is not None:  # absent, not None: the hash then equals the one sample_on_ray takes of its columns
        req["text_mask"] = mask
    if strength < 1.0:
        req["seed_features"] = subject_object_seed(pools, pools, plan["subject"], plan["object"], plan["sample_id"],
                                                   seed=cfg.seed)
    key = arrays_hash(req)  # hashed once: keys the shards and, with the settings that change them, names the directory
    named = config_hash({"requests": key, "strength": strength, "shard_size": cfg.shard_size}, 16)
    out_dir = out_dir.with_name(f"{out_dir.name}-{named}")
    sample_on_ray(bundle, req, out_dir, num_actors=cfg.num_actors, shard_size=cfg.shard_size,
                  cpus_per_actor=cfg.cpus_per_actor, strength=strength, pool=sampler, requests_hash=key,
                  batch_size=cfg.sample_batch_size)
    return load_features(out_dir, plan["sample_id"])


PROBE_ITERATIONS = 300


def _probe(train: RelationSet, n_pred: int, seed: int):
    """Union-feature -> relation logistic regression on real training data; returns features -> (N, P) scores.
    The probe is defined by its iteration cap (lbfgs usually stops there on vrr-planted): generated and real
    samples are scored by the same probe, so sklearn's 8-line ConvergenceWarning becomes one line."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=PROBE_ITERATIONS, C=1.0, random_state=seed).fit(train.union_feature,
                                                                                          train.predicate)
    if int(np.max(clf.n_iter_)) >= PROBE_ITERATIONS:
        print(f"[diffaug] fidelity probe: lbfgs stopped at its {PROBE_ITERATIONS}-iteration cap (the same probe "
              "scores generated and real samples)", flush=True)

    def scores(x: np.ndarray) -> np.ndarray:
        full = np.full((len(x), n_pred), -np.inf, np.float64)
        full[:, clf.classes_] = clf.decision_function(x)
        return full
    return scores


def _fidelity(gen: RelationSet, train: RelationSet, test: RelationSet, probe, model: VRRClassifier) -> dict:
    """Probe and baseline-model fidelity of generated samples vs real test samples of the same relations, and how
    many generated union features are near-copies of a training sample of their relation (`copy_rate`)."""
    real = test.subset(np.flatnonzero(np.isin(test.predicate, np.unique(gen.predicate))))
    out = {"probe": fidelity(probe, gen.union_feature, gen.predicate, real.union_feature, real.predicate),
           "copies": _copies(gen, train, real), "spread": spread_ratio(gen.union_feature, train.union_feature)}
    warning = spread_warning(out["spread"])
    if warning:
        log.warning(warning)
    gen_hit = float((predict_logits(model, gen)["relation"].argmax(1) == gen.predicate).mean())
    real_hit = float((predict_logits(model, real)["relation"].argmax(1) == real.predicate).mean())
    out["baseline_model"] = {"generated_rate": gen_hit, "real_rate": real_hit,
                             "ratio": gen_hit / real_hit if real_hit > 0 else float("nan")}
    return out


def _copies(gen: RelationSet, train: RelationSet, real: RelationSet) -> dict:
    """{'copy_rate', 'real_copy_rate', 'threshold'} of generated union features (see `copy_threshold`)."""
    threshold, real_rate = copy_threshold(train.union_feature, train.predicate, real.union_feature, real.predicate)
    return {"copy_rate": copy_rate(gen.union_feature, gen.predicate, train.union_feature, train.predicate, threshold),
            "real_copy_rate": real_rate, "threshold": threshold}


def _summary(rep: dict) -> dict:
    return {"rel": rep["rel"], "sbj_obj": rep["sbj_obj"], "combined": rep["combined"]}


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Wall time of one step of the phase into `seconds[name]`, printed when it ends (where the phase's time goes)."""
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 1)
    print(f"[diffaug] {name}: {seconds[name]:.1f} s", flush=True)


def run_diffaug(cfg: DiffAugConfig, progress: bool = True) -> dict:
    """Run the phase; returns {'results': variant -> LTVRR summary, 'fidelity', 'augmentation', 'table', ...}."""
    import ray

    from pipelines.classifier import ClassifierJobs, ClassifierSpec
    from pipelines.diffusion import SamplerPool
    from pipelines.ray_runtime import init_ray, joins_cluster

    torch.set_num_threads(1)
    store, train, test = load_splits(cfg.store)  # a bad store fails before anything is written
    unknown = sorted(set(cfg.synsets) - set(store.manifest.objects))
    if unknown:
        raise ConfigError("synsets", f"classes {unknown} are not in the store's vocabulary", "object class names")
    gen_variants = [v for v in cfg.variants if v.startswith(("diffaug", "wce_diffaug"))]
    resources = init_ray(cfg.ray_address or None, num_cpus=cfg.num_cpus)  # checked before anything is written
    check_actor_requests(cfg, resources, fixed=not joins_cluster(cfg.ray_address), sampling=bool(gen_variants))
    out = ensure_writable_dir(cfg.out)
    art = ensure_writable_dir(cfg.artifacts_dir) if cfg.artifacts_dir else out
    seconds: dict[str, float] = {}
    objects, predicates = store.manifest.objects, store.manifest.predicates
    obj_counts, rel_counts = _counts(train, len(objects), len(predicates))
    train_trip = np.unique(_triplets(train), axis=0)
    kv = load_word_vectors()
    ov, pv = phrase_vectors(kv, objects), phrase_vectors(kv, predicates)

    # every classifier trains in a Ray task (cpus_per_actor / gpus_per_actor each): the baselines side by side,
    # submitted first (they need neither the augmentation nor the conditions, which the driver computes
    # meanwhile: 55 s of one thread in make run), each variant's fine-tuning as soon as its data and starting
    # weights exist; scored here, in variant order
    jobs = ClassifierJobs(ClassifierSpec(train.union_feature.shape[1], ov, pv, cfg.embed_dim, cfg.hidden, cfg.seed),
                          obj_counts, rel_counts, cfg.cpus_per_actor, cfg.gpus_per_actor, progress)
    train_ref = ray.put(train)  # without hardness: only curriculum fine-tuning reads it
    base_ref = jobs.submit(train_ref, TrainConfig(**{**to_dict(cfg.train), "loss": "ce"}), name="baseline_ce")
    wce_ref = (jobs.submit(train_ref, TrainConfig(**{**to_dict(cfg.train), "loss": "wce"}), name="baseline_wce")
               if any(v == "baseline_wce" or v.startswith("wce_") for v in cfg.variants) else None)
    trained: dict[str, ray.ObjectRef] = {"baseline_ce": base_ref}
    if wce_ref is not None:
        trained["baseline_wce"] = wce_ref

    with _timed(seconds, "triplet augmentation and conditions"):
        aug = augmented_triplets(cfg, train_trip, obj_counts, rel_counts, objects,
                                 art / f"lch_cache-{config_hash(cfg.synsets)}.json")  # one per synset map
        aug_trip = np.stack([aug["subject"], aug["predicate"], aug["object"]], axis=1)
        augmentation = {"train_triplets": len(train_trip), "new_triplets": len(aug_trip),
                        "no_synset": classes_without_synset(objects, cfg.synsets),
                        "by_rule": {r: int((aug["rule"] == r).sum()) for r in np.unique(aug["rule"]).tolist()}}
        cond = _Conditions(cfg, objects, predicates, train_trip, aug_trip, art / "text_cache")
        train.hardness = cond.of(_triplets(train))[2]

    pools = class_feature_pools(train)
    plan = tail_plan(train_trip, aug_trip, rel_counts, pools, cfg.n_generated, cfg.seed)

    def finetune(variant: str, data: RelationSet, curriculum: bool = False, start: ray.ObjectRef | None = None
                 ) -> None:
        if cfg.finetune_real_fraction > 0:
            n_real = round(len(data) * cfg.finetune_real_fraction / (1 - cfg.finetune_real_fraction))
            pick = np.random.default_rng([cfg.seed, 41]).choice(len(train), n_real)
            data = RelationSet.concat([data, train.subset(pick)])
        ft = finetune_config(cfg.finetune_epochs, cfg.finetune_batch, cfg.finetune_lr, curriculum, seed=cfg.seed)
        trained[variant] = jobs.submit(data, ft, start=start if start is not None else base_ref, name=variant)

    if {"real_balanced_ft", "wce_real_balanced_ft"} & set(cfg.variants):  # built only when a variant uses it
        control = real_control(train, rel_counts, len(plan["sample_id"]), cfg.seed)
        if "real_balanced_ft" in cfg.variants:
            finetune("real_balanced_ft", control)
        if "wce_real_balanced_ft" in cfg.variants:
            finetune("wce_real_balanced_ft", control, start=wce_ref)
    with _timed(seconds, "baseline classifier (waited for)"):
        base = jobs.model(base_ref)
    torch.save(base.state_dict(), out / "baseline_ce.pt")

    fid: dict[str, dict] = {}
    generated: dict[str, RelationSet] = {}
    bundles: dict[str, str] = {}  # diffusion model -> its bundle file
    if gen_variants:
        with _timed(seconds, "fidelity probe"):
            probe = _probe(train, len(predicates), cfg.seed)
        hard_cfg = copy.deepcopy(cfg.diffusion)
        hard_cfg.use_hardness = True
        with _timed(seconds, "diffusion training"):
            bundles["hard"] = _train_diffusion(cfg, hard_cfg, train, cond, art, progress)
        if "diffaug_so_nohardness" in gen_variants:
            no_cfg = copy.deepcopy(hard_cfg)
            no_cfg.use_hardness = False
            with _timed(seconds, "diffusion training (no hardness)"):
                bundles["nohard"] = _train_diffusion(cfg, no_cfg, train, cond, art, progress)
        _, _, plan_hard = cond.of(np.stack([plan["subject"], plan["predicate"], plan["object"]], axis=1))
        runs = {"diffaug_random": ("hard", 1.0), "diffaug_so": ("hard", cfg.strength),
                "diffaug_so_nohardness": ("nohard", cfg.strength)}
        need = {("diffaug_so" if v in FROM_SO else v) for v in gen_variants}
        with SamplerPool(cfg.num_actors, cfg.cpus_per_actor, cfg.gpus_per_actor) as sampler:  # one pool for every sampling run
            for name in sorted(need):
                b, s = runs[name]
                with _timed(seconds, f"sampling {name}"):
                    union = _sample(cfg, bundles[b], plan, cond, pools, s,
                                    art / f"samples-{name}-{Path(bundles[b]).parent.name}", sampler)
                generated[name] = generated_set(plan, union, pools, cfg.seed, plan_hard)
                with _timed(seconds, f"fidelity {name}"):
                    fid[name] = _fidelity(generated[name], train, test, probe, base)
        for v in gen_variants:
            if v == "diffaug_so_half":
                idx = np.concatenate([np.flatnonzero(plan["band"] == b)[: (plan["band"] == b).sum() // 2]
                                      for b in np.unique(plan["band"])])
                finetune(v, generated["diffaug_so"].subset(idx))
            elif v == "diffaug_so_curriculum":
                finetune(v, generated["diffaug_so"], curriculum=True)
            elif v == "wce_diffaug_so":
                finetune(v, generated["diffaug_so"], start=wce_ref)
            else:
                finetune(v, generated[v])

    def scored(variant: str) -> dict:
        """The variant's LTVRR summary on the test split; its predictions saved for re-scoring."""
        model = base if variant == "baseline_ce" else jobs.model(trained[variant])
        return _summary(evaluate_classifier(model, test, obj_counts, rel_counts,
                                            ensure_writable_dir(out / "predictions") / f"{variant}.npz"))

    with _timed(seconds, "fine-tuning (waited for) and scoring"):
        ordered = {v: scored(v) for v in cfg.variants}
    table = results_table(ordered)
    summary = {"results": ordered, "fidelity": fid, "augmentation": augmentation, "table": table,
               "n_generated": len(plan["sample_id"]), "plan_bands": {b: int((plan["band"] == b).sum())
                                                                        for b in np.unique(plan["band"]).tolist()},
               "config": to_dict(cfg), "store_config_hash": store.manifest.meta.get("config_hash"),
               "seconds": seconds, "artifacts": {"dir": str(art), "bundles": bundles}}
    write_json(out / "results.json", summary)
    write_text(out / "results.txt", table + "\n")
    if cfg.plots:
        plot_bands(ordered, out / "bands.png")
        if bundles:
            plot_loss_curves(diffusion_losses(bundles), out / "diffusion_loss.png")
        if generated:
            g = generated["diffaug_so"] if "diffaug_so" in generated else next(iter(generated.values()))
            plot_projection(train.union_feature, train.predicate, g.union_feature, g.predicate, predicates,
                            out / "projection.png")
    _track(cfg, out, summary)
    return summary


def diffusion_losses(bundles: Mapping[str, str]) -> dict[str, list[float]]:
    """Per-step training loss of each diffusion model (its bundle's metrics.json), by model name."""
    return {name: json.loads((Path(b).parent / "metrics.json").read_text())["loss"] for name, b in bundles.items()}


def _track(cfg: DiffAugConfig, out: Path, summary: dict) -> None:
    """Log config, per-variant metrics, fidelity and artifacts to MLflow (buffered if tracking is down)."""
    from components.tracking import Tracker

    tracker = Tracker.for_run_dir(out, cfg.experiment)
    with tracker.run(f"diffaug-{Path(cfg.out).name}") as parent:
        tracker.log_config(parent, cfg)
        for name, rep in summary["results"].items():
            with tracker.run(name, parent_run_id=parent) as child:
                tracker.log_metrics(child, {f"{a}_{b}": v for a in ("rel", "sbj_obj") for b, v in rep[a].items()}
                                    | {"combined": rep["combined"]})
        for name, f in summary["fidelity"].items():
            tracker.log_metrics(parent, {f"fidelity_{name}_{k}_{m}": v for k, d in f.items() if isinstance(d, dict)
                                         for m, v in d.items()
                                         if m in ("generated_rate", "real_rate", "ratio", "copy_rate", "real_copy_rate")}
                                | {f"fidelity_{name}_spread": f["spread"]})
        tracker.log_metrics(parent, {"seconds_" + re.sub(r"[^0-9a-zA-Z]+", "_", k).strip("_"): v
                                     for k, v in summary["seconds"].items()})
        for name, losses in diffusion_losses(summary["artifacts"]["bundles"]).items():  # 20-step means
            for step, loss in zip(*window_means(losses, 20)):
                tracker.log_metrics(parent, {f"diffusion_loss_{name}": float(loss)}, step=int(step))
        for art in ("results.json", "results.txt", "bands.png", "projection.png", "diffusion_loss.png"):
            if (out / art).is_file():
                tracker.log_artifact(parent, out / art)
    tracker.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: errors print one line and exit 2."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="relation-sample feature store (e.g. from prepare_data.py)")
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--config", help="YAML with DiffAugConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. n_generated=2000 diffusion.steps=500")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(DiffAugConfig, args.config, [f"store={args.store}", f"out={args.out}", *args.overrides])
        summary = run_diffaug(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    print(json.dumps({"augmentation": summary["augmentation"], "fidelity": summary["fidelity"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
