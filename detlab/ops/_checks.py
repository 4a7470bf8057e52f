"""Argument checks of the public ops: a wrong type raises TypeError, a wrong shape, value or
device raises ValueError, and the message names the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


def tensor(name: str, value, *, shape: str | None = None, ndim: int | None = None,
           last_dim: int | None = None, floating: bool = False, integer: bool = False) -> Tensor:
    """Check that `value` is a tensor of the given rank, last dimension and dtype kind.
    `shape` is how the message spells the expected shape, e.g. "[N, 4]"."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    expected = shape or f"{ndim}-D"
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have shape {expected}, got {list(value.shape)}")
    if last_dim is not None and value.shape[-1] != last_dim:
        raise ValueError(f"{name} must have shape {expected}, got {list(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating point dtype, got {value.dtype}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    return value


def length(name: str, value: Tensor, expected: int, of: str) -> None:
    if value.shape[0] != expected:
        raise ValueError(f"{name} must have {expected} rows, one per row of {of}, got {value.shape[0]}")


def same_device(name: str, value: Tensor, ref_name: str, ref: Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}: "
                         f"move them to the same device")


def same_dtype(name: str, value: Tensor, ref_name: str, ref: Tensor) -> None:
    """Mixed floating dtypes are accepted only under autocast, which casts them to float32."""
    if value.dtype != ref.dtype and not torch.is_autocast_enabled(ref.device.type):
        raise TypeError(f"{name} has dtype {value.dtype} but {ref_name} has dtype {ref.dtype}: "
                        f"they must match (or run under torch.autocast)")


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> float:
    """A finite real number in [low, high] (or (low, high] with low_open)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    return value


def integer(name: str, value, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def output_size(value) -> tuple[int, int]:
    """int or (height, width), both positive."""
    pair = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(pair, Sequence) or len(pair) != 2 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair):
        raise TypeError(f"output_size must be an int or a pair of ints (height, width), got {value!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"output_size must be positive, got {tuple(pair)}")
    return int(pair[0]), int(pair[1])


def feature_map(name: str, value) -> Tensor:
    return tensor(name, value, shape="[B, C, H, W]", ndim=4, floating=True)


def boxes_to_rois(boxes, input: Tensor, name: str = "boxes") -> Tensor:
    """Tensor[K, 5] (batch index, x1, y1, x2, y2), or a list of Tensor[K_i, 4] (one per image),
    checked against `input` [B, C, H, W] and returned as Tensor[K, 5]."""
    batch = input.shape[0]
    if isinstance(boxes, Tensor):
        rois = tensor(name, boxes, shape="[K, 5] or a list of [K_i, 4]", ndim=2, last_dim=5, floating=True)
        same_device(name, rois, "input", input)
        same_dtype(name, rois, "input", input)
        if rois.numel() and not torch.compiler.is_compiling():
            index = rois[:, 0]
            bad = ~((index >= 0) & (index < batch))  # also catches NaN
            if bool(bad.any()):  # one device sync on CUDA
                raise ValueError(f"{name}[:, 0] holds batch indices, which must lie in [0, {batch}) for an input "
                                 f"of batch size {batch}; got {index[bad][:5].tolist()} at rows "
                                 f"{bad.nonzero()[:5, 0].tolist()}")
        return rois
    if not isinstance(boxes, (list, tuple)) or not all(isinstance(b, Tensor) for b in boxes):
        raise TypeError(f"{name} must be a Tensor[K, 5] or a list of Tensor[K_i, 4], got {type(boxes).__name__}")
    if len(boxes) > batch:
        raise ValueError(f"{name} has {len(boxes)} tensors, one per image, but input has batch size {batch}")
    for i, b in enumerate(boxes):
        tensor(f"{name}[{i}]", b, shape="[K_i, 4]", ndim=2, last_dim=4, floating=True)
        same_device(f"{name}[{i}]", b, "input", input)
        same_dtype(f"{name}[{i}]", b, "input", input)
    if not boxes:
        return input.new_zeros((0, 5))
    concat = torch.cat(list(boxes), dim=0)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, concat], dim=1)
