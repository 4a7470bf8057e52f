"""detlab.ops under fuzz: seeded random cases against torchvision (detlab/ops/fuzz.py, shared with
tools/fuzz_ops.py, which runs any number of them), and one test per documented behaviour on NaN,
infinite and other inputs where torchvision's own answer is undefined or an accident of its code."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops import boxes as tv_boxes
from torchvision.ops import poolers as tv_poolers

from detlab import ops
from detlab.ops import fuzz
from detlab.ops.roi_align import fpn_levels
from detlab.ops.testing import clustered_boxes, random_boxes

NAN, INF = math.nan, math.inf
REPO = Path(__file__).resolve().parents[2]

# A few hundred cases in all, a few seconds per op here; tools/fuzz_ops.py runs thousands.
CASES = {"nms": 400, "batched_nms": 300, "roi_align": 150, "multiscale_roi_align": 50}


@pytest.mark.parametrize("op", fuzz.OPS)
def test_fuzz_cases_match_torchvision(device, op):
    report = fuzz.fuzz(op, CASES[op], seed=13, device=device)
    assert report.cases == CASES[op]
    assert report.mismatches == 0, "\n".join(report.first_mismatches)
    if op in ("roi_align", "multiscale_roi_align"):  # every dtype was drawn and compared
        assert {dtype for dtype, _, _ in report.worst} == {"float32", "float64", "float16", "bfloat16"}


def test_a_case_replays_alone():
    first, again = fuzz.run_case("nms", 4, 17), fuzz.run_case("nms", 4, 17)
    assert first.description == again.description and first.mismatch is None
    assert fuzz.run_case("nms", 5, 17).description != first.description
    with pytest.raises(ValueError, match="op must be one of"):
        fuzz.run_case("soft_nms", 0, 0)


# --- NMS: NaN and infinite scores and boxes (torchvision's behaviour, on both devices) ---------


def test_nms_nan_score_ranks_above_every_other_score(device):
    # torch.sort puts NaN first when descending: a NaN-scored box is visited first and can
    # suppress others; NaN scores among themselves keep their input order
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [50.0, 50, 60, 60], [80.0, 0, 90, 10]], device=device)
    scores = torch.tensor([NAN, INF, 0.5, NAN], device=device)
    keep = ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 3, 2]  # box 1 (IoU 0.68 with box 0) suppressed despite its +inf score
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))


def test_nms_box_with_a_nan_coordinate_is_kept_and_suppresses_nothing(device):
    # its IoU with any box is NaN, and NaN > threshold is false
    boxes = torch.tensor([[NAN, 0, 10, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10], [0.0, NAN, 10, 10]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    keep = ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 1, 3]  # box 2 falls to its duplicate, box 1, only
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))


def test_nms_box_with_an_infinite_coordinate_is_kept_and_suppresses_nothing(device):
    # its area is inf (IoU with a finite box: 0) or NaN (IoU with a box as infinite: inf / inf)
    boxes = torch.tensor([[0.0, 0, INF, 10], [0.0, 0, INF, 10], [-INF, -INF, INF, INF], [0.0, 0, 10, 10],
                          [INF, 0, INF, 10]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device)
    for threshold in (0.0, 0.5):
        keep = ops.nms(boxes, scores, threshold)
        assert keep.tolist() == [0, 1, 2, 3, 4]
        assert torch.equal(keep, torchvision.ops.nms(boxes, scores, threshold))


def test_batched_nms_with_non_finite_boxes_is_per_category_nms(device):
    # torchvision's batched_nms offsets boxes by category * (largest coordinate + 1) below 1000
    # boxes (25000 on CUDA): one NaN or inf coordinate makes every offset box non-finite and it
    # then keeps every box. detlab always gives its per-category answer, which it uses above.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [NAN, 0, 10, 10], [0.0, 0, INF, 5]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 0, 1, 1], device=device)
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert keep.tolist() == [0, 2, 3]
    assert torch.equal(keep, tv_boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_boxes_with_underflowing_areas_match_torchvision(device, dtype):
    # Found by the fuzz suite: with sides of ~1e-22 (float32) the areas are subnormal and the
    # IoU's rounding no longer fits the CPU kernel's pruning margin; it then tests every pair.
    generator = torch.Generator().manual_seed(80)
    scale = 2.0 ** -80 if dtype == torch.float32 else 2.0 ** -530
    for _ in range(10):
        boxes = (clustered_boxes(300, generator, clusters=10).double() * scale).to(device, dtype)
        scores = torch.rand(300, generator=generator, dtype=torch.float64).to(device, dtype)
        for threshold in (0.3, 0.5, 0.7):
            assert torch.equal(ops.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


# --- RoIAlign: RoIs whose torchvision result is undefined pool zeros ----------------------------


def pooled_and_grad(fn, input, rois, *args):
    x = input.detach().clone().requires_grad_(True)
    out = fn(x, rois, *args)
    out.sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("column", [1, 2, 3, 4])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, False), (2, False), (2, True)])
def test_roi_align_roi_with_a_non_finite_corner_pools_zeros(device, value, column, sampling_ratio, aligned):
    # torchvision gives zeros, NaN or reads out of bounds (a NaN position cast to an index)
    generator = torch.Generator().manual_seed(column)
    input = torch.randn(2, 3, 9, 11, generator=generator).to(device)
    rois = torch.tensor([[0.0, 1, 2, 7, 8], [1.0, 0, 0, 5, 4], [1.0, 2, 1, 9, 6]], device=device)
    rois[1, column] = value
    args = ((3, 2), 1.0, sampling_ratio, aligned)
    out, grad = pooled_and_grad(ops.roi_align, input, rois, *args)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    finite = rois[[0, 2]]
    ref_out, ref_grad = pooled_and_grad(torchvision.ops.roi_align, input, finite, *args)
    torch.testing.assert_close(out[[0, 2]], ref_out, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-6)  # the zero RoI adds no gradient


def test_roi_align_aligned_inverted_roi_with_adaptive_sampling_pools_zeros(device):
    # aligned=True keeps a negative width; ceil(width / output) <= 0 sampling points per bin then
    # leave the bins empty. torchvision's CUDA kernel gives zeros too; its CPU kernel fails to
    # allocate its sample table when only one side is negative by at least the output size.
    input = torch.randn(1, 2, 12, 12, device=device)
    rois = torch.tensor([[0.0, 10, 2, 4, 8], [0.0, 2, 9, 8, 3], [0.0, 9, 9, 2, 2]], device=device)
    out = ops.roi_align(input, rois, 2, 1.0, 0, True)
    assert torch.equal(out, torch.zeros_like(out))
    # a fixed sampling ratio samples the inverted RoI backwards, as torchvision does
    torch.testing.assert_close(ops.roi_align(input, rois, 2, 1.0, 2, True),
                               torchvision.ops.roi_align(input, rois, 2, 1.0, 2, True), atol=1e-5, rtol=1e-6)
    assert ops.roi_align(input, rois, 2, 1.0, 2, True).abs().sum() > 0


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_roi_align_non_finite_pixels_reach_the_bins_that_sample_them(device, value):
    # as in torchvision, also through a zero bilinear weight (a sample on a pixel edge, or clamped
    # to the last row): 0 * inf = NaN. Pixel (0, 0) stays finite: torchvision's CPU kernel
    # multiplies it by the zero weight of every sampling point off the map, detlab does not.
    generator = torch.Generator().manual_seed(12)
    non_finite = 0
    for trial in range(40):
        input = torch.randn(2, 4, 9, 9, generator=generator)
        input[torch.rand(input.shape, generator=generator) < 0.03] = value
        input[..., 0, 0] = 1.0
        boxes = torch.rand(6, 4, generator=generator) * 12 - 1
        boxes[:, 2:] += boxes[:, :2]
        boxes = boxes.round() if trial % 2 else boxes  # integer corners: samples on pixel edges
        rois = torch.cat([torch.randint(2, (6, 1), generator=generator).float(), boxes], 1)
        for sampling_ratio, aligned in ((0, False), (2, True), (3, False)):
            args = (3, 1.0, sampling_ratio, aligned)
            out = ops.roi_align(input.to(device), rois.to(device), *args).cpu()
            expected = torchvision.ops.roi_align(input, rois, *args)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-6, equal_nan=True)
            non_finite += int((~out.isfinite()).sum())
    assert non_finite > 100  # the comparison is not only between finite values


def test_roi_align_nan_batch_index_is_an_error():
    with pytest.raises(ValueError, match=r"boxes\[:, 0\] holds batch indices.*\[nan\] at rows \[1\]"):
        ops.roi_align(torch.ones(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2], [NAN, 0, 0, 2, 2]]), 2)


def pyramid(device, generator, sizes=(32, 16, 8, 4)):
    return {f"p{i}": torch.randn(2, 3, s, s, generator=generator).to(device) for i, s in enumerate(sizes)}


def test_multiscale_roi_without_a_level_pools_zeros(device):
    # A negative area (inverted along one axis) or a NaN corner gives no FPN level: torchvision's
    # NaN level, cast to int64, matches no level, so it pools zeros; detlab does so on purpose.
    # An infinite corner maps to a level but pools zeros there, as in roi_align.
    generator = torch.Generator().manual_seed(9)
    features = pyramid(device, generator)
    names = list(features)
    boxes = [torch.tensor([[5.0, 5, 60, 70], [60.0, 5, 5, 70], [NAN, 0, 9, 9]], device=device),
             torch.tensor([[0.0, 0, INF, 30], [10.0, 12, 100, 90]], device=device)]
    sizes = [(128, 128), (128, 120)]
    out = ops.MultiScaleRoIAlign(names, 2, 2)(features, boxes, sizes)
    assert out.shape == (5, 3, 2, 2)
    for row in (1, 2, 3):
        assert torch.equal(out[row], torch.zeros_like(out[row]))
    finite = [boxes[0][:2], boxes[1][1:]]  # torchvision pools the inverted box to zeros itself
    expected = torchvision.ops.MultiScaleRoIAlign(names, 2, 2)(features, finite, sizes)
    torch.testing.assert_close(out[[0, 1, 4]], expected, atol=1e-5, rtol=1e-6)


def test_multiscale_with_one_level_pools_every_roi_as_roi_align(device):
    # torchvision calls roi_align directly for a single level: no level assignment, so an
    # inverted box is pooled (forced to 1 x 1 pixel) rather than dropped
    generator = torch.Generator().manual_seed(10)
    features = pyramid(device, generator, sizes=(16,))
    boxes = [torch.tensor([[60.0, 5, 5, 70], [3.0, 4, 40, 50]], device=device), torch.zeros(0, 4, device=device)]
    out = ops.MultiScaleRoIAlign(["p0"], 3, 2)(features, boxes, [(64, 64), (64, 64)])
    expected = torchvision.ops.MultiScaleRoIAlign(["p0"], 3, 2)(features, boxes, [(64, 64), (64, 64)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-6)
    assert out[0].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fpn_levels_of_half_precision_boxes_are_torchvisions(dtype):
    # torchvision's box_area upcasts float16 / bfloat16 to float32: a float16 area overflows to
    # inf from 256 x 256 px (which would send every large box to the coarsest level), and a
    # bfloat16 area rounds borderline boxes onto another level
    generator = torch.Generator().manual_seed(11)
    boxes = [random_boxes(500, generator, canvas=1200, min_size=8, max_size=900).to(dtype) for _ in range(2)]
    boxes[0][:2] = torch.tensor([[0, 0, 300, 300], [10, 20, 122, 132]], dtype=dtype)
    expected = tv_poolers.LevelMapper(2, 5)(boxes)
    assert torch.equal(fpn_levels(boxes, 2, 5, 224, 4), expected)
    assert fpn_levels(boxes, 2, 5, 224, 4)[:2].tolist() == [2, 1]  # levels 4 and 3, less level_min 2


# --- The tool ----------------------------------------------------------------------------------


def load_tool():
    spec = importlib.util.spec_from_file_location("fuzz_ops", REPO / "tools" / "fuzz_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_fuzz_tool_reports_every_op_and_fails_on_a_mismatch(capsys, monkeypatch):
    main = load_tool()
    assert main(["--cases", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for op in fuzz.OPS:
        assert f"{op} " in out
    assert out.count("0 mismatches") == 4 and "float32 vs torchvision same dtype" in out

    def mismatching(op, seed, index, device="cpu"):
        return fuzz.CaseResult(f"case {index}", mismatch="kept 2 vs torchvision's 3")

    monkeypatch.setattr(fuzz, "run_case", mismatching)
    assert main(["--op", "nms", "--cases", "2"]) == 1
    out = capsys.readouterr().out
    assert "2 mismatches" in out and "MISMATCH case 0 (case 0): kept 2 vs torchvision's 3" in out
    assert main(["--op", "nms", "--case", "5"]) == 1
    assert "nms case 5: case 5\n    kept 2 vs torchvision's 3" in capsys.readouterr().out
