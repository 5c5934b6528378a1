"""Box and union-box RoI features from a torchvision backbone (ResNet-FPN or VGG16 conv5) + a two-layer head.

The structure mirrors torchvision's Faster R-CNN (`backbone.body`, `backbone.fpn`, MultiScaleRoIAlign,
`head.fc6`/`head.fc7`), so a local torchvision detector checkpoint (`fasterrcnn_resnet50_fpn` state
dict) loads whole; ImageNet classification weights (resnet*/vgg16 .pth) fill the trunk (and, for VGG16,
fc6/fc7 = the classifier's fc6/fc7, the paper's 4096-d fc7 features). Nothing is ever downloaded;
parts a checkpoint does not fill stay random (seeded: identical in every process) and are listed in
`loaded_parts`. Random init of the whole model needs `allow_random_init=True` (tests), so nobody
computes random features by accident.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

from components.errors import CheckpointError, ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_CHANNELS = {"resnet18": [64, 128, 256, 512], "resnet50": [256, 512, 1024, 2048]}
FPN_LEVELS = ["0", "1", "2", "3"]


@dataclass
class DetectorConfig:
    """Backbone choice, weights and feature sizes of the RoI feature extractor."""

    backbone: Literal["resnet18_fpn", "resnet50_fpn", "vgg16"] = "resnet50_fpn"
    checkpoint: str | None = None
    allow_random_init: bool = False
    hidden_dim: int = field(default=1024, metadata={"range": (1, 65536)})
    feature_dim: int = field(default=1024, metadata={"range": (1, 65536)})
    roi_size: int = field(default=7, metadata={"range": (1, 32)})
    min_side: int = field(default=600, metadata={"range": (16, 4096)})
    max_side: int = field(default=1000, metadata={"range": (16, 8192)})

    def validate(self) -> None:
        """Refuse silent random features and inconsistent sizes."""
        if self.checkpoint is None and not self.allow_random_init:
            raise ConfigError("detector.checkpoint", "no checkpoint given",
                              "a local weights file, or allow_random_init=true for tests")
        if self.min_side > self.max_side:
            raise ConfigError("detector.min_side", f"{self.min_side} > max_side {self.max_side}", "min_side <= max_side")


def _resnet_fpn(name: str) -> BackboneWithFPN:
    """torchvision ResNet trunk (frozen BN, random init) with a 256-channel FPN, as in Faster R-CNN."""
    trunk = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    return BackboneWithFPN(trunk, {f"layer{i + 1}": FPN_LEVELS[i] for i in range(4)}, RESNET_CHANNELS[name], 256)


class BoxFeatureExtractor(nn.Module):
    """Per-box and union-box features: backbone -> RoIAlign -> fc6 -> fc7 (ReLU after each)."""

    def __init__(self, cfg: DetectorConfig, seed: int = 0) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        with torch.random.fork_rng():  # same random init in every process (Ray actors must agree)
            torch.manual_seed(seed)
            self._build(cfg)
        self.loaded_parts = {"backbone": "random", "head": "random"}
        if cfg.checkpoint:
            self.loaded_parts = load_weights(self, Path(cfg.checkpoint))
        self.eval()

    def _build(self, cfg: DetectorConfig) -> None:
        """Create backbone, pooler and head modules."""
        if cfg.backbone == "vgg16":
            self.backbone: nn.Module = torchvision.models.vgg16(weights=None).features[:30]  # conv5_3, stride 16
            in_dim = 512 * cfg.roi_size ** 2
            self.pooler = None
        else:
            self.backbone = _resnet_fpn(cfg.backbone.removesuffix("_fpn"))
            in_dim = 256 * cfg.roi_size ** 2
            self.pooler = MultiScaleRoIAlign(FPN_LEVELS, cfg.roi_size, sampling_ratio=2)
        self.head = nn.Sequential(OrderedDict(fc6=nn.Linear(in_dim, cfg.hidden_dim), relu6=nn.ReLU(),
                                              fc7=nn.Linear(cfg.hidden_dim, cfg.feature_dim), relu7=nn.ReLU()))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def _scale(self, h: int, w: int) -> float:
        """Resize factor: short side to min_side unless the long side would pass max_side."""
        return min(self.cfg.min_side / min(h, w), self.cfg.max_side / max(h, w))

    def _pool(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign of boxes (in resized-image pixels) on one image tensor (1, 3, H, W)."""
        feats = self.backbone(x)
        if self.pooler is None:
            return roi_align(feats, [boxes], self.cfg.roi_size, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
        return self.pooler(feats, [boxes], [tuple(x.shape[-2:])])

    @torch.no_grad()
    def extract(self, image: np.ndarray, boxes: np.ndarray, pairs: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, D) of xyxy pixel `boxes` on an (H, W, 3) uint8 image and (M, D) of the union boxes of `pairs`."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError("image", f"shape {image.shape}", "(H, W, 3) RGB")
        boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        pairs_t = torch.as_tensor(np.asarray(pairs if pairs is not None else np.zeros((0, 2)), dtype=np.int64))
        pairs_t = pairs_t.reshape(-1, 2)
        if pairs_t.numel() and (pairs_t.min() < 0 or pairs_t.max() >= len(boxes_t)):
            raise DataError("pairs", "index outside the boxes", f"indices in [0, {len(boxes_t)})")
        h, w = image.shape[:2]
        s = self._scale(h, w)
        dev = self.mean.device  # the model's device (the image is decoded on the CPU)
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).to(dev).permute(2, 0, 1).float().div(255)
        x = ((x - self.mean) / self.std).unsqueeze(0)
        x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False)
        union = torch.cat([torch.minimum(boxes_t[pairs_t[:, 0], :2], boxes_t[pairs_t[:, 1], :2]),
                           torch.maximum(boxes_t[pairs_t[:, 0], 2:], boxes_t[pairs_t[:, 1], 2:])], dim=1)
        all_boxes = (torch.cat([boxes_t, union]) * s).to(dev)
        if len(all_boxes) == 0:
            d = self.cfg.feature_dim
            return np.zeros((0, d), np.float32), np.zeros((0, d), np.float32)
        out = self.head(self._pool(x, all_boxes).flatten(1)).cpu().numpy()
        return out[: len(boxes_t)], out[len(boxes_t):]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (optionally under 'model'/'state_dict') or .safetensors file."""
    if not path.is_file():
        raise CheckpointError(str(path), "detector checkpoint not found", "a local weights file (never downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(str(path), f"unreadable weights file: {e}", "a torch or safetensors state dict") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(str(path), "not a state dict of tensors", "a mapping name -> tensor")
    return state


def _map_keys(state: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's keys to ours: our own format, torchvision Faster R-CNN, or ImageNet classifiers."""
    if any(k.startswith(("backbone.", "head.")) for k in state):  # ours or Faster R-CNN
        out = {}
        for k, v in state.items():
            if k.startswith("roi_heads.box_head."):
                out["head." + k.removeprefix("roi_heads.box_head.")] = v
            elif k.startswith(("backbone.", "head.")):
                out[k] = v
        return out
    if backbone == "vgg16":
        out = {"backbone." + k.removeprefix("features."): v for k, v in state.items()
               if k.startswith("features.") and int(k.split(".")[1]) < 30}
        for src, dst in (("classifier.0", "head.fc6"), ("classifier.3", "head.fc7")):
            for p in ("weight", "bias"):
                if f"{src}.{p}" in state:
                    out[f"{dst}.{p}"] = state[f"{src}.{p}"]
        return out
    return {"backbone.body." + k: v for k, v in state.items() if not k.startswith("fc.")}


def _modernise(mapped: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop BN step counters and rename pre-0.13 torchvision FPN keys (`inner_blocks.0.weight` -> `.0.0.`)."""
    out = {}
    for k, v in mapped.items():
        if k.endswith("num_batches_tracked"):
            continue
        new = re.sub(r"(fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$", r"\1.0.\2", k)
        out[new if new in own and k not in own else k] = v
    return out


def load_weights(model: BoxFeatureExtractor, path: Path) -> dict[str, str]:
    """Load what `path` provides into `model`; returns which parts came from it and which stayed random."""
    own = model.state_dict()
    mapped = _modernise(_map_keys(_read_state(path), model.cfg.backbone), own)
    bad = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    if not mapped or bad:
        detail = f"keys/shapes not matching {model.cfg.backbone} (e.g. {bad[:3]})" if bad else "no usable keys"
        raise CheckpointError(str(path), detail, f"weights for backbone {model.cfg.backbone!r}, "
                              f"hidden_dim {model.cfg.hidden_dim}, feature_dim {model.cfg.feature_dim}")
    model.load_state_dict(mapped, strict=False)
    parts = {"backbone.body": "backbone", "backbone.fpn": "fpn", "head": "head"}
    if model.cfg.backbone == "vgg16":
        parts = {"backbone": "backbone", "head": "head"}
    out = {}
    for prefix, name in parts.items():
        keys = [k for k in own if k.startswith(prefix + ".")]
        filled = sum(k in mapped for k in keys)
        out[name] = "checkpoint" if filled == len(keys) else ("random" if filled == 0 else "partial")
    return out
