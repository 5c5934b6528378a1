"""HML hyperparameter sweep: lambda (MR weight), tree threshold T_SS and the stage count, each trial one
HML run (`pipelines.hml.run`, its stages Ray Train runs launched from the trial) scored on mR@K.

    python tuning/hml_sweep.py --store runs/<...>/sgg-store [--num-samples 8] [--name hml-sweep]
                               [--resume] [key=value HML overrides, e.g. steps_per_stage=100]

Trial outputs are content-addressed (`<run_dir>/sweeps/<name>-trials/<hash of the trial's HML config>`),
so a restarted trial reuses its complete stages and resumes an interrupted one from its checkpoint.
Each trial reports once, at the end: ASHA then has nothing to stop early (a per-stage report would
need a hook in pipelines/hml.py). Trials log only through the sweep (HML's own MLflow logging is off).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import apply_overrides, config_hash, from_dict, to_dict
from components.errors import InputError
from components.tracking import Tracker
from pipelines.hml import HMLConfig

SWEPT = ("lam", "threshold", "stages")


def search_space(lam: tuple[float, float] = (0.05, 2.0), threshold: tuple[float, float] = (0.6, 0.8),
                 stages: Sequence[int] = (2, 3)) -> dict:
    """Tune search space over HML's lambda (log scale), T_SS (paper: 0.65-0.75) and stage count."""
    from ray import tune

    return {"lam": tune.loguniform(*lam), "threshold": tune.uniform(*threshold), "stages": tune.choice(list(stages))}


def trial_config(base: dict, params: dict, trials_dir: str | Path) -> HMLConfig:
    """The HML config of one trial: `base` with the swept values, HML method only, no own tracking,
    output under `trials_dir/<content hash>`."""
    data = {**base, **{k: params[k] for k in SWEPT}, "methods": ["hml"], "track": False, "progress": False}
    data.pop("output_dir", None)
    data["output_dir"] = str(Path(trials_dir) / config_hash(data))
    return from_dict(HMLConfig, data)


def hml_trial(config: dict) -> None:
    """Tune trainable: one HML run; reports the HML method's metrics (R@K, mR@K, Mean@K...)."""
    from ray import tune

    from pipelines.hml import run as run_hml

    cfg = trial_config(config["base"], config, config["trials_dir"])
    results = run_hml(cfg)
    metrics = {k: v for k, v in results["methods"]["hml"]["metrics"].items() if isinstance(v, (int, float))}
    tune.report(metrics)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run (or resume) the HML sweep and print the best trial."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="scene-graph feature store to train and evaluate on")
    ap.add_argument("--name", default="hml-sweep", help="sweep name (Tune experiment and MLflow parent run)")
    ap.add_argument("--run-dir", default="runs", help="sweeps/, trial outputs and mlflow.db go here")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--cpus-per-trial", type=float, default=0.25, help="the trial driver's share (Train "
                    "workers ask for their own cpus_per_worker; leave room for Ray Data's reads)")
    ap.add_argument("--metric", default="mR@50")
    ap.add_argument("--experiment", default="hml-sweep")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    ap.add_argument("overrides", nargs="*", help="HML config overrides, e.g. steps_per_stage=100")
    args = ap.parse_args(argv)
    from tuning.sweep import resume_sweep, run_sweep

    try:
        if not Path(args.store).is_dir():
            raise InputError(args.store, "feature store directory not found", "a scene-graph feature store")
        base = to_dict(from_dict(HMLConfig, apply_overrides({"store": str(Path(args.store).resolve()),
                                                             "cpus_per_worker": 0.25}, args.overrides)))
        run_dir = Path(args.run_dir).resolve()
        tracker = Tracker.for_run_dir(run_dir, args.experiment)
        storage = run_dir / "sweeps"
        if args.resume:
            res = resume_sweep(hml_trial, storage, args.name, tracker=tracker)
        else:
            space: dict[str, Any] = {**search_space(), "base": base,
                                     "trials_dir": str(storage / f"{args.name}-trials")}
            res = run_sweep(hml_trial, space, metric=args.metric, mode="max", num_samples=args.num_samples,
                            storage_path=storage, name=args.name, max_concurrent=args.max_concurrent,
                            resources_per_trial={"cpu": args.cpus_per_trial}, tracker=tracker, max_t=1)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = {k: res.best_config[k] for k in SWEPT} if res.best_config else None
    print(f"{len(res.trials)} trials ({res.num_errors} errors); best {args.metric} = "
          f"{(res.best_metrics or {}).get(args.metric)} with {best}")
    if res.tracking:
        print(res.tracking.summary())
    print(f"compare: python pipelines/compare.py --tracking-uri {tracker.uri} --sweep {res.parent_run_id} "
          f"--metric {args.metric} --param lam --param threshold --param stages")
    return 0 if res.num_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
