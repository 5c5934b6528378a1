"""Calibration check of sgg-planted: does a plain cross-entropy pair model show VG's head bias (R@100 / mR@100 in 3-5)?

Trains a plain CE MLP on pair features [subject feature, object feature, subject/object label embedding,
box geometry] with sampled background pairs (3 per foreground pair, as in SGG training), then ranks all
ordered pairs of each test image (PredCls: GT boxes and labels; graph constraint: one predicate per pair,
score = its softmax probability) and reports R@K / mR@K against the ANNOTATED labels. Matching is by
object index (PredCls gives the GT boxes, so IoU matching reduces to index matching except for duplicate
boxes, which the planted data has none of). VG reference (MOTIFS PredCls): R@100 67.2, mR@100 17.2, ratio 3.9.

Run: python -m benchmarks.calibrate_planted [--scale S] [--epochs E] [cfg overrides key=value ...]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.config import apply_overrides, from_dict, to_dict
from components.data.planted_sgg import PlantedSGGConfig, build_world, generate_split
from components.errors import InputError

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
             bg_per_fg: int = 3) -> tuple[PairMLP, int]:
    """Train the plain CE pair model on annotated labels; keep the epoch of best val R@100 (as SGG codebases do)."""
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
        score = predcls_recall(model, val, num_predicates, (100,))["R@100"]
        if score > best:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model, best_epoch


@torch.no_grad()
def predcls_recall(model: PairMLP, images: list[dict], num_predicates: int,
                   ks: tuple[int, ...] = KS) -> dict[str, float]:
    """R@K and mR@K (graph constraint, index matching) of `model` on annotated labels, in percent."""
    model.eval()
    hits = {k: [] for k in ks}
    per_pred = {k: [[] for _ in range(num_predicates + 1)] for k in ks}
    for img in images:
        if len(img["rels"]) == 0:
            continue
        pairs, _ = image_pairs(img, None, 0)
        x, lab = pair_inputs(img, pairs)
        prob = torch.softmax(model(torch.from_numpy(x), torch.from_numpy(lab)), 1)[:, 1:].numpy()
        pred = prob.argmax(1) + 1
        order = np.argsort(-prob.max(1), kind="stable")
        gt = img["rels"]
        for k in ks:
            top = order[:k]
            got = {(int(pairs[t, 0]), int(pairs[t, 1]), int(pred[t])) for t in top}
            match = np.array([(int(s), int(o), int(p)) in got for s, o, p in gt])
            hits[k].append(match.mean())
            for p in np.unique(gt[:, 2]):
                per_pred[k][p].append(match[gt[:, 2] == p].mean())
    out = {}
    for k in ks:
        out[f"R@{k}"] = 100 * float(np.mean(hits[k]))
        out[f"mR@{k}"] = 100 * float(np.mean([np.mean(v) if v else 0.0 for v in per_pred[k][1:]]))
    return out


def calibrate(cfg: PlantedSGGConfig, epochs: int = 20) -> dict[str, float]:
    """Generate train/val/test, train plain CE (val-selected epoch), return R@K, mR@K and R@100 / mR@100."""
    world = build_world(cfg)
    train, val, test = ([img for shard in generate_split(cfg, s, world) for img in shard]
                        for s in ("train", "val", "test"))
    model, best_epoch = train_ce(train, val, len(world.objects), len(world.predicates), epochs, cfg.seed)
    res = predcls_recall(model, test, len(world.predicates))
    res["best_epoch"] = best_epoch
    res["ratio@100"] = res["R@100"] / max(res["mR@100"], 1e-9)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20, help="max epochs; the best val R@100 epoch is kept")
    ap.add_argument("overrides", nargs="*", help="PlantedSGGConfig overrides key=value")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        cfg = from_dict(PlantedSGGConfig, apply_overrides({}, args.overrides))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = calibrate(cfg, args.epochs)
    print({k: v for k, v in to_dict(cfg).items()})
    print("  ".join(f"{k}={v:.2f}" for k, v in res.items()), f"({time.perf_counter() - t0:.0f}s)")
    print("VG MOTIFS PredCls reference: R@100=67.2 mR@100=17.2 ratio=3.91; target band 3-5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
