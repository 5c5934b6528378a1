"""HML's test-split prediction: a method's final stage model scores every ordered object pair of every
evaluation image, streamed shard by shard. Two places run it, with the same results:

- the driver process (`predict_actors=0`, the laptop default: no actor start-up);
- a Ray Data actor pool (`predict_actors=N`): N actors, each holding the model on its own CPUs (or GPU with
  `use_gpu`), take the split's shards one at a time (one Ray Data block per shard, so every actor gets work),
  read, validate and predict them; their output rows come back in store order as the store's columns plus
  the prediction columns of `PREDICTION_FIELDS`, which the driver decodes into the same (image, prediction)
  pairs the driver path yields. The driver never reads a shard itself: a bad one is the actor's DataError,
  re-raised in the driver with its type and message (pipelines/actor_errors.py).

Both paths group images `batch_images` at a time within a shard (never across two), so they compute the same
numbers.
"""
from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.config import config_hash
from components.data.store import FeatureStore, scene_graphs
from components.hml.checkpoint import load_checkpoint
from components.models.checkpoint import load_predictor_state
from components.models.registry import build_predictor

# Per image, flattened row-major: pairs (P, 2), rel_scores (P, C + 1); SGCls only (null in PredCls): each
# object's predicted label (1..C_obj) and its softmax probability.
PREDICTION_FIELDS = (
    pa.field("pred_pairs", pa.list_(pa.int64()), nullable=False),
    pa.field("pred_rel_scores", pa.list_(pa.float32()), nullable=False),
    pa.field("pred_obj_labels", pa.list_(pa.int64())),
    pa.field("pred_obj_scores", pa.list_(pa.float32())),
)


def build_stage_model(model_cfg: dict, fb_path: str | Path | None):
    """A fresh predictor of the run's model config (frequency bias read from `fb_path` if given)."""
    fb = np.load(fb_path) if fb_path else None
    return build_predictor(freq_bias=fb, name=model_cfg["predictor"], num_objects=model_cfg["num_objects"],
                           num_predicates=model_cfg["num_predicates"], feature_dim=model_cfg["feature_dim"],
                           hidden_dim=model_cfg["hidden_dim"], mode=model_cfg.get("mode", "predcls"))


def load_stage_model(path: str | Path, model_cfg: dict, fb_path: str | Path | None):
    """The predictor stored in a stage checkpoint (final model of a method), in eval mode."""
    _, state = load_checkpoint(path, expect={"model_hash": config_hash({**model_cfg, "freq_bias": fb_path is not None})})
    return load_predictor_state(build_stage_model(model_cfg, fb_path), state["model"], path).eval()


def predict_images(model, images: Iterable[dict], batch_images: int = 8) -> Iterator[tuple[dict, dict]]:
    """(image, prediction) per image, streamed `batch_images` at a time: all ordered pairs with their softmax
    scores over 0..C (0 = background); for an SGCls model also each object's predicted label (argmax over the
    classes 1..C) and its softmax probability. An SGDet model sees the image's detections in place of its
    objects (pairs and object predictions then index `det_boxes`). Computes on the model's device, returns numpy."""
    import torch

    from components.data.detections import detection_graph
    from components.models.pairs import all_pairs

    device = next(model.parameters()).device
    sgdet = getattr(model, "mode", "predcls") == "sgdet"
    it = iter(images)
    while chunk := list(itertools.islice(it, batch_images)):
        seen = [detection_graph(im) for im in chunk] if sgdet else chunk
        batch = all_pairs(seen)
        with torch.no_grad():
            scores = torch.softmax(model(batch.to(device)), dim=1).cpu().numpy()
            objects = getattr(model, "object_logits", None)  # None unless the model predicts objects (SGCls)
            if objects is not None:
                probs = torch.softmax(objects, dim=1)[:, 1:]
                obj_scores, obj_labels = (t.cpu().numpy() for t in probs.max(1))
        owner = batch.pair_to_img.numpy()
        offsets = np.cumsum([0] + [len(im["labels"]) for im in seen])
        for k, img in enumerate(chunk):
            sel = owner == k
            pred = {"image_id": img["image_id"], "pairs": batch.pairs.numpy()[sel] - offsets[k],
                    "rel_scores": scores[sel]}
            if objects is not None:
                rows = slice(offsets[k], offsets[k + 1])
                pred.update(obj_labels=obj_labels[rows] + 1, obj_scores=obj_scores[rows])
            yield img, pred


def shard_plan(store: FeatureStore, split: str, limit: int | None) -> list[tuple[int, int]]:
    """(shard index in the manifest, rows to take) of each shard of `split` needed for its first `limit` rows
    (all if None), from the manifest's row counts: no shard is opened."""
    store.paths(split)  # DataError for a missing or empty split
    plan, taken = [], 0
    for i, entry in enumerate(store.manifest.splits[split]):
        if limit is not None and taken >= limit:
            break
        plan.append((i, int(entry["rows"]) if limit is None else min(int(entry["rows"]), limit - taken)))
        taken += plan[-1][1]
    return plan


def evaluation_tables(store: FeatureStore, split: str, limit: int | None) -> Iterator[pa.Table]:
    """Validated shards of the evaluation split (the first `limit` rows if set), one at a time."""
    plan = shard_plan(store, split, limit)
    for shard, rows in plan:
        yield store.read_shard(store.manifest.splits[split][shard]).slice(0, rows)


def predict_store(model, store: FeatureStore, split: str, limit: int | None,
                  batch_images: int = 8) -> Iterator[tuple[dict, dict]]:
    """The driver path: `predict_images` shard by shard (batches never cross a shard, as in the actor pool)."""
    for table in evaluation_tables(store, split, limit):
        yield from predict_images(model, scene_graphs(table), batch_images)


def prediction_columns(table: pa.Table, preds: list[dict]) -> pa.Table:
    """`table` (store rows) with the prediction columns of its images (`preds` in row order) appended."""
    def flat(key: str, dtype) -> list:
        return [np.asarray(p[key], dtype).reshape(-1) if key in p else None for p in preds]

    values = (flat("pairs", np.int64), flat("rel_scores", np.float32), flat("obj_labels", np.int64),
              flat("obj_scores", np.float32))
    for f, column in zip(PREDICTION_FIELDS, values):
        table = table.append_column(f, pa.array(column, f.type))
    return table


def predicted_rows(table: pa.Table, num_predicates: int) -> Iterator[tuple[dict, dict]]:
    """Inverse of `prediction_columns`: (image, prediction) per row, as `predict_images` yields them."""
    names = [f.name for f in PREDICTION_FIELDS]
    cols = {n: table.column(n).to_pylist() if n.startswith("pred_obj") else table.column(n).to_numpy() for n in names}
    graphs = scene_graphs(table.drop_columns(names))
    for i, img in enumerate(graphs):
        pred = {"image_id": img["image_id"], "pairs": np.asarray(cols["pred_pairs"][i]).reshape(-1, 2),
                "rel_scores": np.asarray(cols["pred_rel_scores"][i], np.float32).reshape(-1, num_predicates + 1)}
        if cols["pred_obj_labels"][i] is not None:
            pred.update(obj_labels=np.asarray(cols["pred_obj_labels"][i], np.int64),
                        obj_scores=np.asarray(cols["pred_obj_scores"][i], np.float32))
        yield img, pred


class PredictActor:
    """Ray Data actor: one stage model in eval mode on `device`; a batch of (shard, rows) items -> those
    shards' first rows (read and validated here, checksum included, where the model is) plus their
    predictions (`prediction_columns`) and the actor's identity (`pred_actor`, "host:pid"). A bad shard's
    DataError leaves as `ActorInputError` (pipelines/actor_errors.py)."""

    def __init__(self, checkpoint: str, model_cfg: dict, fb_path: str | None, threads: int, device: str,
                 batch_images: int, store: str, split: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = load_stage_model(checkpoint, model_cfg, fb_path).to(device)
        self.batch_images = batch_images
        self.store = FeatureStore(store)
        self.entries = self.store.manifest.splits[split]
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, items: pa.Table) -> pa.Table:
        from pipelines.actor_errors import wrapped_input_errors  # imports Ray: only where Ray runs this

        tables = []
        for shard, rows in zip(items.column("shard").to_pylist(), items.column("rows").to_pylist()):
            with wrapped_input_errors():
                table = self.store.read_shard(self.entries[shard]).slice(0, rows)
            preds = [p for _, p in predict_images(self.model, scene_graphs(table), self.batch_images)]
            tables.append(prediction_columns(table, preds))
        out = pa.concat_tables(tables)
        return out.append_column("pred_actor", pa.array([self.name] * out.num_rows, pa.string()))


def predict_on_ray(checkpoint: str | Path, model_cfg: dict, fb_path: str | Path | None, store: str | Path,
                   split: str, limit: int | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                   batch_images: int = 8) -> Iterator[tuple[dict, dict]]:
    """`predict_store` run by a Ray Data pool of `actors` actors (at most one per shard): yields the same
    (image, prediction) pairs in store order (the first `limit` images if set), each prediction also naming
    the actor that made it (`actor`). The dataset holds one small (shard, rows) item per block, so the pool
    balances whole shards over its actors; each actor reads its shards itself.

    Only the actors read shards (each once); a bad shard is the actor's DataError, raised here with its own
    type and message. Predictions yielded before it are the caller's to discard (the prediction writer only
    publishes a complete directory)."""
    import ray

    from pipelines.actor_errors import carry_input_errors, input_errors_raised
    from pipelines.ray_runtime import actor_device, actor_threads

    fs = FeatureStore(store)
    items = [{"shard": shard, "rows": rows} for shard, rows in shard_plan(fs, split, limit)]
    if not items:  # limit 0: nothing to predict, no pool to start
        return
    ds = carry_input_errors(ray.data.from_items(items, override_num_blocks=len(items)))
    ds.context.execution_options.preserve_order = True
    ds.context.wait_for_min_actors_s = 600  # every actor is up before the first shard goes out (the pipeline
    # checked that the cluster holds them), and with one shard in flight per actor, no actor takes them all
    kwargs = {"checkpoint": str(Path(checkpoint).resolve()), "model_cfg": model_cfg,
              "fb_path": str(Path(fb_path).resolve()) if fb_path else None,
              "threads": actor_threads(cpus_per_actor), "device": actor_device(gpus_per_actor),
              "batch_images": batch_images, "store": str(Path(store).resolve()), "split": split}
    out = ds.map_batches(PredictActor, fn_constructor_kwargs=kwargs,
                         compute=ray.data.ActorPoolStrategy(size=min(actors, len(items)),
                                                           max_tasks_in_flight_per_actor=1),
                         num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, batch_size=1, batch_format="pyarrow")
    with input_errors_raised():
        for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            actor = table.column("pred_actor").to_pylist()
            for (img, pred), name in zip(predicted_rows(table.drop_columns(["pred_actor"]),
                                                        model_cfg["num_predicates"]), actor):
                yield img, {**pred, "actor": name}
