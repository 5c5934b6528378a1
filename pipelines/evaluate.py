"""Evaluate saved predictions and print a table (or JSON): SGG recall or LTVRR band accuracy, in percent.

  python pipelines/evaluate.py sgg runs/preds_sgg [--tree tree.json] [--ks 20 50 100] [--iou 0.5] [--json]
  python pipelines/evaluate.py sgg runs/preds_sgg --logit-adjust 0 0.25 0.5 1 --prior STORE
  python pipelines/evaluate.py ltvrr runs/preds_ltvrr.npz [--json]

SGG PATH is a directory written by components.evaluation.predictions.SGGPredictionWriter; LTVRR PATH an
.npz written by save_ltvrr_predictions. --tree takes a JSON object with a key "parent" mapping 1-based
predicate ids (strings) to their coarse parent id (the format of PredicateTree.save); it adds the
hierarchy-aware hR@K / hmR@K. --logit-adjust re-scores with predicate scores divided by prior ** tau
(prior = predicate frequencies of the train split of the feature store --prior), one row per tau: the
post-hoc re-balancing baseline. Bad input prints one error line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from components.errors import InputError
from components.evaluation.adjust import evaluate_adjusted, predicate_prior
from components.evaluation.ltvrr import BANDS, ltvrr_report
from components.evaluation.predictions import iter_sgg_predictions, load_ltvrr_predictions, read_sgg_manifest
from components.evaluation.sgg import evaluate_sgg
from pipelines.cli import exit_code


def load_tree(path: Path) -> dict[int, int]:
    """{predicate id: parent id} from a JSON file with a "parent" object."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise InputError(f"--tree {path}", f"cannot read: {e.strerror}", "a JSON file") from e
    except ValueError as e:
        raise InputError(f"--tree {path}", f"invalid JSON: {e}", "a JSON file") from e
    parent = data.get("parent") if isinstance(data, dict) else None
    if not isinstance(parent, dict):
        raise InputError(f"--tree {path}", 'has no "parent" object', '{"parent": {"<predicate id>": <parent id>}}')
    return parent


def _fmt(v: float) -> str:
    return "   n/a" if math.isnan(v) else f"{v:6.2f}"


def sgg_table(r: dict, ks: list[int]) -> str:
    """Markdown table: one row per K, one column per metric."""
    cols = [c for c in ("R", "mR", "ngR", "ngmR", "Mean", "hR", "hmR") if f"{c}@{ks[0]}" in r]
    lines = ["| K | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {k} | " + " | ".join(_fmt(r[f"{c}@{k}"]) for c in cols) + " |" for k in ks]
    lines.append(f"\n{r['num_images']} images evaluated ({r['no_pred']} without predicted pairs, scored 0); skipped "
                 f"{r['skipped_no_gt']} without GT relations. Values in percent.")
    return "\n".join(lines)


def adjusted_table(rows: list[tuple[float, dict]], ks: list[int]) -> str:
    """Markdown table: one row per tau, R/mR/Mean at each K."""
    cols = [f"{c}@{k}" for k in ks for c in ("R", "mR", "Mean")]
    lines = ["| tau | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {tau:g} | " + " | ".join(_fmt(r[c]) for c in cols) + " |" for tau, r in rows]
    lines.append("\nPredicate scores divided by (train frequency) ** tau; tau 0 = the predictions as saved. Percent.")
    return "\n".join(lines)


def _prior(store: Path, num_predicates: int):
    from components.data.store import FeatureStore

    fs = FeatureStore(store, kind="scene_graph")
    if len(fs.manifest.predicates) != num_predicates:
        raise InputError(f"--prior {store}", f"has {len(fs.manifest.predicates)} predicates",
                         f"the {num_predicates} of the predictions")
    return predicate_prior(fs.predicate_counts("train")[1:])


def ltvrr_table(r: dict) -> str:
    """Markdown table: rows S/O, subject, object, relation; columns the bands and all."""
    cols = list(BANDS) + ["all"]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for key, name in (("sbj_obj", "S/O"), ("sbj", "subject"), ("obj", "object"), ("rel", "relation")):
        lines.append(f"| {name} | " + " | ".join(_fmt(r[key][c]) for c in cols) + " |")
    lines.append(f"\ncombined (S/O all + relation all) / 2 = {r['combined']:.2f}  "
                 f"({r['num_examples']} test triplets; mean per-class top-1 accuracy, percent)")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def run(argv: list[str] | None = None) -> str:
    """Parse arguments, evaluate, and return the text to print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=("sgg", "ltvrr"))
    ap.add_argument("path", type=Path)
    ap.add_argument("--tree", type=Path, default=None, help='JSON with "parent": {predicate id: parent id} (sgg)')
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 50, 100], help="recall cut-offs (sgg)")
    ap.add_argument("--iou", type=float, default=0.5, help="IoU threshold (sgg)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--logit-adjust", type=float, nargs="+", default=None, metavar="TAU",
                    help="re-score with predicate scores / prior ** TAU, one row per TAU (sgg; needs --prior)")
    ap.add_argument("--prior", type=Path, default=None, help="feature store whose train split gives the prior")
    args = ap.parse_args(argv)
    if (args.logit_adjust is None) != (args.prior is None):
        raise InputError("--logit-adjust/--prior", "only one of them given", "both, or neither")
    if args.task == "sgg":
        manifest = read_sgg_manifest(args.path)
        if manifest["num_predicates"] is None:
            raise InputError(str(args.path), "holds no predicted pairs, so the number of predicates is unknown",
                             "at least one image with rel_scores")
        tree = load_tree(args.tree) if args.tree else None
        images = tqdm(iter_sgg_predictions(args.path), total=manifest["num_images"], desc="evaluate", unit="img",
                      disable=None)
        if args.logit_adjust is not None:
            if args.tree:
                raise InputError("--tree", "does not combine with --logit-adjust", "one of them")
            prior = _prior(args.prior, manifest["num_predicates"])
            rows = list(evaluate_adjusted(images, prior, args.logit_adjust, args.ks, args.iou))
            return (json.dumps(_json_safe({str(t): r for t, r in rows}), indent=2) if args.json
                    else adjusted_table(rows, args.ks))
        res = evaluate_sgg(images, manifest["num_predicates"], ks=args.ks, iou_threshold=args.iou, tree=tree)
        return json.dumps(_json_safe(res), indent=2) if args.json else sgg_table(res, args.ks)
    for flag, given in (("--tree", args.tree), ("--logit-adjust", args.logit_adjust)):
        if given is not None:
            raise InputError(flag, "only applies to sgg", f"no {flag} with ltvrr")
    res = ltvrr_report(**load_ltvrr_predictions(args.path))
    return json.dumps(_json_safe(res), indent=2) if args.json else ltvrr_table(res)


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: print(run(argv)))


if __name__ == "__main__":
    sys.exit(main())
