"""Box geometry features of objects and subject-object pairs, shared by all relation predictors."""
from __future__ import annotations

import torch

OBJECT_GEOMETRY_DIM = 5
PAIR_GEOMETRY_DIM = 2 * OBJECT_GEOMETRY_DIM + 7
_MIN_SIDE = 1.0  # pixels: degenerate boxes are widened to this so ratios and logs stay finite


def object_geometry(boxes: torch.Tensor, obj_to_img: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """(N, 5): box corners divided by image width/height, and box area over image area."""
    wh = image_sizes[obj_to_img].clamp(min=_MIN_SIDE)
    scale = torch.cat([wh, wh], 1)
    norm = boxes / scale
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=_MIN_SIDE)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=_MIN_SIDE)
    return torch.cat([norm, (w * h / (wh[:, 0] * wh[:, 1]))[:, None]], 1)


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(R,) IoU of row-aligned xyxy boxes `a` and `b` (continuous coordinates)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def pair_geometry(boxes: torch.Tensor, obj_to_img: torch.Tensor, image_sizes: torch.Tensor,
                  pairs: torch.Tensor) -> torch.Tensor:
    """(R, 17): both boxes' object geometry, centre deltas and log size ratios in subject units, IoU,
    and the centre offset in image units."""
    og = object_geometry(boxes, obj_to_img, image_sizes)
    s, o = pairs[:, 0], pairs[:, 1]
    bs, bo = boxes[s], boxes[o]
    ws = (bs[:, 2] - bs[:, 0]).clamp(min=_MIN_SIDE)
    hs = (bs[:, 3] - bs[:, 1]).clamp(min=_MIN_SIDE)
    wo = (bo[:, 2] - bo[:, 0]).clamp(min=_MIN_SIDE)
    ho = (bo[:, 3] - bo[:, 1]).clamp(min=_MIN_SIDE)
    dx = (bo[:, 0] + bo[:, 2] - bs[:, 0] - bs[:, 2]) / 2
    dy = (bo[:, 1] + bo[:, 3] - bs[:, 1] - bs[:, 3]) / 2
    wh = image_sizes[obj_to_img[s]].clamp(min=_MIN_SIDE)
    rel = torch.stack([dx / ws, dy / hs, torch.log(wo / ws), torch.log(ho / hs), pair_iou(bs, bo),
                       dx / wh[:, 0], dy / wh[:, 1]], 1)
    return torch.cat([og[s], og[o], rel], 1)
