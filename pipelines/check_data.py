"""Check a dataset before using it: a VG-150 directory, a GQA-LT directory or a feature store.

    python pipelines/check_data.py PATH [--json] [--plot longtail.png] [--num-val 5000]

Detects what PATH is, reads and validates all of it (the same readers the pipelines use), then prints
images, objects and relations per split and the per-class training counts (or `--json`:
{"kind", "path", "splits": {split: {"images", "objects", "relations"}}, "predicate_counts": {name:
count}, "object_counts": {...}, "counts_from"}). `--plot` saves the predicate long tail as a PNG.
Any problem prints one line `error: ...` and exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.atomic import atomic_path
from components.data import gqa_lt, vg150
from components.data.schema import SCENE_GRAPH
from components.data.store import MANIFEST, FeatureStore, relation_arrays, scene_graphs
from components.errors import DataError, InputError


def _named(names: list[str], counts: np.ndarray) -> dict[str, int]:
    """{name: count} in vocabulary order."""
    return {n: int(c) for n, c in zip(names, counts)}


def check_vg150(root: Path, num_val: int) -> dict:
    """Summary of a VG-150 directory (benchmark filtering); counts from the train split."""
    out: dict = {"kind": "vg150", "splits": {}, "counts_from": "train split"}
    for split in vg150.SPLITS:
        graphs, objects, predicates = vg150.read_vg150(root, split, num_val=num_val)  # type: ignore[arg-type]
        out["splits"][split] = {"images": len(graphs), "objects": int(sum(len(g["labels"]) for g in graphs)),
                                "relations": int(sum(len(g["rels"]) for g in graphs)),
                                "self_relations_dropped": int(sum(g["self_rels_dropped"] for g in graphs))}
        if split == "train":
            labels = np.concatenate([g["labels"] for g in graphs] or [np.zeros(0, int)])
            preds = np.concatenate([g["rels"][:, 2] for g in graphs] or [np.zeros(0, int)])
            out["object_counts"] = _named(objects, np.bincount(labels - 1, minlength=len(objects)))
            out["predicate_counts"] = _named(predicates, np.bincount(preds - 1, minlength=len(predicates)))
    return out


def _relation_split_summary(image_ids: list[str], sub_boxes: np.ndarray, obj_boxes: np.ndarray) -> dict:
    """Images, distinct (image, box) objects and relations of one relation-sample split."""
    boxes = {(i, tuple(np.round(b, 2))) for i, b in zip(image_ids * 2, np.concatenate([sub_boxes, obj_boxes]))}
    return {"images": len(set(image_ids)), "objects": len(boxes), "relations": len(image_ids)}


def check_gqa_lt(root: Path) -> dict:
    """Summary of a GQA-LT directory; counts from its `*_freqs.json` files or the train split."""
    vocab = gqa_lt.load_vocab(root)
    out: dict = {"kind": "gqa_lt", "splits": {}, "counts_from": vocab.counts_source,
                 "object_counts": _named(vocab.objects, vocab.object_counts),
                 "predicate_counts": _named(vocab.predicates, vocab.predicate_counts)}
    for split in gqa_lt.SPLITS:
        if not gqa_lt.annotation_path(root, split).is_file():
            continue
        s = gqa_lt.read_split(root, split, vocab.objects, vocab.predicates)
        out["splits"][split] = _relation_split_summary([r["image_id"] for r in s],
                                                       np.array([r["subject_box"] for r in s]).reshape(-1, 4),
                                                       np.array([r["object_box"] for r in s]).reshape(-1, 4))
    return out


def check_store(root: Path) -> dict:
    """Summary of a feature store after a deep check of every shard; counts from its train split."""
    store = FeatureStore(root)
    m = store.manifest
    if not store.splits:
        raise DataError(str(root / MANIFEST), "lists no splits", "at least one split with shards")
    counts_split = "train" if "train" in store.splits else store.splits[0]
    out: dict = {"kind": f"feature_store:{m.kind}", "feature_dim": m.feature_dim, "dtype": m.dtype,
                 "splits": {}, "counts_from": f"{counts_split} split"}
    for split in store.splits:
        table = store.read(split)
        if m.kind == SCENE_GRAPH:
            graphs = list(scene_graphs(table))
            labels = np.concatenate([g["labels"] - 1 for g in graphs])
            preds = np.concatenate([g["rels"][:, 2] - 1 for g in graphs])
            out["splits"][split] = {"images": len(graphs), "objects": len(labels), "relations": len(preds)}
            if m.detections:  # SGDet store: the detector's boxes per split
                out["splits"][split]["detections"] = int(sum(len(g["det_boxes"]) for g in graphs))
        else:
            arr = relation_arrays(table)
            labels = np.concatenate([arr["subject"], arr["object"]]).astype(int)
            preds = arr["predicate"].astype(int)
            out["splits"][split] = _relation_split_summary([str(i) for i in arr["image_id"]], arr["subject_box"],
                                                           arr["object_box"])
        if split == counts_split:
            out["object_counts"] = _named(m.objects, np.bincount(labels, minlength=len(m.objects)))
            out["predicate_counts"] = _named(m.predicates, np.bincount(preds, minlength=len(m.predicates)))
    return out


def check_path(path: str | Path, num_val: int = 5000) -> dict:
    """Detect what `path` is and summarise it; DataError when it is none of the known kinds."""
    root = Path(path)
    if not root.exists():
        raise DataError(str(root), "path not found", "a VG-150 directory, a GQA-LT directory or a feature store")
    if (root / MANIFEST).is_file():
        out = check_store(root)
    elif vg150.is_vg150_dir(root):
        out = check_vg150(root, num_val)
    elif gqa_lt.is_gqa_lt_dir(root):
        out = check_gqa_lt(root)
    else:
        raise DataError(str(root), "not a VG-150 directory, GQA-LT directory or feature store",
                        f"{vg150.H5_NAME}, objects.json + rel_annotations_*.json, or {MANIFEST}")
    return {"path": str(root), **out}


def plot_long_tail(summary: dict, out: str | Path) -> Path:
    """Bar plot (log scale) of predicate counts sorted descending, saved atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(summary["predicate_counts"].items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(items)), 4))
    ax.bar(range(len(items)), [max(c, 0.5) for _, c in items], color="tab:blue")
    if len(items) <= 60:
        ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel(f"count ({summary['counts_from']})")
    ax.set_title(f"predicate long tail: {summary['kind']} {Path(summary['path']).name}")
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(out)


def format_summary(s: dict) -> str:
    """Human-readable summary: per-split sizes, head and tail of the predicate counts."""
    det = all("detections" in v for v in s["splits"].values())
    lines = [f"{s['kind']} at {s['path']}",
             f"{'split':<8}{'images':>10}{'objects':>12}{'relations':>12}" + (f"{'detections':>12}" if det else "")]
    lines += [f"{k:<8}{v['images']:>10}{v['objects']:>12}{v['relations']:>12}" + (f"{v['detections']:>12}" if det else "")
              for k, v in s["splits"].items()]
    counts = sorted(s["predicate_counts"].items(), key=lambda kv: -kv[1])
    total = sum(c for _, c in counts) or 1
    lines.append(f"predicates ({len(counts)}, counts from {s['counts_from']}); head:")
    lines += [f"  {n:<24}{c:>10} ({100 * c / total:.1f}%)" for n, c in counts[:5]]
    lines.append("tail:")
    lines += [f"  {n:<24}{c:>10} ({100 * c / total:.2f}%)" for n, c in counts[-5:]]
    absent = [n for n, c in counts if c == 0]
    if absent:
        lines.append(f"absent from the counted split: {len(absent)} predicates (e.g. {absent[:3]})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 when PATH is valid, 1 with one error line otherwise."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="VG-150 directory, GQA-LT directory or feature store")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--plot", help="save the predicate long tail as this PNG")
    ap.add_argument("--num-val", type=int, default=5000, help="VG-150: first N train images form val (default 5000)")
    args = ap.parse_args(argv)
    try:
        summary = check_path(args.path, args.num_val)
        if args.plot:
            plot_long_tail(summary, args.plot)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
