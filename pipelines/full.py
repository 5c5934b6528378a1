"""The whole project in one job: planted (or given) data -> feature stores -> HML and its baselines ->
SGG evaluation; -> DiffAugment (augmentation, text + hardness, diffusion, distributed sampling,
fine-tuning) -> LTVRR evaluation; then one summary table, `runs/<run_name>/summary.json`, and MLflow.

    python pipelines/full.py [--preset tiny|default|long-diffusion|paper] [--config cfg.yaml] [key=value ...]
    ray job submit --working-dir . -- python pipelines/full.py --preset tiny run_dir=$PWD/runs

The preset is `--preset`, or `preset=` in the YAML or the overrides (the two may not disagree). Under
`ray job submit --working-dir` the driver runs in Ray's temporary copy of the directory: give an absolute
`run_dir`, or the outputs stay in that copy (the path is printed at start: `[full] outputs: ...`).

Every phase is a content-addressed stage (components/stages.py): a rerun after an interruption resumes
at the first stage not completed, a changed config recomputes only what depends on it, and changed source
code (components/code_version.py) recomputes every phase.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also under `ray job submit`): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.atomic import ensure_writable_dir, write_json
from components.config import apply_overrides, config_hash, load_config, load_yaml, merge, to_dict
from components.data.planted_detections import PlantedDetectionConfig
from components.data.planted_sgg import PlantedSGGConfig
from components.data.planted_vrr import PlantedVRRConfig
from components.errors import ConfigError
from components.stages import StageCache, StageResult
from components.tracking.uri import redact_uri
from pipelines.cli import exit_code
from pipelines.diffaug import DiffAugConfig, run_diffaug
from pipelines.hml import HMLConfig
from pipelines.hml import run as run_hml
from pipelines.prepare_data import PrepareDataConfig, write_store

PRESETS: dict[str, dict[str, Any]] = {
    # every phase at toy size, ~3 minutes on 2 cores (tests, first tries)
    "tiny": {
        "sgg": {"scale": 0.08}, "vrr": {"scale": 0.1},
        "hml": {"steps_per_stage": 25, "checkpoint_every": 25, "eval_images": 60, "hidden_dim": 32,
                "progress": False},
        "diffaug": {"variants": ["baseline_ce", "real_balanced_ft", "diffaug_so"], "hardness_k": 16,
                    "embed_dim": 64, "hidden": 128, "n_generated": 600, "finetune_epochs": 2,
                    "train": {"epochs": 4}, "plots": True,
                    "diffusion": {"steps": 150, "num_inference_steps": 10, "hidden": 64, "layers": 2,
                                  "batch_size": 128}},
    },
    # the embedded default benchmark: 8.3 min on a 2-core AMX (bf16) CPU (HML 112 s, DiffAugment 365 s);
    # far longer without bf16 (README, "What make run does")
    "default": {},
    # the default benchmark with 4x the diffusion training samples (4,000 steps x 512 at lr 1e-3: tail
    # fidelity 39-44% against the default's 22-26%; ~10 min of training on a 2-core AMX CPU; docs/experiments.md)
    "long-diffusion": {
        "diffaug": {"diffusion": {"steps": 4000, "batch_size": 512, "lr": 1e-3}},
    },
    # the papers' sizes (4096-d features, 96K samples, K = 1200), meant for GPUs
    "paper": {
        "sgg": {"feature_dim": 4096, "scale": 10.0}, "vrr": {"feature_dim": 4096, "scale": 10.0},
        "hml": {"steps_per_stage": 20000, "batch_size": 12, "predictor": "motifs", "hidden_dim": 512,
                "use_gpu": True, "num_workers": 4, "cpus_per_worker": 4.0, "predict_actors": 4},
        "diffaug": {"hardness_k": 1200, "n_generated": 96000, "text_encoder": "openclip",
                    "text_tokens": True, "num_actors": 8, "cpus_per_actor": 4.0, "gpus_per_actor": 0.5,
                    "sample_batch_size": 1024,  # cached keys/values: 1024 x 2 rows x 81 tokens x 2048 x 8 layers, 5.4 GB bf16
                    "train": {"epochs": 30}, "finetune_real_fraction": 0.0,
                    "diffusion": {"steps": 100000, "batch_size": 256, "num_inference_steps": 50,
                                  "hidden": 1024, "layers": 8, "heads": 8}},
    },
}
PHASES = ("hml", "diffaug")
PLACEHOLDER = "<set by full.py>"


@dataclass
class FullConfig:
    """One config for the whole pipeline (logged whole to MLflow)."""

    run_name: str = "default"
    run_dir: str = "runs"
    preset: str = field(default="default", metadata={"choices": tuple(PRESETS)})
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    ray_address: str | None = None
    num_cpus: int | None = None
    experiment: str = "hmldiff"
    sgg_store: str | None = None  # an existing scene-graph feature store instead of sgg-planted
    vrr_store: str | None = None  # an existing relation-sample feature store instead of vrr-planted
    sgg: PlantedSGGConfig = field(default_factory=PlantedSGGConfig)
    det: PlantedDetectionConfig = field(default_factory=PlantedDetectionConfig)  # sgg-planted-det (hml.mode=sgdet)
    vrr: PlantedVRRConfig = field(default_factory=PlantedVRRConfig)
    hml: HMLConfig = field(default_factory=lambda: HMLConfig(store=PLACEHOLDER))
    diffaug: DiffAugConfig = field(default_factory=lambda: DiffAugConfig(store=PLACEHOLDER, out=PLACEHOLDER))

    def validate(self) -> None:
        bad = [p for p in self.phases if p not in PHASES]
        if bad:
            raise ConfigError("phases", f"unknown phases {bad}",
                              f"a subset of {list(PHASES)} (each prepares its data store, data-sgg / data-vrr, itself)")


def chosen_preset(flag: str | None, user: dict, overrides: list[str]) -> str:
    """The preset to start from: `preset=` of the overrides or the YAML mapping `user`, else `--preset` (`flag`),
    else default; an explicit `--preset` that disagrees is refused rather than silently ignored."""
    given = apply_overrides(copy.deepcopy(user), list(overrides)).get("preset")
    if given is None:
        return flag or "default"
    if not isinstance(given, str) or given not in PRESETS:
        raise ConfigError("preset", f"value {given!r} is not allowed", f"one of {list(PRESETS)}")
    if flag is not None and flag != given:
        raise ConfigError("preset", f"--preset {flag} conflicts with preset={given} of the config or overrides",
                          "one preset, or the same one in both places")
    return given


def load(preset: str | None, path: str | None, overrides: list[str]) -> FullConfig:
    """Defaults <- preset <- YAML <- overrides; sub-pipeline stores are filled in by the stages."""
    user = load_yaml(path) if path else {}  # read once: it names the preset and overrides it
    preset = chosen_preset(preset, user, overrides)
    base = json.loads(json.dumps(PRESETS[preset]))
    base.setdefault("hml", {}).setdefault("store", PLACEHOLDER)
    base.setdefault("diffaug", {}).setdefault("store", PLACEHOLDER)
    base["diffaug"].setdefault("out", PLACEHOLDER)
    base["preset"] = preset
    return load_config(FullConfig, None, overrides, base=merge(base, user))


def prepare_stage(cache: StageCache, dataset: str, planted: Any, given: str | None,
                  det: PlantedDetectionConfig | None = None) -> StageResult:
    """The feature store of one method: a given path (validated; keyed by its shards' checksums) or the
    planted benchmark (with `det`, sgg-planted-det: its simulated detections too), written once."""
    key = "vrr" if dataset == "vrr-planted" else "sgg"
    if given:
        from components.data.store import FeatureStore

        t0 = time.perf_counter()
        store = FeatureStore(given)
        store.validate()
        digest = config_hash(store.manifest.splits)
        return StageResult(f"data-{key}", digest, Path(given), {"store": str(Path(given).resolve()), "given": True},
                           False, time.perf_counter() - t0)

    def fn(stage_dir: Path) -> dict:
        extra = {"det": det} if det is not None else {}
        cfg = PrepareDataConfig(dataset=dataset, out=str(stage_dir / "store"), **{key: planted}, **extra)
        return {"store": str(write_store(cfg).resolve())}

    return cache.run(f"data-{key}", {**to_dict(planted), **({"detections": to_dict(det)} if det else {})}, fn)


# Fields that say where or how to run, not what to compute: left out of a phase's content key.
NOT_CONTENT = ("store", "output_dir", "out", "artifacts_dir", "ray_address", "experiment", "progress", "track", "plots",
               "num_cpus", "concurrent_methods")


# Fields added after phases were first cached, with the value every earlier run had: left out of the key at
# that value, so an upgrade keeps the cache (HMLConfig.mode arrived with SGCls).
ADDED_AT_DEFAULT = {"mode": "predcls"}


def phase_key(cfg: Any) -> dict:
    """The content of a phase's config: what changes its results."""
    return {k: v for k, v in to_dict(cfg).items()
            if k not in NOT_CONTENT and not (k in ADDED_AT_DEFAULT and v == ADDED_AT_DEFAULT[k])}


def timed(timings: dict[str, float], stage: StageResult) -> StageResult:
    """Record a stage's wall time (0 when cached) and say what happened."""
    timings[stage.name] = 0.0 if stage.cached else stage.seconds
    state = "cached" if stage.cached else \
        f"{'given store validated' if stage.result.get('given') else 'done'} in {stage.seconds:.1f} s"
    print(f"[full] {stage.name}: {state} ({stage.path})", flush=True)
    return stage


def run(cfg: FullConfig) -> dict:
    """Run the selected phases; returns the summary (also written to runs/<run_name>/summary.json). The
    MLflow parent run ends FINISHED, FAILED when a phase raises, or KILLED on Ctrl-C (never left RUNNING)."""
    from components.tracking import Tracker

    run_root = ensure_writable_dir(Path(cfg.run_dir) / cfg.run_name).resolve()
    print(f"[full] outputs: {run_root}", flush=True)
    # One MLflow backend for every phase: runs/mlflow.db unless MLFLOW_TRACKING_URI says otherwise.
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(cfg.run_dir).resolve() / 'mlflow.db'}")
    tracker = Tracker.for_run_dir(run_root, cfg.experiment)
    try:
        with tracker.run(f"full-{cfg.run_name}", tags={"preset": cfg.preset}) as parent:
            summary = run_phases(cfg, tracker, parent, run_root)
    finally:
        tracker.close()
    print_summary(summary, run_root)
    return summary


def run_phases(cfg: FullConfig, tracker: Any, parent: str, run_root: Path) -> dict:
    """The phases of one run under the MLflow run `parent`; writes and returns the summary."""
    from pipelines.ray_runtime import init_ray

    tracker.log_config(parent, cfg)
    cache = StageCache(Path(cfg.run_dir) / ".cache")
    resources = init_ray(cfg.ray_address, cfg.num_cpus)
    print(f"[full] Ray resources: {resources}", flush=True)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"run_name": cfg.run_name, "preset": cfg.preset, "sgg": {}, "ltvrr": {}, "outputs": {}}

    if "hml" in cfg.phases:
        sgdet = cfg.hml.mode == "sgdet"  # SGDet trains on sgg-planted-det: sgg-planted plus detections
        data = timed(timings, prepare_stage(cache, "sgg-planted-det" if sgdet else "sgg-planted", cfg.sgg,
                                            cfg.sgg_store, cfg.det if sgdet else None))

        def hml_phase(stage_dir: Path) -> dict:
            hml_cfg = dataclasses.replace(cfg.hml, store=data.result["store"], output_dir=str(stage_dir),
                                          ray_address=cfg.ray_address, experiment=cfg.experiment)
            res = run_hml(hml_cfg)
            return {m: {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))}
                    for m, r in res["methods"].items()}

        hml = timed(timings, cache.run("hml", phase_key(cfg.hml), hml_phase, [data]))
        summary["sgg"] = hml.result
        summary["outputs"]["hml"] = str(hml.path)
        for png in sgg_plots(hml.path, run_root):
            tracker.log_artifact(parent, png, "plots")

    if "diffaug" in cfg.phases:
        data = timed(timings, prepare_stage(cache, "vrr-planted", cfg.vrr, cfg.vrr_store))

        def diffaug_phase(stage_dir: Path) -> dict:
            # artifacts (diffusion models, samples, text embeddings, WordNet similarities) are content-addressed:
            # one directory for every DiffAugment phase, so a changed fine-tuning setting trains no diffusion again
            shared = cfg.diffaug.artifacts_dir or str(cache.root.resolve() / "diffaug-artifacts")
            da_cfg = dataclasses.replace(cfg.diffaug, store=data.result["store"], out=str(stage_dir),
                                         artifacts_dir=shared, experiment=cfg.experiment,
                                         ray_address=cfg.ray_address or "")
            res = run_diffaug(da_cfg)
            return {"results": res["results"], "fidelity": res["fidelity"], "augmentation": res["augmentation"]}

        da = timed(timings, cache.run("diffaug", phase_key(cfg.diffaug), diffaug_phase, [data]))
        summary["ltvrr"] = da.result["results"]
        summary["ltvrr_fidelity"] = da.result["fidelity"]
        summary["augmentation"] = da.result["augmentation"]
        summary["outputs"]["diffaug"] = str(da.path)
        for png in ltvrr_plots(summary["ltvrr"], run_root):
            tracker.log_artifact(parent, png, "plots")

    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    log_summary(tracker, parent, summary)
    summary["tracking"] = tracker.status().summary()
    phases = replay_phase_tracking(summary["outputs"], cfg.experiment)
    if phases:
        summary["tracking_phases"] = phases
    write_json(run_root / "summary.json", summary)
    tracker.log_artifact(parent, run_root / "summary.json")
    return summary


def replay_phase_tracking(outputs: dict[str, str], experiment: str) -> dict[str, str]:
    """Each phase logs to MLflow through its own tracker, which buffers in its stage directory while the
    backend is away; a cached phase never runs again to replay that buffer, so replay it here (on every run)
    and say per phase what was delivered or is still waiting."""
    from components.tracking import Tracker

    out = {}
    for phase, stage_dir in outputs.items():
        if (Path(stage_dir) / "mlflow_fallback.jsonl").is_file():
            out[phase] = Tracker.for_run_dir(stage_dir, experiment, retry_seconds=0.0).close().summary()
    return out


def sgg_plots(hml_dir: Path, out: Path) -> list[Path]:
    """Per-predicate R@100 by training frequency: HML against each baseline (PNG per pair). Training counts
    come from the phase's tree.json (the counts the tree was built from), so the store is not read again."""
    from components.evaluation.plots import plot_per_predicate_recall

    metrics = {p.parent.name: json.loads(p.read_text()) for p in sorted(hml_dir.glob("*/metrics.json"))}
    if "hml" not in metrics:
        return []
    tree = json.loads((hml_dir / "tree.json").read_text())
    return [plot_per_predicate_recall(metrics["hml"], m, tree["counts"], out / f"per_predicate_R100_hml_vs_{b}.png",
                                      ("HML", b.upper()), tree["predicates"]) for b, m in metrics.items() if b != "hml"]


def ltvrr_plots(results: dict, out: Path) -> list[Path]:
    """Per-band accuracy: every DiffAugment variant and the real-data control against the CE baseline."""
    from components.evaluation.plots import plot_band_accuracy

    if "baseline_ce" not in results:
        return []
    return [plot_band_accuracy(results[v], results["baseline_ce"], out / f"bands_{v}_vs_ce.png", (v, "baseline_ce"))
            for v in results if v != "baseline_ce"]


def log_summary(tracker: Any, run_id: str, summary: dict) -> None:
    """Every number of the summary table as an MLflow metric of the parent run."""
    metrics: dict[str, float] = {f"time_s.{k}": v for k, v in summary["timings_s"].items()}
    for method, m in summary["sgg"].items():
        metrics.update({f"sgg.{method}.{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    for method, m in summary["ltvrr"].items():
        for part in ("sbj_obj", "rel"):
            metrics.update({f"ltvrr.{method}.{part}.{b}": v for b, v in m[part].items()})
        metrics[f"ltvrr.{method}.combined"] = m["combined"]
    tracker.log_metrics(run_id, {k.replace("@", "_at_"): v for k, v in metrics.items()})


def print_summary(summary: dict, run_root: Path) -> None:
    """The final table: ours vs baselines, both papers' metrics, per-phase wall time."""
    if summary["sgg"]:
        print("\nSGG (PredCls)      " + "".join(f"{k:>9}" for k in ("R@20", "R@50", "R@100", "mR@20", "mR@50",
                                                                    "mR@100", "Mean@100")))
        for method, m in summary["sgg"].items():
            print(f"{method:<18} " + "".join(f"{m.get(k, float('nan')):9.2f}" for k in
                                             ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "Mean@100")))
    if summary["ltvrr"]:
        print("\nLTVRR per-class accuracy   S/O many  med  few  all |  R many  med  few  all | combined")
        for method, m in summary["ltvrr"].items():
            so, r = m["sbj_obj"], m["rel"]
            print(f"{method:<26} " + " ".join(f"{so[b]:5.1f}" for b in ("many", "medium", "few", "all")) + " | "
                  + " ".join(f"{r[b]:5.1f}" for b in ("many", "medium", "few", "all")) + f" | {m['combined']:6.2f}")
    print("\nwall time per phase (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    uri = redact_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    ui = (f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1" if uri.startswith("sqlite:") else f"open {uri}")
    print(f"summary: {run_root / 'summary.json'}; MLflow: {uri} (browse: {ui})", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; a bad input prints one clear line and exits 2."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=tuple(PRESETS), default=None,
                    help="default: preset= of --config or the overrides, else 'default'")
    ap.add_argument("--config", help="YAML with FullConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. hml.lam=0.25 run_name=ablation")
    args = ap.parse_args(argv)
    return exit_code(lambda: run(load(args.preset, args.config, args.overrides)))


if __name__ == "__main__":
    sys.exit(main())
