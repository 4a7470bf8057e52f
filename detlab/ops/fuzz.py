"""Seeded fuzz cases for ``detlab.ops`` against torchvision, shared by ``tests/ops/test_fuzz.py``
(a few hundred cases) and ``tools/fuzz_ops.py`` (any number).

Every case draws its inputs from its own generator, seeded by (seed, op, case index), so a
mismatch found among thousands of cases replays alone: ``run_case(op, seed, index, device)``.
The cases mix the shapes and values that break kernels: 0 and 1 boxes or RoIs, 1x1 and odd
feature maps, odd channel counts, NaN / inf scores, coordinates and pixels, zero-size, inverted,
huge (1e7) and tiny (even subnormal-area) boxes, many equal scores, integer coordinates (IoUs and
sample positions exactly at a threshold or a pixel edge), IoU thresholds 0 and 1, and
non-contiguous views.

What a case must match (detlab's promise, see the ops' docstrings):
  * nms: the indices of ``torchvision.ops.nms``, exactly, in the same order.
  * batched_nms: those of ``torchvision.ops.boxes._batched_nms_vanilla``, the per-category path
    that ``torchvision.ops.batched_nms`` takes for large inputs; and, where its small-input
    path (boxes offset by category) is exact - finite integer coordinates, float32/64, distinct
    scores - those of ``torchvision.ops.batched_nms`` itself.
  * roi_align / multiscale_roi_align: torchvision's output and gradient of the features within
    ``TOLERANCES``. A RoI with a NaN or infinite coordinate pools zeros (torchvision's result
    for it is undefined: zeros, NaN or a crash), and so does, under aligned=True with adaptive
    sampling, one of negative width or height (torchvision's CUDA kernel gives zeros, its CPU
    kernel fails to allocate): the reference pools the other RoIs only.

Reference dtype: the case's dtype where torchvision accepts it on the device (probed, not
assumed: on the CPU it has no float16 / bfloat16 nms and no bfloat16 roi_align), else
torchvision's float32 kernel on the same rounded values. For nms that is only the same answer
when no rounding can tell the two apart, so such cases use integer coordinates that every
dtype holds exactly (every width and area is then exact) and float32-exact thresholds.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor
from torchvision.ops import boxes as tv_boxes
from torchvision.ops import poolers as tv_poolers

from .nms import batched_nms, nms
from .roi_align import multiscale_roi_align, roi_align
from .testing import clustered_boxes, dense_boxes, random_boxes

OPS = ("nms", "batched_nms", "roi_align", "multiscale_roi_align")

class Tolerance(NamedTuple):
    """|ours - reference| <= atol + rtol * |reference| + rtol_sum * magnitude, where magnitude
    is, for a gradient, the sum of the absolute values of the contributions it adds up."""

    atol: float
    rtol: float
    rtol_sum: float

    def rounded_once(self, unit_roundoff: float) -> "Tolerance":
        """This tolerance, then one rounding to a dtype of that unit roundoff u:
        |round(o) - r| <= u |o| + |o - r| <= u |r| + (1 + u) |o - r|."""
        grow = 1 + unit_roundoff
        return Tolerance(self.atol * grow, self.rtol * grow + unit_roundoff, self.rtol_sum * grow)


# RoIAlign tolerances.
#  * float64 / float32: torchvision's sample positions and weights are reproduced bit for bit
#    (roi_align_geometry.h); only the order of the sums differs. The forward pass averages a
#    few weighted values: 1e-5 (the promise), plus 1e-6 relative. A gradient pixel of a small
#    map gathers up to tens of thousands of contributions of both signs (1x1 map, 27 RoIs of
#    7 x 7 bins: 48000); two float32 sums of them in different orders differ by ulps of the sum
#    of their absolute values, not of the (possibly cancelled) result: 2^-18 (3.8e-6) of that
#    sum; the fuzz measured up to 1.3e-6.
#  * float16 / bfloat16: detlab samples and sums in float32 and rounds the result once, so
#    against torchvision's float32 kernel on the same rounded inputs it may differ by the
#    float32 tolerance plus one rounding: half an ulp, 2^-11 (float16) or 2^-8 (bfloat16)
#    relative. That is the asserted reference for the half dtypes.
#    Where torchvision also accepts the half dtype (its CPU kernel takes float16), its
#    float16 result is compared and reported too, not asserted: that kernel rounds every
#    intermediate to float16 - sample positions (1/32 px at 64 px), the adaptive sampling
#    grid, each partial sum of the forward and each += of the gradient - so its distance to
#    detlab is its own error (up to whole units on sums of many RoIs), not detlab's.
FLOAT32 = Tolerance(atol=1e-5, rtol=1e-6, rtol_sum=2.0**-18)
TOLERANCES = {
    torch.float64: Tolerance(1e-12, 1e-12, 1e-12),
    torch.float32: FLOAT32,
    torch.float16: FLOAT32.rounded_once(2.0**-11),
    torch.bfloat16: FLOAT32.rounded_once(2.0**-8),
}

NONFINITE = (math.nan, math.inf, -math.inf)


# ---------------------------------------------------------------------------------------------
# Small seeded draws


def case_generator(seed: int, op: str, index: int) -> torch.Generator:
    """The generator of case `index` of `op` under `seed`: stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}/{op}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def _pick(g: torch.Generator, options, weights=None):
    if weights is None:
        return options[int(torch.randint(len(options), (), generator=g))]
    return options[int(torch.multinomial(torch.tensor(weights, dtype=torch.float), 1, generator=g))]


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def _log_uniform_int(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high], log-uniform (small sizes as likely as large ones)."""
    value = math.exp(float(torch.rand((), generator=g)) * math.log(high + 1 - low + 1))
    return min(high, low + int(value) - 1)


def _split(g: torch.Generator, n: int, parts: int) -> list[int]:
    """n items dealt at random into `parts` groups."""
    if parts == 1:
        return [n]
    return torch.bincount(torch.randint(parts, (n,), generator=g), minlength=parts).tolist()


def _view(t: Tensor, g: torch.Generator) -> tuple[Tensor, str]:
    """`t` (on its device) as a randomly chosen layout with the same values: contiguous, a
    row-strided or column-strided slice of a bigger buffer, or a transposed buffer."""
    kinds = ["contiguous", "row-strided"] + (["column-strided", "transposed"] if t.dim() >= 2 else [])
    kind = _pick(g, kinds)
    if kind == "contiguous":
        return t.contiguous(), kind
    if kind == "transposed":  # last two dims stored in swapped order: strides (.., 1, rows)
        return t.transpose(-1, -2).contiguous().transpose(-1, -2), kind
    if kind == "row-strided":
        buffer = t.new_zeros((2 * t.shape[0], *t.shape[1:]))
        buffer[::2] = t
        return buffer[::2], kind
    buffer = t.new_zeros((*t.shape[:-1], 2 * t.shape[-1]))
    buffer[..., 1::2] = t
    return buffer[..., 1::2], kind


@functools.cache
def torchvision_accepts(op: str, device: str, dtype: torch.dtype) -> bool:
    """Whether torchvision's kernel for `op` ("nms" or "roi_align") runs on `device` in `dtype`."""
    try:
        if op == "nms":
            torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1]], dtype=dtype, device=device),
                                torch.ones(1, dtype=dtype, device=device), 0.5)
        else:
            x = torch.ones(1, 1, 2, 2, dtype=dtype, device=device, requires_grad=True)
            rois = torch.tensor([[0.0, 0, 0, 1, 1]], dtype=dtype, device=device)
            torchvision.ops.roi_align(x, rois, 1).sum().backward()
    except (RuntimeError, NotImplementedError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Boxes and scores


def _integer_boxes(n: int, g: torch.Generator, limit: int) -> Tensor:
    """Tensor[n, 4] float64 of integers in [0, limit]: clusters of near-duplicates and random
    boxes, some of zero size, some inverted."""
    objects = torch.randint(0, limit * 3 // 4, (max(1, n // 6), 2), generator=g)
    objects = torch.cat([objects, objects + torch.randint(0, limit // 4 + 1, objects.shape, generator=g)], 1)
    boxes = objects[torch.randint(len(objects), (n,), generator=g)]
    boxes = boxes + torch.randint(-3, 4, (n, 4), generator=g)
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    return _deform(boxes.clamp(0, limit).double(), g)


def _deform(boxes: Tensor, g: torch.Generator) -> Tensor:
    """Make a few boxes zero-width / zero-height (x2 = x1) and a few inverted (x2 < x1)."""
    n = boxes.shape[0]
    for _ in range(2):
        rows = torch.rand(n, generator=g) < 0.05
        axis = int(torch.randint(2, (), generator=g))
        boxes[rows, 2 + axis] = boxes[rows, axis]
        rows = torch.rand(n, generator=g) < 0.05
        boxes[rows, axis], boxes[rows, 2 + axis] = boxes[rows, 2 + axis].clone(), boxes[rows, axis].clone()
    return boxes


def _clustered(scale: float, offset: float):
    return lambda n, g: clustered_boxes(n, g, clusters=max(1, n // 8)).double() * scale + offset


# Each kind draws Tensor[n, 4] float64 boxes.
BOX_KINDS = {
    "random": lambda n, g: random_boxes(n, g).double(),
    "clustered": _clustered(1.0, 0.0),
    "dense": lambda n, g: dense_boxes(n, g).double(),
    "integer": lambda n, g: _integer_boxes(n, g, 64),
    "huge": _clustered(1e4, -3e6),       # coordinates up to 1e7: few float32 bits below the pixel
    "tiny": _clustered(1e-6, 0.5),       # sides of ~1e-5 pixel
    # sides of ~1e-22 (float32 areas are subnormal) or ~1e-157 (float64 ones are)
    "underflow": lambda n, g: _clustered(_pick(g, [2.0**-80, 2.0**-530]), 0.0)(n, g),
    "degenerate": lambda n, g: _deform(random_boxes(n, g).double(), g),
}


def _boxes(n: int, g: torch.Generator, exact_limit: int | None) -> tuple[Tensor, str]:
    """Tensor[n, 4] float64 from a random mix of BOX_KINDS (integers only if `exact_limit`)."""
    if exact_limit is not None:
        return _integer_boxes(n, g, exact_limit), "integer"
    names = list(BOX_KINDS)
    chosen = [names[i] for i in torch.randperm(len(names), generator=g)[:_pick(g, [1, 1, 2, 3])].tolist()]
    parts = [BOX_KINDS[name](k, g) for name, k in zip(chosen, _split(g, n, len(chosen)))]
    boxes = torch.cat(parts)[torch.randperm(n, generator=g)] if n else torch.zeros(0, 4, dtype=torch.float64)
    return boxes, "+".join(chosen)


def _poison(t: Tensor, g: torch.Generator, fraction: float) -> Tensor:
    """Set about `fraction` of the entries of `t` (at least one) to NaN, inf or -inf."""
    if t.numel() == 0:
        return t
    flat = t.reshape(-1).clone()
    count = max(1, int(fraction * flat.numel()))
    where = torch.randint(flat.numel(), (count,), generator=g)
    flat[where] = torch.tensor(NONFINITE, dtype=t.dtype)[torch.randint(3, (count,), generator=g)]
    return flat.reshape(t.shape)


def _scores(n: int, g: torch.Generator) -> tuple[Tensor, str]:
    kind = _pick(g, ["uniform", "tied", "equal", "integer"], [4, 3, 1, 1])
    if kind == "uniform":
        scores = torch.rand(n, generator=g, dtype=torch.float64)
    elif kind == "tied":
        scores = (torch.rand(n, generator=g, dtype=torch.float64) * _pick(g, [2, 3, 10])).floor() / 10
    elif kind == "equal":
        scores = torch.full((n,), 0.5, dtype=torch.float64)
    else:
        scores = torch.randint(-2, 3, (n,), generator=g).double()
    return scores, kind


def _threshold(g: torch.Generator, float_exact: bool) -> float:
    t = _pick(g, [0.0, 1.0, 0.5, 0.25, 1 / 3, 0.7, None, None, None])
    t = float(torch.rand((), generator=g, dtype=torch.float64)) if t is None else t
    # torchvision's CUDA kernel compares with float(threshold), its CPU kernel with the double
    return float(torch.tensor(t, dtype=torch.float32)) if float_exact else t


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class CaseResult:
    """One case: `mismatch` says what differs (None: nothing); `errors` maps
    (dtype name, "forward" | "backward", reference kind) -> (max abs error, max error / tolerance)."""

    description: str
    mismatch: str | None = None
    errors: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)


@dataclass
class OpReport:
    op: str
    device: str
    cases: int = 0
    mismatches: int = 0
    first_mismatches: list[str] = field(default_factory=list)  # up to 5, with their case index
    worst: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, index: int, result: CaseResult) -> None:
        self.cases += 1
        if result.mismatch is not None:
            self.mismatches += 1
            if len(self.first_mismatches) < 5:
                self.first_mismatches.append(f"case {index} ({result.description}): {result.mismatch}")
        for key, (abs_error, ratio) in result.errors.items():
            old = self.worst.get(key, (0.0, 0.0))
            self.worst[key] = (max(old[0], abs_error), max(old[1], ratio))


def _error(ours: Tensor, expected: Tensor, tolerance: Tolerance,
           magnitude: Tensor | None = None) -> tuple[float, float]:
    """(max |ours - expected|, max of that over the tolerance); a NaN or an infinity where the
    other has another value counts as an infinite error."""
    ours, expected = ours.detach().cpu().double(), expected.detach().cpu().double()
    if ours.shape != expected.shape:
        return math.inf, math.inf
    if ours.numel() == 0:
        return 0.0, 0.0
    diff = (ours - expected).abs_()
    diff[(ours == expected) | (ours.isnan() & expected.isnan())] = 0.0  # equal infinities too
    diff.nan_to_num_(nan=math.inf)
    bound = expected.abs_().nan_to_num_(nan=0.0).mul_(tolerance.rtol).add_(tolerance.atol)
    if magnitude is not None:
        bound += magnitude.detach().cpu().double() * tolerance.rtol_sum
    return float(diff.max()), float((diff / bound).max())


def _same_indices(ours: Tensor, expected: Tensor) -> str | None:
    ours, expected = ours.cpu(), expected.cpu()
    if ours.dtype != torch.int64:
        return f"returned dtype {ours.dtype}, not int64"
    if torch.equal(ours, expected):
        return None
    n = min(len(ours), len(expected))
    differ = (ours[:n] != expected[:n]).nonzero()
    at = int(differ[0]) if len(differ) else n
    return (f"kept {len(ours)} vs torchvision's {len(expected)}; first difference at position {at}: "
            f"{ours[at:at + 3].tolist()} vs {expected[at:at + 3].tolist()}")


# ---------------------------------------------------------------------------------------------
# NMS cases


def _nms_inputs(g: torch.Generator, device: str):
    """Random nms inputs: (boxes, scores, threshold, reference dtype, description)."""
    dtype = _pick(g, [torch.float32, torch.float64, torch.float16, torch.bfloat16], [6, 1, 2, 2])
    ref_dtype = dtype if torchvision_accepts("nms", device, dtype) else torch.float32
    # integers every dtype holds exactly, differences included: bfloat16 up to 256, float16 2048
    exact_limit = None if ref_dtype == dtype else (128 if dtype == torch.bfloat16 else 1024)
    n = _pick(g, [0, 1, 2, None, None, None, None])
    n = _log_uniform_int(g, 2, _pick(g, [60, 600, 1500])) if n is None else n
    boxes, box_kind = _boxes(n, g, exact_limit)
    scores, score_kind = _scores(n, g)
    if _chance(g, 0.25):
        boxes, box_kind = _poison(boxes, g, _pick(g, [0.01, 0.1])), box_kind + "+nonfinite"
    if _chance(g, 0.2):
        scores, score_kind = _poison(scores, g, _pick(g, [0.01, 0.1])), score_kind + "+nonfinite"
    threshold = _threshold(g, float_exact=dtype != ref_dtype or dtype in (torch.float16, torch.bfloat16))
    description = f"{str(dtype)[6:]}, {n} boxes {box_kind}, scores {score_kind}, iou_threshold {threshold:.6g}"
    return boxes.to(dtype), scores.to(dtype), threshold, ref_dtype, description


def _nms_case(g: torch.Generator, device: str) -> CaseResult:
    boxes, scores, threshold, ref_dtype, description = _nms_inputs(g, device)
    boxes_view, box_layout = _view(boxes.to(device), g)
    scores_view, score_layout = _view(scores.to(device), g)
    result = CaseResult(f"{description}, boxes {box_layout}, scores {score_layout}")
    expected = torchvision.ops.nms(boxes.to(device, ref_dtype), scores.to(device, ref_dtype), threshold)
    result.mismatch = _same_indices(nms(boxes_view, scores_view, threshold), expected)
    return result


def _batched_case(g: torch.Generator, device: str) -> CaseResult:
    boxes, scores, threshold, ref_dtype, description = _nms_inputs(g, device)
    n = boxes.shape[0]
    classes = _pick(g, [1, 2, 5, 30])
    first = _pick(g, [0, -3, 10**6])  # negative and large category ids are ids like any other
    idxs = torch.randint(first, first + classes, (n,), generator=g, dtype=_pick(g, [torch.int64, torch.int32]))
    boxes_view, box_layout = _view(boxes.to(device), g)
    scores_view, score_layout = _view(scores.to(device), g)
    idxs_view, idx_layout = _view(idxs.to(device), g)
    result = CaseResult(f"{description}, {classes} categories from {first}, boxes {box_layout}, "
                        f"scores {score_layout}, idxs {idx_layout}")
    ours = batched_nms(boxes_view, scores_view, idxs_view, threshold)
    ref_boxes, ref_scores, ref_idxs = boxes.to(device, ref_dtype), scores.to(device, ref_dtype), idxs.to(device)
    result.mismatch = _same_indices(ours, tv_boxes._batched_nms_vanilla(ref_boxes, ref_scores, ref_idxs, threshold))
    if result.mismatch is None and _offset_trick_is_exact(boxes, scores, idxs):
        public = _same_indices(ours, torchvision.ops.batched_nms(ref_boxes, ref_scores, ref_idxs, threshold))
        result.mismatch = public and f"vs torchvision.ops.batched_nms: {public}"
    return result


def _offset_trick_is_exact(boxes: Tensor, scores: Tensor, idxs: Tensor) -> bool:
    """Whether torchvision.ops.batched_nms's small-input path (boxes + category * (max + 1))
    computes the per-category answer exactly: float32/64 integer coordinates whose offsets stay
    exact, and distinct scores (its one stable sort orders ties unlike the per-category path's
    final unstable sort)."""
    if boxes.dtype not in (torch.float32, torch.float64) or boxes.numel() == 0:
        return False
    finite_integers = bool(boxes.isfinite().all()) and bool((boxes == boxes.round()).all())
    span = (boxes.abs().max() + 1) * (idxs.abs().max().double() + 1) + boxes.abs().max()
    return finite_integers and float(span) < 2**24 and len(scores.unique()) == len(scores)


# ---------------------------------------------------------------------------------------------
# RoIAlign cases


def _roi_boxes(k: int, g: torch.Generator, height: int, width: int, scale: float, adaptive: bool,
               limit: float) -> Tensor:
    """Tensor[k, 4] float64 RoIs in image pixels (feature pixels / scale): inside the map,
    over its edges, beyond it, zero-size, inverted, integer-valued, and - with a fixed
    sampling ratio only, since an adaptive one samples ceil(size / output) points per bin
    along each axis - huge (1e6 px, at most `limit`)."""
    kind = _pick(g, ["spread", "integer", "huge"] if not adaptive else ["spread", "integer"])
    if kind == "huge":
        centres = (torch.rand(k, 2, generator=g, dtype=torch.float64) - 0.5) * 2e6
        sizes = torch.rand(k, 2, generator=g, dtype=torch.float64) * 4e6
    else:
        extent = torch.tensor([width, height], dtype=torch.float64)
        centres = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3) * extent
        sizes = torch.rand(k, 2, generator=g, dtype=torch.float64) ** 2 * 1.5 * extent + 0.05
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1) / scale
    if kind == "integer":
        boxes = boxes.round()
    return _deform(boxes.clamp(-limit, limit), g)


def _features(g: torch.Generator, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """Tensor[B, C, H, W] of normal values, a tenth of them with 1% NaN / inf pixels. Pixel
    (0, 0) stays finite: torchvision's CPU kernel multiplies it by the zero weight of every
    sampling point off the map, spreading a NaN there into bins that never sample it, which
    its CUDA kernel and detlab do not."""
    features = torch.randn(shape, generator=g, dtype=torch.float64)
    if _chance(g, 0.1):
        features = _poison(features, g, 0.01)
        features[..., 0, 0] = features[..., 0, 0].nan_to_num(0.0, 0.0, 0.0)
    return features.to(dtype)


def _grad_out(g: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    # multiples of 1/64 in [-1, 1]: exact in every dtype, so every run sees the same gradient
    return (torch.randint(-64, 65, shape, generator=g, dtype=torch.float64) / 64).to(dtype)


def _forward_backward(fn, leaves: list[Tensor], grad_out: Tensor):
    """Output of fn(*leaves) and the gradients of the leaves for `grad_out`."""
    leaves = [leaf.detach().clone().requires_grad_(True) for leaf in leaves]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.device, out.dtype), allow_unused=True)
    return out.detach(), [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, grads)]


def _compare(result: CaseResult, dtype: torch.dtype, ref_kind: str, tolerance, ours, expected,
             magnitudes: list[Tensor]) -> None:
    """Record the forward and backward errors of (output, grads) against the expected ones,
    gradients relative to `magnitudes`; a tolerance of None records without asserting."""
    (out, grads), (ref_out, ref_grads) = ours, expected
    name = str(dtype)[6:]
    checks = [("forward", out, ref_out, None)] + [("backward", *z) for z in zip(grads, ref_grads, magnitudes)]
    for what, a, b, magnitude in checks:
        abs_error, ratio = _error(a, b, tolerance or Tolerance(1.0, 0.0, 0.0), magnitude)
        ratio = ratio if tolerance else 0.0
        old = result.errors.get((name, what, ref_kind), (0.0, 0.0))
        result.errors[(name, what, ref_kind)] = (max(old[0], abs_error), max(old[1], ratio))
        if tolerance and not ratio <= 1 and result.mismatch is None:
            result.mismatch = f"{what} differs from torchvision ({ref_kind}) by {abs_error:.3g}, over {tolerance}"
    if out.dtype != dtype:
        result.mismatch = result.mismatch or f"output dtype {out.dtype}, not {dtype}"


def _check_roi_op(result: CaseResult, dtype: torch.dtype, device: str, ours, run_reference, grad_out: Tensor,
                  pooled: Tensor) -> None:
    """Compare `ours` (output, grads) with torchvision's. run_reference(dtype, grad_out rows)
    pools the RoIs where `pooled` is true; the others must be zero.

    The magnitude of the gradients (see TOLERANCES) is the gradient for |grad_out|, computed
    in float64: the bilinear weights are non-negative, so it sums the absolute contributions."""
    _, magnitudes = run_reference(torch.float64, grad_out[pooled].abs())
    for ref_kind, ref_dtype, tolerance in _references(device, dtype):
        out, grads = run_reference(ref_dtype, grad_out[pooled])
        expected_out = out.new_zeros((len(pooled), *out.shape[1:]))
        expected_out[pooled.to(out.device)] = out
        _compare(result, dtype, ref_kind, tolerance, ours, (expected_out, grads), magnitudes)


def _references(device: str, dtype: torch.dtype):
    """[(kind, reference dtype, tolerance or None)] to compare a RoIAlign case in `dtype` with."""
    if dtype in (torch.float32, torch.float64):
        return [("same dtype", dtype, TOLERANCES[dtype])]
    refs = [("float32", torch.float32, TOLERANCES[dtype])]
    if torchvision_accepts("roi_align", device, dtype):
        refs.append(("same dtype, reported", dtype, None))
    return refs


def _roi_align_case(g: torch.Generator, device: str) -> CaseResult:
    dtype = _pick(g, [torch.float32, torch.float64, torch.float16, torch.bfloat16], [6, 1, 2, 2])
    batch, channels = _pick(g, [1, 1, 2, 3]), _pick(g, [1, 2, 3, 5, 7, 16, 31, 33, 64, 65])
    height, width = (_pick(g, [1, 1, 2, 3, 8, 13, 32, 64]) for _ in range(2))
    output_size = _pick(g, [1, 2, 3, 7, (1, 4), (5, 2), (7, 3)])
    scale = _pick(g, [1.0, 0.5, 0.25, 1 / 16, 1 / 32, 0.3, 2.0])
    sampling_ratio, aligned = _pick(g, [-1, 0, 1, 2, 3, 4]), _chance(g, 0.5)
    k = _pick(g, [0, 1, None, None])
    k = _log_uniform_int(g, 2, 40) if k is None else k
    # float16 corners far enough below its largest value that corner * scale and the width
    # stay finite in float16 too: torchvision's float16 kernel computes them in float16
    limit = torch.finfo(dtype).max / 4 / max(1.0, scale)
    boxes = _roi_boxes(k, g, height, width, scale, adaptive=sampling_ratio <= 0, limit=limit)
    if _chance(g, 0.2):
        boxes = _poison(boxes, g, _pick(g, [0.02, 0.2]))
    # sorted by image, so that the list form (one tensor per image) keeps the row order
    image = torch.randint(batch, (k,), generator=g).sort().values.double()
    as_list = _chance(g, 0.3)
    features = _features(g, dtype, (batch, channels, height, width))
    bins = (output_size,) * 2 if isinstance(output_size, int) else output_size
    grad_out = _grad_out(g, (k, channels, *bins), dtype)
    layout = _pick(g, ["contiguous", "channels-last", "channel-strided", "transposed"])
    result = CaseResult(f"{str(dtype)[6:]}, features {[batch, channels, height, width]} {layout}, {k} rois"
                        f"{' as a list' if as_list else ''}, output {output_size}, scale {scale:g}, "
                        f"sampling_ratio {sampling_ratio}, aligned {aligned}")
    rounded = boxes.to(dtype).double()  # what every implementation sees

    def run(fn, run_dtype, rows, grad):
        rois = _roi_argument(rounded[rows], image[rows], batch, as_list, run_dtype, device)
        return _forward_backward(
            lambda x: fn(_feature_view(x, layout), rois, output_size, scale, sampling_ratio, aligned),
            [features.to(device, run_dtype)], grad)

    ours = run(roi_align, dtype, torch.ones(k, dtype=torch.bool), grad_out)
    # RoIs that detlab promises to pool as zeros and torchvision cannot pool: a NaN or
    # infinite corner (undefined there) and, under aligned=True with adaptive sampling, a
    # negative width or height (no sampling point: torchvision's CUDA kernel gives zeros, its
    # CPU kernel fails to allocate). The reference pools the others.
    inverted = (rounded[:, 2] < rounded[:, 0]) | (rounded[:, 3] < rounded[:, 1])
    pooled = rounded.isfinite().all(1) & ~(inverted & aligned & (sampling_ratio <= 0))
    _check_roi_op(result, dtype, device, ours,
                  lambda run_dtype, grad: run(torchvision.ops.roi_align, run_dtype, pooled, grad), grad_out, pooled)
    return result


def _feature_view(x: Tensor, layout: str) -> Tensor:
    """A view of `x` [B, C, H, W] with the same values in another memory layout; part of the
    autograd graph, so the gradient flows back to `x`."""
    if layout == "channels-last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channel-strided":  # every other channel of a twice-as-wide map
        return torch.stack([x, torch.zeros_like(x)], 2).flatten(1, 2)[:, ::2]
    if layout == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


def _roi_argument(boxes: Tensor, image: Tensor, batch: int, as_list: bool, dtype: torch.dtype, device: str):
    """The `boxes` argument of roi_align: Tensor[K, 5] (a view into a wider tensor), or one
    Tensor[K_i, 4] per image (`image`: sorted batch index of each box)."""
    boxes, image = boxes.to(device, dtype), image.to(device, dtype)
    if as_list:
        return [boxes[image == i] for i in range(batch)]
    wide = torch.cat([image[:, None], boxes, torch.zeros_like(boxes)], 1)
    return wide[:, :5]


# ---------------------------------------------------------------------------------------------
# MultiScaleRoIAlign cases


def _pyramid_shapes(g: torch.Generator) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(image sizes, feature level sizes): levels of ceil(largest image side / stride), the
    finest at stride 2, 4 or 8. Not 1: torchvision casts the NaN level of a RoI of negative area
    to int64, a value C++ leaves undefined (INT64_MIN on x86, 0 on NVIDIA GPUs); 0 - level_min
    then selects the finest level on a GPU when it is at stride 1, and no level otherwise -
    detlab's defined answer (zeros)."""
    images = _pick(g, [1, 1, 2, 3])
    levels = _pick(g, [1, 2, 4, 4, 5])
    first = _pick(g, [1, 2, 3])
    smallest = math.ceil(2.5 * 2 ** (first + levels - 1))  # so each level's scale rounds right
    sizes = [(int(torch.randint(smallest, smallest + 100, (), generator=g)),
              int(torch.randint(smallest, smallest + 100, (), generator=g))) for _ in range(images)]
    largest = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    shapes = [(math.ceil(largest[0] / 2 ** (first + l)), math.ceil(largest[1] / 2 ** (first + l)))
              for l in range(levels)]
    return sizes, shapes


def _multiscale_boxes(k: int, g: torch.Generator, size: tuple[int, int], huge: bool) -> Tensor:
    """Tensor[k, 4] float64 RoIs of sides from 1 px to 1.5 x the image (every level), some over
    the image edges, some zero-size or inverted; huge (1e6 px) ones if `huge`."""
    extent = torch.tensor([size[1], size[0]], dtype=torch.float64)
    centres = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2) * extent
    sides = torch.exp(torch.rand(k, 2, generator=g, dtype=torch.float64) * math.log(1.5 * float(extent.max())))
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], 1)
    if huge:
        boxes[torch.rand(k, generator=g) < 0.2] *= 1e4
    if _chance(g, 0.3):
        boxes = boxes.round()
    return _deform(boxes, g)


def _multiscale_case(g: torch.Generator, device: str) -> CaseResult:
    dtype = _pick(g, [torch.float32, torch.float64, torch.float16, torch.bfloat16], [6, 1, 2, 2])
    image_sizes, shapes = _pyramid_shapes(g)
    channels = _pick(g, [1, 3, 8, 33])
    output_size = _pick(g, [1, 2, 7, (3, 5)])
    sampling_ratio = _pick(g, [-1, 0, 1, 2, 4])
    canonical_scale, canonical_level = _pick(g, [(224, 4), (112, 3), (56, 4), (448, 5)])
    counts = [_pick(g, [0, 1, 5, 20]) for _ in image_sizes]
    boxes = [_multiscale_boxes(k, g, size, huge=sampling_ratio > 0) for k, size in zip(counts, image_sizes)]
    if _chance(g, 0.2):
        boxes = [_poison(b, g, 0.1) for b in boxes]
    features = [_features(g, dtype, (len(image_sizes), channels, h, w)) for h, w in shapes]
    bins = (output_size,) * 2 if isinstance(output_size, int) else output_size
    grad_out = _grad_out(g, (sum(counts), channels, *bins), dtype)
    result = CaseResult(f"{str(dtype)[6:]}, levels {shapes}, images {image_sizes}, rois {counts}, "
                        f"output {output_size}, sampling_ratio {sampling_ratio}, "
                        f"canonical {canonical_scale}/{canonical_level}")
    case_boxes = [b.to(dtype).to(device) for b in boxes]

    def ours_fn(*levels):
        return multiscale_roi_align(list(levels), case_boxes, image_sizes, output_size, sampling_ratio,
                                    canonical_scale, canonical_level)

    ours = _forward_backward(ours_fn, [f.to(device) for f in features], grad_out)
    finite = [b.isfinite().all(1) for b in case_boxes]

    def reference(run_dtype, grad):
        boxes = [b[f].to(run_dtype) for b, f in zip(case_boxes, finite)]
        return _forward_backward(
            lambda *levels: _torchvision_multiscale(list(levels), boxes, image_sizes, output_size, sampling_ratio,
                                                    canonical_scale, canonical_level, dtype),
            [f.to(device, run_dtype) for f in features], grad)

    pooled = torch.cat(finite).cpu() if finite else torch.zeros(0, dtype=torch.bool)
    _check_roi_op(result, dtype, device, ours, reference, grad_out, pooled)
    return result


def _torchvision_multiscale(features, boxes, image_sizes, output_size, sampling_ratio, canonical_scale,
                            canonical_level, level_dtype):
    """torchvision.ops.MultiScaleRoIAlign's forward (its _setup_scales and _multiscale_roi_align),
    with the FPN levels computed on the boxes in `level_dtype`: the case's dtype, as torchvision
    would compute them if its kernel accepted that dtype (a borderline box can change level
    between float32 and bfloat16)."""
    scales, mapper = tv_poolers._setup_scales(features, image_sizes, canonical_scale, canonical_level)

    def levels_in_case_dtype(boxlists):
        return mapper([b.to(level_dtype) for b in boxlists])

    size = [output_size] * 2 if isinstance(output_size, int) else list(output_size)
    return tv_poolers._multiscale_roi_align(features, boxes, tuple(size), sampling_ratio, scales,
                                            levels_in_case_dtype)


# ---------------------------------------------------------------------------------------------
# Running cases

_CASES = {"nms": _nms_case, "batched_nms": _batched_case, "roi_align": _roi_align_case,
          "multiscale_roi_align": _multiscale_case}


def run_case(op: str, seed: int, index: int, device: str = "cpu") -> CaseResult:
    """Case `index` of `op` under `seed`, run against torchvision on `device`."""
    if op not in _CASES:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return _CASES[op](case_generator(seed, op, index), device)


def fuzz(op: str, cases: int, seed: int, device: str = "cpu") -> OpReport:
    """Run cases 0 .. cases - 1 of `op` and collect what they found."""
    report = OpReport(op, device)
    started = time.perf_counter()
    for index in range(cases):
        report.add(index, run_case(op, seed, index, device))
    report.seconds = time.perf_counter() - started
    return report
