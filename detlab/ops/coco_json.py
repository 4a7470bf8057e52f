"""The native fast path for reading a COCO results file into columns (see ``csrc/coco_json.cpp``).

Not a detection op: it lives here because the native library is detlab's one compiled module. It reads only what
it can read exactly as ``detlab.eval.cocojson``'s msgspec decoder would, and returns None for anything else, so that
the caller decodes that file with msgspec (same values, or an error naming the entry and field).
"""

from __future__ import annotations

import torch

from ._backend import backend


def read_coco_results_columns(data: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """A results file's bytes (uint8[B]) -> (image_id int64[D], category_id int64[D], boxes_xywh float64[D, 4],
    scores float64[D]) in file order, or None when the native reader cannot read it (malformed JSON, numbers as
    strings, a missing or repeated field, ...) or is not in use (``DETLAB_OPS=torchvision``)."""
    if backend().name != "native":
        return None
    *columns, stopped_at = torch.ops.detlab._read_coco_results(data)
    return None if stopped_at >= 0 else tuple(columns)
