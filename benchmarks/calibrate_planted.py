"""Calibration check of sgg-planted: does a plain cross-entropy pair model show VG's head bias (R@100 / mR@100 in 3-5)?

Trains a plain CE MLP on pair features [subject feature, object feature, subject/object label embedding,
box geometry] with sampled background pairs (3 per foreground pair, as in SGG training), then ranks all
ordered pairs of each test image (PredCls: GT boxes and labels; graph constraint: one predicate per pair,
score = its softmax probability) and reports R@K / mR@K against the ANNOTATED labels with the SGG
community protocol (components/evaluation/sgg.py: label + IoU >= 0.5 matching), plus R@100 / mR@100
against the planted TRUE fine labels (`fine_*`). The kept epoch is the one with the best val R@100.
VG reference (MOTIFS PredCls): R@20/50/100 = 58.5/65.2/67.1 (67.2 in HML's table), mR = 12.5/15.9/17.2,
ratio R@100 / mR@100 = 3.9.

Run: python -m benchmarks.calibrate_planted [--epochs E] [PlantedSGGConfig overrides key=value, e.g. scale=0.05]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.config import apply_overrides, from_dict, to_dict
from components.data.planted_sgg import PlantedSGGConfig, build_world, generate_split
from components.data.planted_vrr import PlantedVRRConfig, build_vrr_world
from components.data.planted_vrr import generate_split as gen_vrr
from components.errors import InputError
from components.evaluation.sgg import evaluate_sgg

KS = (20, 50, 100)


def pair_geometry(boxes: np.ndarray, pairs: np.ndarray, width: float, height: float) -> np.ndarray:
    """(R, 13) box geometry of (subject, object) pairs: normalised boxes, offsets, log size ratios, IoU."""
    s, o = boxes[pairs[:, 0]], boxes[pairs[:, 1]]
    scale = np.array([width, height, width, height], dtype=np.float32)
    sw, sh = s[:, 2] - s[:, 0] + 1, s[:, 3] - s[:, 1] + 1
    ow, oh = o[:, 2] - o[:, 0] + 1, o[:, 3] - o[:, 1] + 1
    dx = ((o[:, 0] + o[:, 2]) - (s[:, 0] + s[:, 2])) / (2 * sw)
    dy = ((o[:, 1] + o[:, 3]) - (s[:, 1] + s[:, 3])) / (2 * sh)
    iw = np.clip(np.minimum(s[:, 2], o[:, 2]) - np.maximum(s[:, 0], o[:, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(s[:, 3], o[:, 3]) - np.maximum(s[:, 1], o[:, 1]) + 1, 0, None)
    inter = iw * ih
    iou = inter / (sw * sh + ow * oh - inter)
    return np.concatenate([s / scale, o / scale, np.stack([np.tanh(dx), np.tanh(dy), np.log(ow / sw), np.log(oh / sh),
                                                            iou], 1)], 1).astype(np.float32)


def image_pairs(img: dict, rng: np.random.Generator | None, bg_per_fg: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (rng None) or GT pairs + sampled background pairs, with predicate labels (0 = bg)."""
    n = len(img["labels"])
    lab = np.zeros((n, n), dtype=np.int64)
    lab[img["rels"][:, 0], img["rels"][:, 1]] = img["rels"][:, 2]
    ii, jj = np.nonzero(~np.eye(n, dtype=bool))
    if rng is not None:
        fg = lab[ii, jj] > 0
        bg = np.nonzero(~fg)[0]
        take = rng.choice(bg, size=min(len(bg), bg_per_fg * int(fg.sum())), replace=False)
        keep = np.concatenate([np.nonzero(fg)[0], take])
        ii, jj = ii[keep], jj[keep]
    pairs = np.stack([ii, jj], 1)
    return pairs, lab[ii, jj]


def pair_inputs(img: dict, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features+geometry, label pair) inputs of the pair model."""
    f = img["obj_features"]
    x = np.concatenate([f[pairs[:, 0]], f[pairs[:, 1]], pair_geometry(img["boxes"], pairs, img["width"],
                                                                        img["height"])], 1)
    return x, img["labels"][pairs]


class PairMLP(nn.Module):
    """Plain pair classifier: MLP over [subject feat, object feat, geometry, label embeddings]."""

    def __init__(self, in_dim: int, num_objects: int, num_predicates: int, hidden: int = 256) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_objects + 1, 32)
        self.net = nn.Sequential(nn.Linear(in_dim + 64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_predicates + 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self.emb(labels).flatten(1)], 1))


def train_ce(images: list[dict], val: list[dict], num_objects: int, num_predicates: int, epochs: int, seed: int,
             bg_per_fg: int = 3, patience: int = 4) -> tuple[PairMLP, int]:
    """Train the plain CE pair model on annotated labels; keep the epoch of best val R@100 (as SGG codebases
    do), stopping after `patience` epochs without improvement."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PairMLP(images[0]["obj_features"].shape[1] * 2 + 13, num_objects, num_predicates)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    best, best_epoch, best_state = -1.0, 0, None
    for epoch in tqdm(range(epochs), desc="train CE", leave=False):
        model.train()
        xs, ls, ys = [], [], []
        for img in images:
            pairs, y = image_pairs(img, rng, bg_per_fg)
            x, lab = pair_inputs(img, pairs)
            xs.append(x), ls.append(lab), ys.append(y)
        x, lab, y = (torch.from_numpy(np.concatenate(a)) for a in (xs, ls, ys))
        order = torch.randperm(len(y))
        for b in range(0, len(y), 512):
            idx = order[b:b + 512]
            loss = nn.functional.cross_entropy(model(x[idx], lab[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = evaluate_sgg(predcls_predictions(model, val), num_predicates, (100,))["R@100"]
        if score > best:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch + 1 - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return model, best_epoch


@torch.no_grad()
def predcls_predictions(model: PairMLP, images: list[dict], fine: bool = False) -> Iterator[dict]:
    """Per-image PredCls inputs of evaluate_sgg: GT boxes/labels (score 1), all ordered pairs, softmax scores.

    `fine` swaps the annotated GT predicates for the planted true fine ones (rel_fine).
    """
    model.eval()
    for img in images:
        pairs, _ = image_pairs(img, None, 0)
        x, lab = pair_inputs(img, pairs)
        gt = img["rels"].copy()
        if fine:
            gt[:, 2] = img["rel_fine"]
        yield {"gt_boxes": img["boxes"], "gt_labels": img["labels"], "gt_rels": gt, "pred_boxes": img["boxes"],
               "pred_labels": img["labels"], "pred_scores": np.ones(len(img["labels"]), dtype=np.float32),
               "rel_pairs": pairs, "rel_scores": torch.softmax(model(torch.from_numpy(x), torch.from_numpy(lab)), 1).numpy()}


def calibrate(cfg: PlantedSGGConfig, epochs: int = 20) -> dict[str, float]:
    """Generate train/val/test, train plain CE (val-selected epoch), return R@K, mR@K and R@100 / mR@100."""
    world = build_world(cfg)
    train, val, test = ([img for shard in generate_split(cfg, s, world) for img in shard]
                        for s in ("train", "val", "test"))
    model, best_epoch = train_ce(train, val, len(world.objects), len(world.predicates), epochs, cfg.seed)
    num = len(world.predicates)
    full = evaluate_sgg(predcls_predictions(model, test), num, KS)
    res = {k: full[k] for k in [f"{m}@{k}" for m in ("R", "mR") for k in KS]}
    fine = evaluate_sgg(predcls_predictions(model, test, fine=True), num, (100,))
    res.update({"fine_R@100": fine["R@100"], "fine_mR@100": fine["mR@100"]})
    res["best_epoch"] = best_epoch
    res["ratio@100"] = res["R@100"] / max(res["mR@100"], 1e-9)
    return res


def band_accuracy(pred: np.ndarray, true: np.ndarray, train_counts: np.ndarray) -> dict[str, float]:
    """Mean per-class top-1 accuracy (percent) over classes present in `true`, in GQA-LT bands (few 80% /
    medium 15% / many 5% by training count, ascending) and overall."""
    present = np.unique(true)
    acc = np.array([np.mean(pred[true == c] == c) for c in present])
    order = np.argsort(train_counts[present], kind="stable")
    few, medium, many = np.split(order, [int(0.8 * len(order)), int(0.95 * len(order))])
    return {"all": 100 * acc.mean(), "many": 100 * acc[many].mean(), "medium": 100 * acc[medium].mean(),
            "few": 100 * acc[few].mean()}


def _fit_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, classes: int, epochs: int, seed: int) -> np.ndarray:
    """Plain CE MLP (one hidden layer of 256) trained on (x, y); argmax predictions on `x_test`."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for _ in range(epochs):
        order = torch.randperm(len(yt))
        for b in range(0, len(yt), 256):
            idx = order[b:b + 256]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return model(torch.from_numpy(x_test)).argmax(1).numpy()


def calibrate_vrr(cfg: PlantedVRRConfig, epochs: int = 10) -> dict[str, float]:
    """Plain CE on vrr-planted: relation from [subject, object, union] features, subject/object from their
    own features; GQA-LT band accuracies (S/O = mean of subject and object)."""
    world = build_vrr_world(cfg)
    tr, te = ({k: np.concatenate([[r[k] for r in rows] for rows in gen_vrr(cfg, s, world)])
               for k in ("subject", "object", "predicate", "subject_feature", "object_feature", "union_feature")}
              for s in ("train", "test"))
    rel_x = lambda d: np.concatenate([d["subject_feature"], d["object_feature"], d["union_feature"]], 1).astype(np.float32)
    n_obj, n_pred = len(world.objects), len(world.predicates)
    rel = band_accuracy(_fit_predict(rel_x(tr), tr["predicate"], rel_x(te), n_pred, epochs, cfg.seed), te["predicate"],
                        np.bincount(tr["predicate"], minlength=n_pred))
    so_x = np.concatenate([tr["subject_feature"], tr["object_feature"]]).astype(np.float32)
    so_y = np.concatenate([tr["subject"], tr["object"]])
    so_counts = np.bincount(so_y, minlength=n_obj)
    pred = _fit_predict(so_x, so_y, np.concatenate([te["subject_feature"], te["object_feature"]]).astype(np.float32),
                        n_obj, epochs, cfg.seed)
    sub = band_accuracy(pred[: len(te["subject"])], te["subject"], so_counts)
    obj = band_accuracy(pred[len(te["subject"]):], te["object"], so_counts)
    out = {f"R_{k}": v for k, v in rel.items()}
    out.update({f"SO_{k}": (sub[k] + obj[k]) / 2 for k in sub})
    out["combined"] = (out["R_all"] + out["SO_all"]) / 2
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("sgg-planted", "vrr-planted"), default="sgg-planted")
    ap.add_argument("--epochs", type=int, default=20, help="max epochs (sgg: the best val R@100 epoch is kept)")
    ap.add_argument("overrides", nargs="*", help="benchmark config overrides key=value")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cls = PlantedSGGConfig if args.dataset == "sgg-planted" else PlantedVRRConfig
    try:
        cfg = from_dict(cls, apply_overrides({}, args.overrides))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = calibrate(cfg, args.epochs) if args.dataset == "sgg-planted" else calibrate_vrr(cfg, min(args.epochs, 10))
    print(to_dict(cfg))
    print("  ".join(f"{k}={v:.2f}" for k, v in res.items()), f"({time.perf_counter() - t0:.0f}s)")
    if args.dataset == "sgg-planted":
        print("VG MOTIFS PredCls reference: R@20/50/100=58.5/65.2/67.1 mR@20/50/100=12.5/15.9/17.2 ratio@100=3.9; "
              "target band 3-5")
    else:
        print("GQA-LT LSVRU CE reference (310 predicates, 1,703 objects): R all 10.22, S/O all 14.28, combined 12.25")
    return 0


if __name__ == "__main__":
    sys.exit(main())
