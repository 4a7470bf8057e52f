"""detlab.ops.nms / batched_nms keep exactly torchvision's indices, in torchvision's order."""

import pytest
import torch
import torchvision
from torchvision.ops import boxes as tv_boxes

from detlab import ops
from detlab.ops.testing import clustered_boxes, dense_boxes, random_boxes, tied_scores

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def reference_nms(boxes, scores, threshold):
    return torchvision.ops.nms(boxes, scores, threshold)


def assert_same_nms(boxes, scores, threshold):
    ours = ops.nms(boxes, scores, threshold)
    expected = reference_nms(boxes, scores, threshold)
    assert ours.dtype == torch.int64
    assert torch.equal(ours.cpu(), expected.cpu()), (
        f"{len(ours)} kept vs torchvision's {len(expected)} (threshold {threshold})")


def boxes_of(kind, n, generator):
    return {"random": random_boxes, "dense": dense_boxes, "clustered": clustered_boxes}[kind](n, generator)


@pytest.mark.parametrize("kind", ["random", "dense", "clustered"])
@pytest.mark.parametrize("n", [2, 10, 100, 1000, 3000])
def test_nms_matches_torchvision(device, kind, n):
    generator = torch.Generator().manual_seed(n)
    for seed in range(3):
        boxes = boxes_of(kind, n, generator).to(device)
        scores = torch.rand(n, generator=generator).to(device)
        for threshold in THRESHOLDS:
            assert_same_nms(boxes, scores, threshold)


@pytest.mark.parametrize("kind", ["random", "dense", "clustered"])
def test_nms_score_ties_keep_torchvision_order(device, kind):
    generator = torch.Generator().manual_seed(7)
    for n in (50, 2000):
        boxes = boxes_of(kind, n, generator).to(device)
        scores = tied_scores(n, generator).to(device)
        for threshold in THRESHOLDS:
            assert_same_nms(boxes, scores, threshold)
    # every score equal: the kept order is the input order
    boxes = random_boxes(500, generator).to(device)
    scores = torch.ones(500, device=device)
    assert_same_nms(boxes, scores, 0.5)


def test_nms_identical_boxes(device):
    box = torch.tensor([[10.0, 20.0, 50.0, 80.0]], device=device)
    boxes = box.repeat(100, 1)
    scores = torch.linspace(0, 1, 100, device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [99]
    assert ops.nms(boxes, scores, 1.0).tolist() == list(range(99, -1, -1))  # IoU 1 is not > 1
    assert_same_nms(boxes, torch.ones(100, device=device), 0.99)


def test_nms_iou_exactly_at_threshold_is_kept(device):
    # IoUs of 1/2 and 1/4, exact in floating point, hit the threshold exactly.
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0],    # top scorer
                          [0.0, 0.0, 2.0, 1.0],    # IoU with box 0 = 2/4 = 0.5
                          [3.0, 0.0, 7.0, 1.0],    # IoU with box 0 = 1/7
                          [6.0, 0.0, 7.0, 1.0]],   # IoU with box 2 = 1/4 = 0.25
                         device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    # suppression needs IoU > threshold: at exactly the threshold the box survives
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]
    assert ops.nms(boxes, scores, 0.25).tolist() == [0, 2, 3]
    assert ops.nms(boxes, scores, 0.2499).tolist() == [0, 2]
    for threshold in (0.5, 0.25, 0.2499, 0.49):
        assert_same_nms(boxes, scores, threshold)
    # integer-coordinate boxes produce many exact IoU ratios: compare on a grid of them
    generator = torch.Generator().manual_seed(3)
    corners = torch.randint(0, 12, (400, 2), generator=generator).float()
    sizes = torch.randint(1, 6, (400, 2), generator=generator).float()
    grid_boxes = torch.cat([corners, corners + sizes], 1).to(device)
    grid_scores = tied_scores(400, generator).to(device)
    for threshold in (0.25, 0.5, 1 / 3, 0.2, 0.75):
        assert_same_nms(grid_boxes, grid_scores, threshold)


def test_nms_degenerate_sizes(device):
    empty = ops.nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    one = ops.nms(torch.tensor([[0.0, 0, 1, 1]], device=device), torch.tensor([0.3], device=device), 0.5)
    assert one.tolist() == [0]
    # zero-area and inverted boxes are never suppressed and never suppress (IoU 0 or NaN)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 5, 9], [0.0, 0, 10, 10], [9.0, 9, 1, 1]], device=device)
    scores = torch.tensor([0.1, 0.9, 0.8, 0.7], device=device)
    assert_same_nms(boxes, scores, 0.5)


def test_nms_50k_boxes():
    generator = torch.Generator().manual_seed(50)
    boxes = clustered_boxes(50_000, generator, clusters=2000)
    scores = torch.rand(50_000, generator=generator)
    assert_same_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_half_precision_matches_torchvision_cuda_semantics(device, dtype):
    # torchvision's CPU nms rejects float16; its CUDA nms accepts it and compares IoUs in
    # float. On exactly representable integer boxes every IoU is then computed exactly, so the
    # float32 reference is the expected answer on both devices, for thresholds that are exact
    # in float too (torchvision's CPU compares against the double threshold, its CUDA against
    # a float one: an IoU of exactly 3/10 differs between them at 0.3).
    generator = torch.Generator().manual_seed(16)
    corners = torch.randint(0, 200, (2000, 2), generator=generator).float()
    sizes = torch.randint(1, 40, (2000, 2), generator=generator).float()
    boxes = torch.cat([corners, corners + sizes], 1)
    scores = tied_scores(2000, generator, levels=64)  # k / 64 is exact in half precision
    for threshold in (0.25, 0.5, 0.75):
        expected = reference_nms(boxes, scores, threshold)
        ours = ops.nms(boxes.to(device, dtype), scores.to(device, dtype), threshold)
        assert torch.equal(ours.cpu(), expected)
    if device == "cuda":
        for threshold in (0.3, 0.5):
            b, s = boxes.to(device, dtype), scores.to(device, dtype)
            assert torch.equal(ops.nms(b, s, threshold), reference_nms(b, s, threshold))


def test_nms_float64_matches_torchvision():
    generator = torch.Generator().manual_seed(64)
    boxes = clustered_boxes(3000, generator).double()
    scores = torch.rand(3000, generator=generator, dtype=torch.float64)
    for threshold in THRESHOLDS:
        assert_same_nms(boxes, scores, threshold)


def test_nms_non_contiguous_inputs(device):
    generator = torch.Generator().manual_seed(11)
    wide = clustered_boxes(1000, generator).repeat(1, 2).to(device)
    boxes = wide[:, ::2]  # stride 2 along the coordinates
    scores = torch.rand(2000, generator=generator).to(device)[::2]
    assert not boxes.is_contiguous() and not scores.is_contiguous()
    assert_same_nms(boxes, scores, 0.5)


def reference_batched(boxes, scores, idxs, threshold):
    """torchvision's per-category path (its public function takes it above 4000 / 100k boxes)."""
    return tv_boxes._batched_nms_vanilla(boxes, scores, idxs, threshold)


@pytest.mark.parametrize("classes", [1, 3, 80])
@pytest.mark.parametrize("n", [0, 1, 100, 5000, 20000])
def test_batched_nms_matches_torchvision_per_category(device, classes, n):
    generator = torch.Generator().manual_seed(classes * 1000 + n)
    boxes = clustered_boxes(n, generator, clusters=max(1, n // 20)).to(device)
    idxs = torch.randint(0, classes, (n,), generator=generator).to(device)
    for scores in (torch.rand(n, generator=generator), tied_scores(n, generator)):
        scores = scores.to(device)
        for threshold in (0.3, 0.5, 0.7):
            ours = ops.batched_nms(boxes, scores, idxs, threshold)
            assert torch.equal(ours.cpu(), reference_batched(boxes, scores, idxs, threshold).cpu())


def test_batched_nms_equals_public_torchvision_on_exact_coordinates(device):
    # torchvision's public batched_nms offsets boxes by category below 4000 boxes; on small
    # integer coordinates the offset is exact, so its result must equal ours.
    generator = torch.Generator().manual_seed(5)
    corners = torch.randint(0, 100, (3000, 2), generator=generator).float()
    sizes = torch.randint(1, 30, (3000, 2), generator=generator).float()
    boxes = torch.cat([corners, corners + sizes], 1).to(device)
    scores = torch.rand(3000, generator=generator).to(device)
    idxs = torch.randint(-3, 7, (3000,), generator=generator).to(device)  # negative ids too
    for threshold in (0.3, 0.5):
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, threshold)
        assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), expected)


def test_batched_nms_never_suppresses_across_categories(device):
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    boxes = box.repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 1, 0, 2], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 3]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: ops.nms([[0, 0, 1, 1]], torch.ones(1), 0.5), "boxes must be a torch.Tensor"),
    (lambda: ops.nms(torch.zeros(3, 5), torch.ones(3), 0.5), r"boxes must have shape \[N, 4\]"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(2), 0.5), "scores must have 3 rows"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(3, 1), 0.5), r"scores must have shape \[N\]"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(3, dtype=torch.float64), 0.5), "scores has dtype"),
    (lambda: ops.nms(torch.zeros(3, 4, dtype=torch.int64), torch.ones(3), 0.5), "boxes must have a floating"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(3), 1.5), r"iou_threshold must be a finite number in \[0.0, 1.0\]"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(3), -0.1), "iou_threshold"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(3), float("nan")), "iou_threshold"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.ones(3), "0.5"), "iou_threshold must be a real number"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.ones(3), torch.zeros(3), 0.5), "idxs must have an integer"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.ones(3), torch.zeros(2, dtype=torch.long), 0.5),
     "idxs must have 3 rows"),
])
def test_bad_nms_arguments_name_the_argument(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nms_mismatched_devices_are_rejected():
    with pytest.raises(ValueError, match="scores is on cpu but boxes is on cuda"):
        ops.nms(torch.zeros(3, 4, device="cuda"), torch.ones(3), 0.5)
