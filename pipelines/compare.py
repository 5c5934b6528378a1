"""Compare MLflow runs or a sweep's trials: a table of the params that differ and the metrics (printed,
and written as CSV + markdown) and plots of a metric against each hyperparameter (PNG).

  python pipelines/compare.py --experiment hml --sweep <parent run id> --metric mR@50 [--param hml.lam]
  python pipelines/compare.py --runs ID1,ID2 --out runs/compare
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from components.atomic import atomic_path, ensure_writable_dir, write_text
from components.code_version import CODE_TAG
from components.errors import InputError
from components.tracking import mlflow_name, tracking_uri
from pipelines.cli import exit_code


def _experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise InputError(f"--experiment {name}", "no such experiment", f"one of {names}")
    return exp.experiment_id


def _get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise InputError(f"run {run_id}", "not found in the tracking store", "an existing MLflow run id") from e


def _latest_attempts(runs: list[Run]) -> list[Run]:
    """One run per Tune trial (its latest attempt); runs without a trial tag are kept as they are."""
    keep: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        keep[r.data.tags.get("ray.trial_id", r.info.run_id)] = r
    return list(keep.values())


def select_runs(client: MlflowClient, experiment: str | None, run_ids: list[str], sweep: str | None) -> list[Run]:
    """Runs named by id, the trials of a sweep (children of its parent run), or all runs of an experiment."""
    if run_ids:
        return [_get_run(client, r) for r in run_ids]
    if sweep:
        parent = _get_run(client, sweep)
        exp_ids = [_experiment_id(client, experiment)] if experiment else [parent.info.experiment_id]
        runs = client.search_runs(exp_ids, f"tags.mlflow.parentRunId = '{sweep}'", max_results=10000)
        if not runs:
            raise InputError(f"--sweep {sweep}", "this run has no child runs", "the parent run of a sweep")
        return _latest_attempts(runs)
    if experiment:
        runs = client.search_runs([_experiment_id(client, experiment)], max_results=10000)
        if not runs:
            raise InputError(f"--experiment {experiment}", "has no runs", "an experiment with logged runs")
        return runs
    raise InputError("arguments", "nothing to compare", "--runs, --sweep or --experiment")


def _value(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def runs_table(runs: list[Run], params: list[str], metric: str | None) -> tuple[pd.DataFrame, list[str]]:
    """DataFrame of run id/name/status, the code version when the runs' differ (tag `hmldiff.code`), the
    params that differ (plus `params`), and all metrics."""
    all_params = sorted({k for r in runs for k in r.data.params})
    missing = [p for p in params if p not in all_params]
    if missing:
        raise InputError(f"--param {','.join(missing)}", "not a param of the selected runs",
                         f"one of {all_params}")
    differ = [k for k in all_params if len({r.data.params.get(k) for r in runs}) > 1]
    shown = differ + [p for p in params if p not in differ]
    metrics = sorted({k for r in runs for k in r.data.metrics})
    if metric and metric not in metrics:
        raise InputError(f"--metric {metric}", "not logged by the selected runs", f"one of {metrics}")
    mixed_code = len({r.data.tags.get(CODE_TAG, "") for r in runs}) > 1
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status}
        if mixed_code:
            row["code"] = r.data.tags.get(CODE_TAG, "")
        row.update({p: _value(r.data.params.get(p, "")) for p in shown})
        row.update({m: r.data.metrics.get(m, math.nan) for m in metrics})
        rows.append(row)
    df = pd.DataFrame(rows)
    if metric:
        df = df.sort_values(metric, na_position="last", kind="stable")
    return df.reset_index(drop=True), shown


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub markdown table (floats with 4 significant digits)."""
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_metric(df: pd.DataFrame, metric: str, param: str, out: Path) -> Path:
    """Scatter of `metric` against hyperparameter `param` (log x for positive ranges > 100x)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = df[param]
    numeric = pd.api.types.is_numeric_dtype(x)
    if numeric:
        ax.scatter(x, df[metric])
        if (x > 0).all() and x.max() / x.min() > 100:
            ax.set_xscale("log")
    else:
        cats = sorted(set(map(str, x)))
        ax.scatter([cats.index(str(v)) for v in x], df[metric])
        ax.set_xticks(range(len(cats)), cats, rotation=30)
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {param} ({len(df)} runs)")
    fig.tight_layout()
    target = out / f"{metric}_vs_{param}.png".replace("/", "_")
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return target


def compare(args: argparse.Namespace) -> None:
    """Select the runs, print the table, write compare.csv / compare.md and the plots."""
    uri = args.tracking_uri or tracking_uri("runs")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise InputError(uri, "tracking database does not exist", "a run directory with mlflow.db")
    client = MlflowClient(uri)
    runs = select_runs(client, args.experiment, [r for r in (args.runs or "").split(",") if r], args.sweep)
    # names as logged: MLflow names cannot hold '@' (mR@50 is stored as mR_at_50)
    metric = mlflow_name(args.metric) if args.metric else None
    params = [mlflow_name(p) for p in args.param]
    df, shown = runs_table(runs, params, metric)
    out = ensure_writable_dir(args.out)
    text = to_markdown(df)
    write_text(out / "compare.csv", df.to_csv(index=False))
    write_text(out / "compare.md", text)
    print(text, end="")
    plots = []
    if metric:
        numeric = [p for p in shown if pd.api.types.is_numeric_dtype(df[p])]
        plots = [plot_metric(df, metric, p, out) for p in (params or numeric)]
    elif params:
        print("no plots: give --metric to plot it against each --param", file=sys.stderr)
    print(f"{len(df)} runs; wrote {out / 'compare.csv'}, {out / 'compare.md'}"
          + "".join(f", {p}" for p in plots))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the table, writes compare.csv / compare.md and plots."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", help="MLflow experiment name")
    ap.add_argument("--runs", help="comma-separated run ids")
    ap.add_argument("--sweep", help="parent run id of a sweep: compare its trials (latest attempt each)")
    ap.add_argument("--metric", help="metric to sort by and to plot")
    ap.add_argument("--param", action="append", default=[], help="hyperparameter to show and plot (repeatable)")
    ap.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    args = ap.parse_args(argv)
    return exit_code(lambda: compare(args))


if __name__ == "__main__":
    sys.exit(main())
