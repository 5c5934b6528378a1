"""HML hyperparameter sweep: lambda (MR weight), tree threshold T_SS and the stage count by default
(`--search` adds stage1_share, cr_weight, cr_span, stage_init), each trial one HML run (`pipelines.hml.run`,
its stages Ray Train runs launched from the trial) scored on mR@K.

    python tuning/hml_sweep.py --store runs/<...>/sgg-store [--num-samples 8] [--name hml-sweep]
                               [--search lam,threshold,stages,stage_init] [--resume [--allow-code-change]]
                               [key=value HML overrides, e.g. steps_per_stage=100]

Trial outputs are content-addressed (`<run_dir>/sweeps/<name>-trials/<hash of the trial's HML config>`),
so a restarted trial reuses its complete stages and resumes an interrupted one from its checkpoint.
Each trial reports once, at the end, so ASHA stops nothing early. That is deliberate: an intermediate
stage's model knows only the predicates of its stages, so its R/mR@K says little about the final model's,
and trials with different stage counts would be compared at different points of the same budget.
Trials log only through the sweep (HML's own MLflow logging is off).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import apply_overrides, config_hash, from_dict, to_dict
from components.errors import InputError
from components.tracking import Tracker
from components.tracking.uri import redact_uri
from pipelines.hml import HMLConfig

DEFAULT_SWEPT = ("lam", "threshold", "stages")


def _domains() -> dict[str, Any]:
    """Every HML field a sweep can search, with its Tune domain (lambda and CR weight on a log scale,
    T_SS over the paper's 0.65-0.75 and a margin)."""
    from ray import tune

    return {"lam": tune.loguniform(0.05, 2.0), "threshold": tune.uniform(0.6, 0.8), "stages": tune.choice([2, 3]),
            "stage1_share": tune.uniform(0.05, 0.5), "cr_weight": tune.loguniform(1.0, 100.0),
            "cr_span": tune.choice(["stage", "old"]), "stage_init": tune.choice(["fresh", "previous"])}


SEARCHABLE = ("lam", "threshold", "stages", "stage1_share", "cr_weight", "cr_span", "stage_init")


def search_space(names: Sequence[str] = DEFAULT_SWEPT) -> dict:
    """Tune search space over the named HML fields (default: lambda, T_SS and the stage count)."""
    unknown = [n for n in names if n not in SEARCHABLE]
    if unknown or not names:
        raise InputError("--search", f"unknown or empty {unknown or list(names)}", f"names from {list(SEARCHABLE)}")
    domains = _domains()
    return {n: domains[n] for n in names}


def trial_config(base: dict, params: dict, trials_dir: str | Path) -> HMLConfig:
    """The HML config of one trial: `base` with the swept values, HML method only, no own tracking,
    output under `trials_dir/<content hash>`."""
    data = {**base, **{k: params[k] for k in SEARCHABLE if k in params}, "methods": ["hml"], "track": False,
            "progress": False}
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


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues the sweep `argv` started: the same arguments with --resume."""
    args = list(argv) if "--resume" in argv else [*argv, "--resume"]
    return f"python tuning/hml_sweep.py {shlex.join(args)}"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run (or resume) the HML sweep and print the best trial. Exits 0 when every trial finished,
    1 when some errored, 2 on bad input, 130 when interrupted (Ctrl-C / SIGUSR1) with trials unfinished."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="scene-graph feature store to train and evaluate on")
    ap.add_argument("--name", default="hml-sweep", help="sweep name (Tune experiment and MLflow parent run)")
    ap.add_argument("--run-dir", default="runs", help="sweeps/, trial outputs and mlflow.db go here")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--cpus-per-trial", type=float, default=0.25, help="the trial driver's share (Train "
                    "workers ask for their own cpus_per_worker; leave room for Ray Data's reads); --resume keeps "
                    "the share the sweep was started with")
    ap.add_argument("--metric", default="Mean@100",
                    help="the evaluation metric maximised (default Mean@100, mean of R@100 and mR@100: mR@K alone "
                         "rewards a trial that gives up the head classes)")
    ap.add_argument("--search", default=",".join(DEFAULT_SWEPT),
                    help=f"comma-separated HML fields to search, from {','.join(SEARCHABLE)}")
    ap.add_argument("--experiment", default="hml-sweep")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    ap.add_argument("--allow-code-change", action="store_true",
                    help="--resume a sweep started by other source code (its finished trials are kept as they are)")
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
        names = [n.strip() for n in args.search.split(",") if n.strip()]
        space_fields = search_space(names)
        if args.resume:
            res = resume_sweep(hml_trial, storage, args.name, tracker=tracker,
                               resources_per_trial={"cpu": args.cpus_per_trial},
                               allow_code_change=args.allow_code_change)
        else:
            space: dict[str, Any] = {**space_fields, "base": base,
                                     "trials_dir": str(storage / f"{args.name}-trials")}
            res = run_sweep(hml_trial, space, metric=args.metric, mode="max", num_samples=args.num_samples,
                            storage_path=storage, name=args.name, max_concurrent=args.max_concurrent,
                            resources_per_trial={"cpu": args.cpus_per_trial}, tracker=tracker, max_t=1)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = {k: v for k, v in res.best_config.items() if k in SEARCHABLE} if res.best_config else None
    print(f"{len(res.trials)} trials ({res.num_errors} errors, {res.num_unfinished} unfinished); "
          f"best {args.metric} = {(res.best_metrics or {}).get(args.metric)} with {best}")
    if res.tracking:
        print(res.tracking.summary())
    print(f"compare: python pipelines/compare.py --tracking-uri {redact_uri(tracker.uri)} --sweep {res.parent_run_id} "
          f"--metric {args.metric} " + " ".join(f"--param {n}" for n in names))
    if res.num_unfinished:
        print(f"sweep interrupted, {res.num_unfinished} trials unfinished; continue it with: "
              f"{resume_command(argv)}", file=sys.stderr)
        return 130
    return 0 if res.num_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
