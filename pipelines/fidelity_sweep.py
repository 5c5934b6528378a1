"""Generator fidelity of a trained diffusion bundle across classifier-free guidance scales.

    python pipelines/fidelity_sweep.py --store STORE --bundle RUN/diffusion-*/bundle.safetensors [--guidance 0 1 3 6]

For each guidance scale, the share of generated union features that a logistic-regression probe trained
on real training features assigns to the intended relation, for (a) DiffAugment's tail requests (the
phase's sampling plan over the training and WordNet-augmented tail triplets, at the run's LCH threshold
and synset map) and (b) the triplets of random real test samples (mostly head relations), beside
the same rate on the real test samples. Guidance 0 is unconditional sampling: its rate is what the
test distribution's prior alone earns, so the gap between it and guidance > 0 is what the condition adds.
`spread` = mean per-dimension std of the generated features / that of the real training features.
`copy_*` = share of samples closer to a training sample of their relation than half the median such
distance of real held-out samples (components.diffaug.fidelity.copy_threshold / copy_rate): a memorising generator earns
a high rate by copying, so read the rates together.
The seed (it fits the K-means hardness vectors) and the text encoder and token mode must be those the bundle was
trained with: for a bundle inside a DiffAugment run they are read from its results.json (`--seed`,
`--text-encoder`, `--[no-]text-tokens` must match them if given); an unfinished run needs `--seed`; a bundle
outside a run takes them as given (defaults: 0, minilm, pooled).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import write_json
from components.diffaug.diffusion import load_bundle
from components.diffaug.fidelity import copy_rate, copy_threshold, hit_rate, spread_ratio
from components.diffaug.requests import class_feature_pools
from components.diffaug.sampling import inference_bundle, sample_features
from components.errors import DataError, InputError
from pipelines.diffaug import (
    DiffAugConfig,
    _Conditions,
    _counts,
    _probe,
    _triplets,
    augmented_triplets,
    load_splits,
    tail_plan,
)

# What the bundle was trained with that sampling must repeat: the seed fitted the K-means hardness vectors,
# the text encoder (and token mode) made the condition embeddings. Outside a DiffAugment run: these defaults.
RUN_SETTINGS: dict[str, Any] = {"seed": 0, "text_encoder": "minilm", "text_tokens": False}
# What DiffAugment's tail plan was made with, read from a run's results.json (else DiffAugConfig's defaults;
# a key an older run does not record had the default then), and the open_clip model and checkpoint of its text
# encoder (--clip-model / --clip-checkpoint outside a run; a given checkpoint wins, the file may have moved).
PLAN_SETTINGS = ("lch_threshold", "synsets", "clip_model", "clip_checkpoint")


def run_settings(bundle_path: str, given: dict[str, Any], run: str | None = None) -> dict[str, Any]:
    """seed / text_encoder / text_tokens of the DiffAugment run that trained the bundle (`run`, else the directory
    holding the bundle's `diffusion-*` directory: RUN/results.json), which the `given` ones (None = not given)
    must equal; for a bundle outside a run the given ones, else RUN_SETTINGS; an unfinished run (no
    results.json) needs the seed given. Also PLAN_SETTINGS: the run's, else DiffAugConfig's defaults
    (`clip_checkpoint`: the given one wins, the file may have moved). A `run` whose results.json lists its
    bundles must list this one."""
    bundle_dir = Path(bundle_path).resolve().parent
    in_run = run is not None or bundle_dir.name.startswith("diffusion-")
    results = Path(run) / "results.json" if run is not None else bundle_dir.parent / "results.json"
    defaults = DiffAugConfig()
    if not (in_run and results.is_file()):
        if in_run and given.get("seed") is None:
            raise InputError("seed", f"not given, and {results.parent} has no results.json to read it from (an "
                             "unfinished run, or artifacts shared by runs: give --run, the DiffAugment run)",
                             "the seed that run was started with")
        settings = {k: d if given.get(k) is None else given[k] for k, d in RUN_SETTINGS.items()}
        settings |= {k: given.get(k) or getattr(defaults, k) for k in PLAN_SETTINGS}
    else:
        try:
            recorded = json.loads(results.read_text())
            config = recorded["config"]
            settings = {k: type(d)(config[k]) for k, d in RUN_SETTINGS.items()}
            settings |= {k: type(getattr(defaults, k))(config.get(k, getattr(defaults, k))) for k in PLAN_SETTINGS}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(str(results), f"no readable config.{'/'.join(RUN_SETTINGS)} ({e!r})",
                            "the results.json of a DiffAugment run") from e
        # a bundle's directory name is its content key: it identifies the model wherever the files were moved
        bundles = recorded.get("artifacts", {}).get("bundles", {})
        if bundles and bundle_dir.name not in {Path(b).parent.name for b in bundles.values()}:
            raise InputError("bundle", f"{bundle_path} is not a diffusion model of the run {results.parent}",
                             f"one of {sorted(bundles.values())}")
        for k in (*RUN_SETTINGS, "clip_model"):
            v = given.get(k)
            if v is not None and v != settings[k]:
                raise InputError(k, f"{v}, but the bundle's DiffAugment run {results.parent} used {settings[k]} "
                                 "(the bundle was trained on what it made)", f"{settings[k]}, or not given")
    if given.get("clip_checkpoint"):
        settings["clip_checkpoint"] = given["clip_checkpoint"]
    return settings


def fidelity_sweep(store_dir: str, bundle_path: str, guidance: Sequence[float], n: int = 1000,
                   seed: int | None = None, text_encoder: str | None = None, text_tokens: bool | None = None,
                   cache_dir: str | Path | None = None, clip_checkpoint: str | None = None,
                   clip_model: str | None = None, run: str | None = None) -> dict:
    """{'real': {'tail', 'test', 'copy_tail', 'copy_test'}, 'by_guidance': [{'guidance', 'tail', 'test', 'spread_tail',
    'spread_test', 'copy_tail', 'copy_test'}], 'n', 'tail_requests', 'tail_requests_augmented' (requests of a
    WordNet-augmented triplet), and the settings}; settings left None: see `run_settings`.
    `cache_dir`: where text embeddings are cached (e.g. the DiffAugment run's `text_cache`; None = not cached)."""
    if not guidance or any(g < 0 for g in guidance):
        raise InputError("guidance", f"{list(guidance)}", "one or more scales >= 0")
    settings = run_settings(bundle_path, {"seed": seed, "text_encoder": text_encoder, "text_tokens": text_tokens,
                                          "clip_checkpoint": clip_checkpoint, "clip_model": clip_model}, run)
    seed = settings["seed"]
    bundle = inference_bundle(load_bundle(bundle_path))  # cast once for the 2 x len(guidance) sampling calls
    store, train, test = load_splits(store_dir)
    objects, predicates = store.manifest.objects, store.manifest.predicates
    k = bundle.model.hardness_dim or DiffAugConfig.hardness_k  # K-means size is read off the bundle
    cfg = DiffAugConfig(store=store_dir, out=".", hardness_k=k, **settings)
    obj_counts, rel_counts = _counts(train, len(objects), len(predicates))
    train_trip, test_trip = np.unique(_triplets(train), axis=0), _triplets(test)
    aug = augmented_triplets(cfg, train_trip, obj_counts, rel_counts, objects, None)
    aug_trip = np.stack([aug["subject"], aug["predicate"], aug["object"]], axis=1)
    cond = _Conditions(cfg, objects, predicates, train_trip, np.unique(np.concatenate([aug_trip, test_trip]), axis=0),
                       cache_dir)
    probe = _probe(train, len(predicates), seed)
    plan = tail_plan(train_trip, aug_trip, rel_counts, class_feature_pools(train), n, seed)
    pick = np.random.default_rng(seed).choice(len(test), min(n, len(test)), replace=False)
    sets = {"tail": (np.stack([plan["subject"], plan["predicate"], plan["object"]], 1), plan["sample_id"]),
            "test": (test_trip[pick], np.arange(len(pick)) + 10**9)}  # ids disjoint from the plan's
    tail_rows = np.flatnonzero(np.isin(test.predicate, np.unique(plan["predicate"])))
    held_out = {"tail": (test.union_feature[tail_rows], test.predicate[tail_rows]),
                "test": (test.union_feature[pick], test.predicate[pick])}
    real = {k: hit_rate(probe, *held_out[k], f"real {k} samples") for k in held_out}
    scale = {k: copy_threshold(train.union_feature, train.predicate, *held_out[k]) for k in held_out}
    real |= {f"copy_{k}": real_rate for k, (_, real_rate) in scale.items()}
    rows = []
    for g in guidance:
        row: dict[str, float] = {"guidance": float(g)}
        for name, (trip, ids) in sets.items():
            text, mask, hard = cond.of(trip)
            feats = sample_features(bundle, text, mask, hard, ids, guidance_scale=float(g))
            row[name] = hit_rate(probe, feats, trip[:, 1], f"generated {name} samples")
            row[f"copy_{name}"] = copy_rate(feats, trip[:, 1], train.union_feature, train.predicate,
                                            scale[name][0])
            row[f"spread_{name}"] = spread_ratio(feats, train.union_feature)
        rows.append(row)
    in_train = {tuple(t) for t in train_trip.tolist()}
    augmented = sum(tuple(t) not in in_train for t in sets["tail"][0].tolist())
    return {"real": real, "by_guidance": rows, "n": len(pick), "tail_requests": len(plan["sample_id"]),
            "tail_requests_augmented": augmented, **settings}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: prints a table and the JSON; errors print one line and exit 2."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="relation-sample feature store")
    ap.add_argument("--bundle", required=True, help="a trained diffusion bundle (bundle.safetensors)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0, 6.0])
    ap.add_argument("--n", type=int, default=1000, help="generated samples per set and guidance scale")
    run = "default: the bundle's DiffAugment run's (RUN/results.json), else"
    ap.add_argument("--seed", type=int, help=f"{run} 0")
    ap.add_argument("--text-encoder", help=f"{run} minilm")
    ap.add_argument("--text-tokens", action=argparse.BooleanOptionalAction, help=f"{run} pooled")
    ap.add_argument("--text-cache", help="text-embedding cache dir (e.g. the DiffAugment run's text_cache)")
    ap.add_argument("--clip-model", help=f"open_clip model name for --text-encoder openclip ({run} ViT-L-14)")
    ap.add_argument("--clip-checkpoint", help=f"open_clip checkpoint for --text-encoder openclip ({run} none)")
    ap.add_argument("--run", help="the DiffAugment run that trained the bundle, whose settings to use (default: the "
                                  "directory above the bundle's diffusion-* directory; give it for full.py's runs, "
                                  "whose bundles live in runs/.cache/diffaug-artifacts)")
    ap.add_argument("--out", help="also write the JSON here (atomically)")
    args = ap.parse_args(argv)
    try:
        res = fidelity_sweep(args.store, args.bundle, args.guidance, args.n, args.seed, args.text_encoder,
                             args.text_tokens, args.text_cache, args.clip_checkpoint, args.clip_model, args.run)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    real = res["real"]
    print(f"real: tail {100 * real['tail']:.1f}%  test {100 * real['test']:.1f}%  "
          f"copies: tail {100 * real['copy_tail']:.1f}%  test {100 * real['copy_test']:.1f}%")
    print("guidance   tail %   test %   spread   tail copies %   test copies %")
    for r in res["by_guidance"]:
        print(f"{r['guidance']:8.1f} {100 * r['tail']:8.1f} {100 * r['test']:8.1f} {r['spread_test']:8.2f} "
              f"{100 * r['copy_tail']:15.1f} {100 * r['copy_test']:15.1f}")
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
