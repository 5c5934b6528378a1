"""`sgg-planted`: a seeded, streamed scene-graph benchmark with VG-150's vocabulary, long tail and mixed granularity.

Why: HML's claim (coarse-to-fine training recovers fine predicates that crowd annotators often label with
their coarse parent) can only be checked where the true fine predicate is known. This generator plants
that ground truth (`rel_fine`) beside the annotated label (`rels[:, 2]`), with statistics taken from
VG-150 so a plain cross-entropy model shows VG's head bias. The benchmark is FIXED: its parameters were
calibrated once (see CALIBRATION below) and must not be retuned to favour any method.

Generative process, per image (own RNG seeded by (seed, split, index), so shards are independent):
1. M relations, M = 1 + Poisson(rels_mean - 1). Each true (fine) predicate is drawn from the TRUE
   distribution, derived from VG-150 `train_count` so that AFTER annotation the predicate frequencies
   equal `train_count` (fine f: n_f / (1 - q); parent P: n_P - q/(1-q) * sum of its children, floored
   at `parent_floor` * n_P when that goes negative; only "has" hits the floor, at q > 0.51).
2. Each relation adds one new object (the dependent) placed relative to an anchor: a new root object
   with probability `new_anchor_prob`, else an already placed object. Labels follow per-predicate
   subject/object group preferences (e.g. wearing: person -> clothes; PREDICATE_SPECS) with probability
   `group_affinity`, else VG object frequency (`all_vg_count`). Free objects (no relation) are added so
   the image has about `objects_mean` objects (Poisson), capped at `max_objects`.
3. Geometry per predicate archetype (relation invariants, tested): ON_TOP subject centre above object
   centre with overlapping x-ranges; CONTAINS object box inside subject box; INSIDE subject inside
   object; ABOVE subject bottom <= object top; BELOW subject top >= object bottom; NEAR |dx| >= |dy|
   between centres; OVERLAP boxes intersect. Fine predicates share their parent's archetype; their
   layout parameters (relative size, offsets) are the parent's plus `fine_parent_distance` times their
   own random offset. The scene is then scaled (uniformly) and shifted into a VG-sized image (long side
   `image_long_side`), which keeps every invariant.
4. Object feature = class prototype (N(0, 1) per dim) + `signal` * (sum of the predicate components of
   the relations it takes part in: a_p as subject, b_p as object) + `object_noise` * N(0, 1). A fine
   predicate's components are sqrt(1 - d^2) * parent's + d * own random unit-variance vector
   (d = `fine_parent_distance`): d = 0 makes them indistinguishable, d = 1 unrelated.
5. Annotation: a fine predicate is labelled with its parent with probability q = `coarse_label_prob`
   (crowd annotators' choice of the generic word); `rel_fine` keeps the true one.

VG-150 statistics used as targets: 11.5 objects and 5.6 relations per image (figures for VG-150 given in
the project brief; the VG h5 files are not on this machine to re-derive them); predicate frequencies =
`train_count` of components/data/vg150_vocab.json (after annotation); object frequencies = `all_vg_count`;
image long side 500-1024 px. Measured on the default train split (prepare_data summary): 11.51 objects
and 5.62 relations per image, 49 of 50 predicates present (the expected count of "flying in" is 0.05),
23.4% of all relations annotated with the coarse parent of their true fine predicate.

Sizes: 3,000 train / 300 val / 1,000 test images by default (~34k train objects, ~17k train relations;
writing takes ~5 s, a PredCls epoch of an MLP a few seconds on one core), so both methods run end to end
in minutes on 2 cores; `scale` multiplies every split (scale=10 gives 30k/3k/10k images, about half of
VG-150's size).

Parameters and how they were set:
- A priori (not tuned): coarse_label_prob q = 0.5 (no VG statistic pins it; half of the fine relations
  carry the generic word), fine_parent_distance d = 0.5, layout_jitter 0.3, group_affinity 0.8,
  new_anchor_prob 0.35, parent_floor 0.02, the hierarchy (PREDICATE_SPECS) and the archetypes.
- Calibrated: object_noise and signal, against VG's plain-model PredCls numbers only (MOTIFS PredCls:
  R@20/50/100 = 58.5/65.2/67.1, mR@20/50/100 = 12.5/15.9/17.2, R@100/mR@100 = 3.9; band 3-5), with
  benchmarks/calibrate_planted.py: a plain CE pair MLP, background pairs, epoch chosen by val R@100,
  evaluated by components/evaluation/sgg.py (IoU matching, graph constraint). No HML or DiffAugment run
  was used to choose any parameter.

CALIBRATION EVIDENCE (`python -m benchmarks.calibrate_planted object_noise=X signal=Y seed=S`):
  noise 1.0, signal 1.0 (6 epochs, first draft)  R@100 75.4  mR@100 41.8  ratio 1.8  (too easy on the tail)
  noise 2.0, signal 0.5, seed 0                  R 60.8/66.7/68.2  mR 13.4/16.9/19.4  ratio 3.52
  noise 2.0, signal 0.5, seed 1                  R 62.8/67.8/69.0  mR 14.6/18.3/20.1  ratio 3.43
  noise 2.5, signal 0.5, seed 0  <- FIXED        R 57.8/64.4/66.0  mR 11.9/14.8/16.9  ratio 3.91
  noise 2.5, signal 0.5, seed 1                  R 56.8/63.9/65.6  mR 11.3/15.3/17.2  ratio 3.82
  noise 2.5, signal 0.5, seed 2                  R 58.5/63.7/64.6  mR 13.3/16.3/18.9  ratio 3.43
The same CE model scored against the TRUE fine labels (rel_fine): R@100 49.3 / mR@100 17.1 (seed 0),
the recall a method that recovers fine predicates can improve on.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.errors import ConfigError

VOCAB_PATH = Path(__file__).with_name("vg150_vocab.json")

# Archetypes of box geometry (subject relative to object); see module docstring for the invariants.
ON_TOP, CONTAINS, INSIDE, ABOVE, BELOW, NEAR, OVERLAP = "on_top", "contains", "inside", "above", "below", "near", "overlap"

# Hand-made object groups over VG-150 names (used only for label co-occurrence preferences).
GROUPS: dict[str, tuple[str, ...]] = {
    "person": ("man", "person", "woman", "boy", "girl", "people", "player", "child", "lady", "guy", "skier",
               "kid", "men"),
    "clothes": ("shirt", "pant", "jacket", "hat", "short", "helmet", "jean", "coat", "glove", "cap", "sock", "tie",
                "boot", "shoe", "sneaker"),
    "body": ("leg", "head", "hand", "hair", "ear", "arm", "tail", "face", "nose", "eye", "neck", "wing", "mouth",
             "finger", "paw", "trunk"),
    "animal": ("horse", "giraffe", "elephant", "dog", "cow", "zebra", "bird", "sheep", "cat", "bear", "animal"),
    "vehicle": ("car", "train", "boat", "bus", "plane", "bike", "truck", "motorcycle", "vehicle", "airplane",
                "skateboard", "surfboard", "ski"),
    "place": ("street", "sidewalk", "snow", "beach", "track", "hill", "mountain", "room", "wave", "rock", "tile",
              "building", "house", "tower", "roof", "fence"),
    "furniture": ("table", "chair", "bench", "shelf", "counter", "cabinet", "desk", "bed", "seat", "stand", "sink",
                  "toilet", "railing", "board"),
    "part": ("window", "door", "wheel", "tire", "handle", "windshield", "engine", "letter", "number", "logo",
             "screen", "drawer"),
    "plant": ("tree", "plant", "flower", "leaf", "branch"),
    "food": ("food", "banana", "pizza", "orange", "fruit", "vegetable"),
}
ANY: tuple[str, ...] = ()

# name -> (parent, archetype, subject groups, object groups); coarse predicates are their own parent.
PREDICATE_SPECS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "on": ("on", ON_TOP, ANY, ("place", "furniture", "vehicle", "body")),
    "sitting on": ("on", ON_TOP, ("person", "animal"), ("furniture", "place")),
    "standing on": ("on", ON_TOP, ("person", "animal"), ("place", "vehicle")),
    "walking on": ("on", ON_TOP, ("person", "animal"), ("place",)),
    "laying on": ("on", ON_TOP, ("person", "animal", "food"), ("furniture", "place")),
    "lying on": ("on", ON_TOP, ("person", "animal"), ("furniture", "place")),
    "parked on": ("on", ON_TOP, ("vehicle",), ("place",)),
    "mounted on": ("on", ON_TOP, ("part", "furniture"), ("place", "vehicle")),
    "painted on": ("on", ON_TOP, ("part",), ("vehicle", "place")),
    "growing on": ("on", ON_TOP, ("plant",), ("place", "plant")),
    "on back of": ("on", ON_TOP, ("person",), ("animal", "vehicle")),
    "attached to": ("on", ON_TOP, ("part",), ("vehicle", "furniture", "place")),
    "riding": ("on", ON_TOP, ("person",), ("animal", "vehicle")),
    "has": ("has", CONTAINS, ("person", "animal", "vehicle", "place"), ("body", "part")),
    "wearing": ("has", CONTAINS, ("person",), ("clothes",)),
    "wears": ("has", CONTAINS, ("person",), ("clothes",)),
    "carrying": ("has", CONTAINS, ("person", "animal"), ("food", "furniture", "vehicle")),
    "holding": ("has", CONTAINS, ("person",), ("food", "vehicle")),
    "of": ("of", INSIDE, ("body", "part"), ("person", "animal", "vehicle", "place")),
    "part of": ("of", INSIDE, ("part", "body"), ("vehicle", "place")),
    "belonging to": ("of", INSIDE, ("part", "body"), ("person", "animal")),
    "made of": ("of", INSIDE, ("furniture", "place"), ("plant", "place")),
    "in": ("in", INSIDE, ANY, ("place", "vehicle", "furniture")),
    "walking in": ("in", INSIDE, ("person", "animal"), ("place",)),
    "flying in": ("in", INSIDE, ("animal", "vehicle"), ("place",)),
    "covered in": ("in", INSIDE, ("place", "vehicle", "plant"), ("place",)),
    "near": ("near", NEAR, ANY, ANY),
    "in front of": ("near", NEAR, ANY, ("place", "vehicle", "furniture")),
    "along": ("near", NEAR, ("plant", "vehicle", "place"), ("place",)),
    "against": ("near", NEAR, ("furniture", "vehicle"), ("place", "furniture")),
    "between": ("near", NEAR, ANY, ANY),
    "above": ("above", ABOVE, ANY, ANY),
    "over": ("above", ABOVE, ("part", "plant"), ("place", "furniture")),
    "looking at": ("looking at", NEAR, ("person", "animal"), ANY),
    "watching": ("looking at", NEAR, ("person", "animal"), ("person", "animal")),
    "with": ("with", CONTAINS, ("person",), ("clothes", "food")),
    "behind": ("behind", NEAR, ANY, ANY),
    "under": ("under", BELOW, ANY, ("plant", "furniture", "part")),
    "at": ("at", NEAR, ("person",), ("furniture", "place")),
    "for": ("for", NEAR, ("part",), ("place", "vehicle")),
    "hanging from": ("hanging from", BELOW, ("part", "clothes"), ("place", "furniture", "plant")),
    "eating": ("eating", OVERLAP, ("person", "animal"), ("food", "plant")),
    "using": ("using", OVERLAP, ("person",), ("part", "vehicle")),
    "and": ("and", NEAR, ANY, ANY),
    "covering": ("covering", OVERLAP, ("clothes", "place"), ("body", "furniture")),
    "across": ("across", NEAR, ("vehicle", "person"), ("place",)),
    "to": ("to", NEAR, ("part",), ("place", "vehicle")),
    "from": ("from", NEAR, ("part", "food"), ("place", "furniture")),
    "playing": ("playing", OVERLAP, ("person",), ("vehicle", "part")),
    "says": ("says", CONTAINS, ("part",), ("part",)),
}
PLANTED_PARENTS: dict[str, str] = {name: spec[0] for name, spec in PREDICATE_SPECS.items()}


@dataclass
class PlantedSGGConfig:
    """Parameters of sgg-planted (defaults = the calibrated, fixed benchmark)."""

    seed: int = 0
    scale: float = field(default=1.0, metadata={"range": (1e-3, 1000.0)})
    n_train: int = field(default=3000, metadata={"range": (1, None)})
    n_val: int = field(default=300, metadata={"range": (1, None)})
    n_test: int = field(default=1000, metadata={"range": (1, None)})
    shard_size: int = field(default=500, metadata={"range": (1, None)})
    feature_dim: int = field(default=64, metadata={"range": (4, 4096)})
    objects_mean: float = field(default=11.5, metadata={"range": (2.0, 100.0)})
    rels_mean: float = field(default=5.6, metadata={"range": (1.0, 50.0)})
    max_objects: int = field(default=62, metadata={"range": (4, 500)})
    new_anchor_prob: float = field(default=0.35, metadata={"range": (0.0, 1.0)})
    group_affinity: float = field(default=0.8, metadata={"range": (0.0, 1.0)})
    signal: float = field(default=0.5, metadata={"range": (0.0, 100.0)})
    object_noise: float = field(default=2.5, metadata={"range": (0.0, 100.0)})
    fine_parent_distance: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    coarse_label_prob: float = field(default=0.5, metadata={"range": (0.0, 0.99)})
    parent_floor: float = field(default=0.02, metadata={"range": (0.0, 1.0)})
    layout_jitter: float = field(default=0.3, metadata={"range": (0.0, 5.0)})
    image_long_side: tuple[int, int] = (500, 1024)

    def validate(self) -> None:
        lo, hi = self.image_long_side
        if not 16 <= lo <= hi:
            raise ConfigError("image_long_side", f"range {self.image_long_side}", "16 <= low <= high")
        if self.objects_mean < self.rels_mean + 1:
            raise ConfigError("objects_mean", f"{self.objects_mean} < rels_mean + 1",
                              "at least one more object than relations on average")

    def split_sizes(self) -> dict[str, int]:
        """Images per split after `scale`."""
        return {s: max(1, round(n * self.scale))
                for s, n in (("train", self.n_train), ("val", self.n_val), ("test", self.n_test))}


def vg150_vocab() -> dict:
    """VG-150 names and counts shipped with the project."""
    return json.loads(VOCAB_PATH.read_text())


def true_predicate_distribution(names: list[str], counts: np.ndarray, q: float, floor: float) -> np.ndarray:
    """Fine-label distribution whose annotation (fine -> parent w.p. q) reproduces `counts` (floored parents)."""
    idx = {n: i for i, n in enumerate(names)}
    true = counts.astype(np.float64).copy()
    for n, parent in PLANTED_PARENTS.items():
        if parent != n:
            true[idx[n]] = counts[idx[n]] / (1.0 - q)
    for n, parent in PLANTED_PARENTS.items():
        if parent == n:
            moved = sum(q * true[idx[c]] for c, p in PLANTED_PARENTS.items() if p == n and c != n)
            true[idx[n]] = max(counts[idx[n]] - moved, floor * counts[idx[n]])
    return true / true.sum()


@dataclass
class World:
    """Seed-derived constants shared by all images: prototypes, predicate components, layouts, priors."""

    objects: list[str]
    predicates: list[str]
    parent_index: np.ndarray  # (P,) 0-based parent of each 0-based predicate
    archetype: list[str]
    true_dist: np.ndarray  # (P,)
    obj_freq: np.ndarray  # (O,)
    role_probs: np.ndarray  # (P, 2, O) label distribution of subject / object per predicate
    prototypes: np.ndarray  # (O, D)
    comp: np.ndarray  # (P, 2, D) subject / object components
    layout: np.ndarray  # (P, 3) layout parameters (size, offset a, offset b) in logit space
    class_size: np.ndarray  # (O,) typical log size of each class


def build_world(cfg: PlantedSGGConfig) -> World:
    """Deterministic constants of the benchmark from `cfg.seed`."""
    vocab = vg150_vocab()
    objects = [o["name"] for o in vocab["objects"]]
    predicates = [p["name"] for p in vocab["predicates"]]
    if set(predicates) != set(PREDICATE_SPECS):
        raise ConfigError("PREDICATE_SPECS", "does not cover the VG-150 predicates", "all 50 names")
    rng = np.random.default_rng([cfg.seed, 7_000_001])
    counts = np.array([p["train_count"] for p in vocab["predicates"]], dtype=np.float64)
    obj_freq = np.array([o["all_vg_count"] for o in vocab["objects"]], dtype=np.float64)
    obj_freq /= obj_freq.sum()
    pidx = {n: i for i, n in enumerate(predicates)}
    parent_index = np.array([pidx[PLANTED_PARENTS[n]] for n in predicates])
    group_of = {name: g for g, names in GROUPS.items() for name in names}
    role_probs = np.zeros((len(predicates), 2, len(objects)))
    for i, n in enumerate(predicates):
        for r, groups in enumerate(PREDICATE_SPECS[n][2:]):
            pref = np.array([group_of.get(o) in groups for o in objects], dtype=np.float64) if groups else np.ones(len(objects))
            pref = pref * obj_freq
            role_probs[i, r] = cfg.group_affinity * pref / pref.sum() + (1 - cfg.group_affinity) * obj_freq
    d = cfg.fine_parent_distance
    dim = cfg.feature_dim
    prototypes = rng.normal(size=(len(objects), dim))
    comp = rng.normal(size=(len(predicates), 2, dim))
    layout = rng.normal(size=(len(predicates), 3))
    own_comp = rng.normal(size=comp.shape)
    own_layout = rng.normal(size=layout.shape)
    fine = parent_index != np.arange(len(predicates))
    comp[fine] = np.sqrt(1 - d * d) * comp[parent_index[fine]] + d * own_comp[fine]
    layout[fine] = layout[parent_index[fine]] + d * own_layout[fine]
    class_size = rng.normal(0.0, 0.4, size=len(objects))
    for g, shift in (("place", 1.0), ("vehicle", 0.5), ("furniture", 0.5), ("person", 0.4), ("animal", 0.4),
                     ("clothes", -0.5), ("body", -0.6), ("part", -0.6), ("food", -0.5)):
        class_size[[i for i, o in enumerate(objects) if group_of.get(o) == g]] += shift
    true = true_predicate_distribution(predicates, counts, cfg.coarse_label_prob, cfg.parent_floor)
    return World(objects, predicates, parent_index, [PREDICATE_SPECS[n][1] for n in predicates], true, obj_freq,
                 role_probs, prototypes, comp, layout, class_size)


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    """Logistic function (maps layout parameters to (0, 1))."""
    return 1.0 / (1.0 + np.exp(-x))


def box_from_center(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """xyxy box from centre and size."""
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def place_subject(arch: str, obj: np.ndarray, size: float, params: np.ndarray) -> np.ndarray:
    """Subject box (xyxy) for `arch` relative to object box `obj`; `size` = desired side, `params` in (0, 1)."""
    ow, oh = obj[2] - obj[0], obj[3] - obj[1]
    ocx, ocy = (obj[0] + obj[2]) / 2, (obj[1] + obj[3]) / 2
    a, b = params
    if arch in (INSIDE,):  # subject inside object
        w, h = min(size, 0.9 * ow), min(size, 0.9 * oh)
        return box_from_center(obj[0] + w / 2 + a * (ow - w), obj[1] + h / 2 + b * (oh - h), w, h)
    if arch == CONTAINS:  # subject contains object
        w, h = max(size, 1.2 * ow), max(size, 1.2 * oh)
        return box_from_center(obj[2] - w / 2 + a * (w - ow), obj[3] - h / 2 + b * (h - oh), w, h)
    if arch == ON_TOP:  # subject bottom within the upper part of the object, x-ranges overlap
        w, h = size, size
        cx = obj[0] + a * ow
        bottom = obj[1] + b * 0.5 * oh
        cy = min(bottom - h / 2, ocy - 1e-3 * oh)
        return box_from_center(cx, cy, w, h)
    if arch == ABOVE:
        return box_from_center(ocx + (a - 0.5) * ow, obj[1] - b * 0.5 * oh - size / 2, size, size)
    if arch == BELOW:
        return box_from_center(ocx + (a - 0.5) * ow, obj[3] + b * 0.5 * oh + size / 2, size, size)
    if arch == NEAR:
        side = 1.0 if a >= 0.5 else -1.0
        dx = side * (0.5 * (ow + size) + 0.3 * b * ow)
        dy = (b - 0.5) * min(abs(dx), 0.5 * oh)
        return box_from_center(ocx + dx, ocy + dy, size, size)
    if arch == OVERLAP:  # centres within the object box: intersection is non-empty
        return box_from_center(obj[0] + a * ow, obj[1] + b * oh, size, size)
    raise ValueError(f"unknown archetype {arch!r}")


def place_object(arch: str, subj: np.ndarray, size: float, params: np.ndarray) -> np.ndarray:
    """Object box for `arch` given the subject box: the mirror of `place_subject`."""
    mirror = {INSIDE: CONTAINS, CONTAINS: INSIDE, ABOVE: BELOW, BELOW: ABOVE, NEAR: NEAR, OVERLAP: OVERLAP}
    if arch == ON_TOP:  # object top within the lower half of the subject's height... below its centre
        sw, sh = subj[2] - subj[0], subj[3] - subj[1]
        a, b = params
        w, h = max(size, 0.6 * sw), max(size, 0.6 * sh)
        top = subj[3] - b * 0.5 * sh
        cx = subj[0] + a * sw
        return box_from_center(cx, top + h / 2, w, h)
    return place_subject(mirror[arch], subj, size, params)


def relation_holds(arch: str, s: np.ndarray, o: np.ndarray) -> bool:
    """Whether subject box `s` and object box `o` satisfy archetype `arch`'s invariant."""
    scx, scy = (s[0] + s[2]) / 2, (s[1] + s[3]) / 2
    ocx, ocy = (o[0] + o[2]) / 2, (o[1] + o[3]) / 2
    eps = 1e-6 * max(s[2] - s[0], o[2] - o[0], 1.0)
    if arch == ON_TOP:
        return scy < ocy and s[0] <= o[2] + eps and o[0] <= s[2] + eps
    if arch == CONTAINS:
        return bool(s[0] <= o[0] + eps and s[1] <= o[1] + eps and s[2] + eps >= o[2] and s[3] + eps >= o[3])
    if arch == INSIDE:
        return relation_holds(CONTAINS, o, s)
    if arch == ABOVE:
        return s[3] <= o[1] + eps
    if arch == BELOW:
        return s[1] + eps >= o[3]
    if arch == NEAR:
        return abs(scx - ocx) + eps >= abs(scy - ocy)
    if arch == OVERLAP:
        return min(s[2], o[2]) > max(s[0], o[0]) and min(s[3], o[3]) > max(s[1], o[1])
    raise ValueError(f"unknown archetype {arch!r}")


SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def generate_image(world: World, cfg: PlantedSGGConfig, split: str, index: int) -> dict:
    """One scene graph in the store's scene_graph layout, deterministic in (seed, split, index)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], index])
    n_rel = 1 + rng.poisson(cfg.rels_mean - 1)
    labels: list[int] = []
    boxes: list[np.ndarray] = []
    rels: list[tuple[int, int, int]] = []

    def new_size(label: int) -> float:
        return float(np.exp(world.class_size[label] + 0.3 * rng.normal()))

    for _ in range(n_rel):
        p = int(rng.choice(len(world.predicates), p=world.true_dist))
        anchor_role = int(rng.integers(2))  # 0: anchor is the subject, 1: the object
        if not labels or rng.random() < cfg.new_anchor_prob:
            labels.append(int(rng.choice(len(world.objects), p=world.role_probs[p, anchor_role])))
            boxes.append(box_from_center(rng.normal() * 3, rng.normal() * 3, new_size(labels[-1]), new_size(labels[-1])))
        anchor = int(rng.integers(len(labels)))
        dep_label = int(rng.choice(len(world.objects), p=world.role_probs[p, 1 - anchor_role]))
        params = sigmoid(world.layout[p, 1:] + cfg.layout_jitter * rng.normal(size=2))
        size = float(np.exp(world.class_size[dep_label] + 0.3 * world.layout[p, 0] + 0.3 * rng.normal()))
        arch = world.archetype[p]
        if anchor_role == 0:
            boxes.append(place_object(arch, boxes[anchor], size, params))
            rels.append((anchor, len(labels), p))
        else:
            boxes.append(place_subject(arch, boxes[anchor], size, params))
            rels.append((len(labels), anchor, p))
        labels.append(dep_label)
        if len(labels) >= cfg.max_objects - 1:
            break
    n_free = rng.poisson(max(cfg.objects_mean - (cfg.rels_mean + 1 + (cfg.rels_mean - 1) * cfg.new_anchor_prob), 0.0))
    n_free = min(int(n_free), cfg.max_objects - len(labels))
    arr = np.stack(boxes)
    lo, hi = arr[:, :2].min(0), arr[:, 2:].max(0)
    for _ in range(n_free):
        lab = int(rng.choice(len(world.objects), p=world.obj_freq))
        s = new_size(lab)
        labels.append(lab)
        boxes.append(box_from_center(*(lo + rng.random(2) * (hi - lo)), s, s))
    arr = np.stack(boxes)
    lo, hi = arr[:, :2].min(0), arr[:, 2:].max(0)
    long_side = rng.uniform(*cfg.image_long_side)
    k = long_side / max(hi - lo)
    arr = (arr - np.concatenate([lo, lo])) * k
    width, height = int(np.ceil(max(arr[:, 2].max(), 1.0))), int(np.ceil(max(arr[:, 3].max(), 1.0)))
    lab = np.asarray(labels)
    rel = np.asarray(rels, dtype=np.int64).reshape(-1, 3)
    feats = world.prototypes[lab] + cfg.object_noise * rng.normal(size=(len(lab), cfg.feature_dim))
    np.add.at(feats, rel[:, 0], cfg.signal * world.comp[rel[:, 2], 0])
    np.add.at(feats, rel[:, 1], cfg.signal * world.comp[rel[:, 2], 1])
    fine = rel[:, 2]
    coarse = rng.random(len(fine)) < cfg.coarse_label_prob
    annotated = np.where(coarse, world.parent_index[fine], fine)
    return {
        "image_id": f"{split}-{index:07d}", "split": split, "width": width, "height": height,
        "boxes": arr.astype(np.float32), "labels": lab + 1, "obj_features": feats.astype(np.float32),
        "rels": np.stack([rel[:, 0], rel[:, 1], annotated + 1], axis=1), "rel_fine": fine + 1,
    }


def generate_split(cfg: PlantedSGGConfig, split: str, world: World | None = None) -> Iterator[list[dict]]:
    """Shards (lists of at most `shard_size` images) of `split`, streamed."""
    world = world or build_world(cfg)
    n = cfg.split_sizes()[split]
    for start in range(0, n, cfg.shard_size):
        yield [generate_image(world, cfg, split, i) for i in range(start, min(n, start + cfg.shard_size))]
