"""Versioned pyarrow schemas of the feature store: the contract between all parts of the project.

Two record kinds:
- `scene_graph` (one row per image, SGG): boxes xyxy in image pixels, object labels 1..C_obj
  (0 = background, never stored), per-object features, GT relations (subject index, object index,
  predicate 1..C_pred) with indices local to the image, and the true fine predicate where known
  (planted data; equals the annotated predicate for real data). A store for SGDet also holds each image's
  detections (`det_boxes`, `det_features`: a detector's boxes and their RoI features), which SGDet models
  see in place of the GT objects; the GT columns stay for training targets and evaluation.
- `relation_sample` (one row per relation, LTVRR): 0-based subject/object/predicate labels, boxes
  and subject/object/union features.
Feature dims and dtype are recorded in the schema metadata.
"""
from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa

SCHEMA_VERSION = 1
SCENE_GRAPH = "scene_graph"
RELATION_SAMPLE = "relation_sample"
KINDS = (SCENE_GRAPH, RELATION_SAMPLE)
FeatureDType = Literal["float16", "float32"]

META_KIND = b"hmldiff.kind"
META_VERSION = b"hmldiff.schema_version"
META_DIMS = b"hmldiff.dims"
META_DTYPE = b"hmldiff.feature_dtype"

DETECTION_COLUMNS = ("det_boxes", "det_features")
# Columns that hold features (checked for NaN/inf) and labels (checked for range) per kind.
FEATURE_COLUMNS = {SCENE_GRAPH: ("obj_features",),
                   RELATION_SAMPLE: ("subject_feature", "object_feature", "union_feature")}
OBJECT_LABEL_COLUMNS = {SCENE_GRAPH: ("labels",), RELATION_SAMPLE: ("subject", "object")}
PREDICATE_LABEL_COLUMNS = {SCENE_GRAPH: (), RELATION_SAMPLE: ("predicate",)}
# Object/predicate labels are 1-based in scene graphs (0 = background) and 0-based in relation samples.
LABEL_BASE = {SCENE_GRAPH: 1, RELATION_SAMPLE: 0}


def _ftype(dtype: str) -> pa.DataType:
    if dtype == "float16":
        return pa.float16()
    if dtype == "float32":
        return pa.float32()
    raise ValueError(f"feature dtype {dtype!r} not supported (expected float16 or float32)")


def scene_graph_schema(feature_dim: int, dtype: FeatureDType = "float32", detections: bool = False) -> pa.Schema:
    """Schema of per-image scene graphs with `feature_dim`-d object features (and, with `detections`, the
    image's detected boxes and their features of the same dim)."""
    f = _ftype(dtype)
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4)), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        pa.field("obj_features", pa.list_(pa.list_(f, feature_dim)), nullable=False),
        pa.field("rels", pa.list_(pa.list_(pa.int32(), 3)), nullable=False),
        pa.field("rel_fine", pa.list_(pa.int32()), nullable=False),
    ]
    if detections:
        fields += [pa.field("det_boxes", pa.list_(pa.list_(pa.float32(), 4)), nullable=False),
                   pa.field("det_features", pa.list_(pa.list_(f, feature_dim)), nullable=False)]
    return _with_meta(pa.schema(fields), SCENE_GRAPH, {"feature": feature_dim}, dtype)


def relation_sample_schema(feature_dim: int, dtype: FeatureDType = "float32") -> pa.Schema:
    """Schema of per-relation samples with subject/object/union features of `feature_dim` dims."""
    f = _ftype(dtype)
    fields = [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("subject", pa.int32(), nullable=False),
        pa.field("object", pa.int32(), nullable=False),
        pa.field("predicate", pa.int32(), nullable=False),
        pa.field("subject_box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("object_box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("subject_feature", pa.list_(f, feature_dim), nullable=False),
        pa.field("object_feature", pa.list_(f, feature_dim), nullable=False),
        pa.field("union_feature", pa.list_(f, feature_dim), nullable=False),
    ]
    return _with_meta(pa.schema(fields), RELATION_SAMPLE, {"feature": feature_dim}, dtype)


def schema_for(kind: str, feature_dim: int, dtype: FeatureDType = "float32", detections: bool = False) -> pa.Schema:
    """Schema of record `kind` (one of KINDS); `detections` adds the detection columns of a scene-graph store."""
    if kind == SCENE_GRAPH:
        return scene_graph_schema(feature_dim, dtype, detections)
    if detections:
        raise ValueError(f"detections are columns of {SCENE_GRAPH!r} stores, not of {kind!r}")
    if kind == RELATION_SAMPLE:
        return relation_sample_schema(feature_dim, dtype)
    raise ValueError(f"unknown record kind {kind!r} (expected one of {KINDS})")


def _with_meta(schema: pa.Schema, kind: str, dims: dict, dtype: str) -> pa.Schema:
    return schema.with_metadata({META_KIND: kind.encode(), META_VERSION: str(SCHEMA_VERSION).encode(),
                                 META_DIMS: json.dumps(dims).encode(), META_DTYPE: dtype.encode()})
