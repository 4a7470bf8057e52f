"""detlab.ops.roi_align / multiscale_roi_align equal torchvision's, forward and backward."""

import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign as TvMultiScaleRoIAlign

from detlab import ops
from detlab.ops.testing import random_boxes

# float32: 1e-5 absolute. Gradients that sum hundreds of contributions reach magnitudes of
# ~30, where one float32 ulp is 2e-6 and summing in another order moves a few ulps, hence the
# additional 1e-6 relative tolerance (close() of torch.testing: |a - b| <= atol + rtol * |b|).
TOLERANCE = 1e-5
RELATIVE = 1e-6


def make_rois(n, batch, generator, image_size, dtype=torch.float32):
    """Tensor[n, 5]: boxes inside, partly outside and fully outside an image, some of zero size."""
    boxes = random_boxes(n, generator, canvas=image_size * 1.3, min_size=0.5, max_size=image_size * 0.8)
    boxes -= image_size * 0.15  # some hang over the top-left edge, some lie beyond it
    boxes[::7, 2:] = boxes[::7, :2]  # zero-size boxes
    boxes[1] = torch.tensor([-50.0, -50.0, -20.0, -10.0])  # fully outside
    index = torch.randint(0, batch, (n, 1), generator=generator).float()
    return torch.cat([index, boxes], dim=1).to(dtype)


def forward_backward(fn, input, *args):
    input = input.detach().clone().requires_grad_(True)
    out = fn(input, *args)
    # multiples of 1/64 in [-1, 1]: exact in every dtype, so all runs see the same gradient
    grad_out = ((torch.arange(out.numel(), device=out.device) % 129 - 64) / 64).to(out.dtype).reshape(out.shape)
    (grad_in,) = torch.autograd.grad(out, input, grad_out)
    return out, grad_in


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25, 1 / 16])
def test_roi_align_matches_torchvision(device, aligned, sampling_ratio, spatial_scale):
    generator = torch.Generator().manual_seed(1)
    input = torch.randn(3, 5, 24, 31, generator=generator).to(device)
    rois = make_rois(60, 3, generator, image_size=31 / spatial_scale).to(device)
    args = (rois, (7, 5), spatial_scale, sampling_ratio, aligned)
    out, grad = forward_backward(ops.roi_align, input, *args)
    ref_out, ref_grad = forward_backward(torchvision.ops.roi_align, input, *args)
    torch.testing.assert_close(out, ref_out, atol=TOLERANCE, rtol=RELATIVE)
    torch.testing.assert_close(grad, ref_grad, atol=TOLERANCE, rtol=RELATIVE)
    assert out.abs().sum() > 0 and grad.abs().sum() > 0  # the comparison is not between zeros


def test_roi_align_non_contiguous_input_and_list_boxes(device):
    generator = torch.Generator().manual_seed(2)
    nhwc = torch.randn(2, 20, 18, 8, generator=generator).to(device)
    input = nhwc.permute(0, 3, 1, 2)  # channels-last memory
    assert not input.is_contiguous()
    boxes = [random_boxes(k, generator, canvas=150, min_size=2, max_size=80).to(device) for k in (9, 0)]
    out, grad = forward_backward(ops.roi_align, input, boxes, 4, 0.125, 2, True)
    ref_out, ref_grad = forward_backward(torchvision.ops.roi_align, input, boxes, 4, 0.125, 2, True)
    torch.testing.assert_close(out, ref_out, atol=TOLERANCE, rtol=RELATIVE)
    torch.testing.assert_close(grad, ref_grad, atol=TOLERANCE, rtol=RELATIVE)
    # gradient of a non-contiguous output slice
    rois = torch.cat([torch.zeros(9, 1, device=device), boxes[0]], 1)
    x = input.detach().requires_grad_(True)
    ops.roi_align(x, rois, 4, 0.125, 2, True)[:, ::2].sum().backward()
    y = input.detach().requires_grad_(True)
    torchvision.ops.roi_align(y, rois, 4, 0.125, 2, True)[:, ::2].sum().backward()
    torch.testing.assert_close(x.grad, y.grad, atol=TOLERANCE, rtol=RELATIVE)


def test_roi_align_no_rois_and_module(device):
    input = torch.randn(1, 3, 8, 8, device=device)
    out = ops.roi_align(input, torch.zeros(0, 5, device=device), 2)
    assert out.shape == (0, 3, 2, 2)
    module = ops.RoIAlign((3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    rois = torch.tensor([[0.0, 1, 1, 9, 12]], device=device)
    torch.testing.assert_close(module(input, rois), torchvision.ops.roi_align(input, rois, (3, 2), 0.5, 2, True),
                               atol=TOLERANCE, rtol=RELATIVE)


def test_roi_align_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    input = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = make_rois(6, 2, generator, image_size=9, dtype=torch.float64)
    for aligned in (False, True):
        for sampling_ratio in (-1, 2):
            assert torch.autograd.gradcheck(
                lambda x: ops.roi_align(x, rois, (3, 2), 1.0, sampling_ratio, aligned), (input,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_half_precision(device, dtype):
    generator = torch.Generator().manual_seed(4)
    input = torch.randn(2, 8, 16, 16, generator=generator)
    rois = make_rois(20, 2, generator, image_size=64)
    input, rois = input.to(dtype), rois.to(dtype)  # the reference sees the same rounded values
    expected, expected_grad = forward_backward(torchvision.ops.roi_align, input.float(), rois.float(), 5, 0.25, 2,
                                               False)
    out, grad = forward_backward(ops.roi_align, input.to(device), rois.to(device), 5, 0.25, 2, False)
    assert out.dtype == dtype and grad.dtype == dtype
    # the kernels work in float32 and round the result to `dtype` once
    rtol = 2 ** -8 if dtype == torch.float16 else 2 ** -6
    torch.testing.assert_close(out.float().cpu(), expected, atol=1e-3, rtol=rtol)
    torch.testing.assert_close(grad.float().cpu(), expected_grad, atol=1e-3, rtol=rtol)


def test_roi_align_under_autocast(device):
    generator = torch.Generator().manual_seed(5)
    input = torch.randn(1, 4, 10, 10, generator=generator).to(device)
    rois = make_rois(8, 1, generator, image_size=40).to(device)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=dtype):
        out = ops.roi_align(input.to(dtype), rois, 3, 0.25, 2, False)  # mixed dtypes are fine here
    assert out.dtype == dtype
    expected = torchvision.ops.roi_align(input.to(dtype).float(), rois, 3, 0.25, 2, False)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=0)


def pyramid(batch, channels, image_size, generator, device, levels=4):
    """FPN features at strides 4, 8, 16, 32 of an image_size x image_size batch."""
    return [torch.randn(batch, channels, image_size // 2 ** (2 + l), image_size // 2 ** (2 + l),
                        generator=generator).to(device) for l in range(levels)]


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_multiscale_roi_align_matches_torchvision(device, sampling_ratio):
    generator = torch.Generator().manual_seed(6)
    image_size = 256
    features = pyramid(2, 6, image_size, generator, device)
    boxes = [random_boxes(k, generator, canvas=image_size, min_size=2, max_size=240).to(device) for k in (40, 25)]
    boxes[1][0] = torch.tensor([-100.0, -100.0, 400.0, 420.0])  # beyond the image, on the coarsest level
    for i, side in enumerate((50.0, 150.0, 300.0, 500.0)):  # one box for each of levels 2, 3, 4, 5
        boxes[0][i] = torch.tensor([10.0 + i, 20.0, 10.0 + i + side, 20.0 + side])
    image_sizes = [(image_size, image_size), (200, 240)]
    names = ["p2", "p3", "p4", "p5"]
    reference = TvMultiScaleRoIAlign(names, (7, 7), sampling_ratio)
    ours = ops.MultiScaleRoIAlign(names, (7, 7), sampling_ratio)

    def run(module):
        leaves = [f.detach().clone().requires_grad_(True) for f in features]
        out = module(dict(zip(names, leaves)), boxes, image_sizes)
        grad_out = torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)
        return out, torch.autograd.grad(out, leaves, grad_out)

    out, grads = run(ours)
    ref_out, ref_grads = run(reference)
    torch.testing.assert_close(out, ref_out, atol=TOLERANCE, rtol=RELATIVE)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=TOLERANCE, rtol=RELATIVE)
    assert all(g.abs().sum() > 0 for g in grads), "the test boxes must reach every level"


def test_multiscale_roi_align_gradcheck_float64():
    generator = torch.Generator().manual_seed(7)
    features = [torch.randn(1, 2, s, s, generator=generator, dtype=torch.float64, requires_grad=True)
                for s in (16, 8, 4, 2)]
    boxes = [torch.tensor([[2.0, 3.0, 9.0, 12.0], [0.0, 0.0, 60.0, 50.0], [10.0, 5.0, 30.0, 40.0]],
                          dtype=torch.float64)]
    assert torch.autograd.gradcheck(
        lambda *f: ops.multiscale_roi_align(list(f), boxes, [(64, 64)], (2, 3), 2, canonical_scale=16,
                                            canonical_level=4), tuple(features))


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda x, r: ops.roi_align(x[0], r, 2), ValueError, r"input must have shape \[B, C, H, W\]"),
    (lambda x, r: ops.roi_align(x, r[:, :4], 2), ValueError, r"boxes must have shape \[K, 5\]"),
    (lambda x, r: ops.roi_align(x, r, -2), ValueError, "output_size must be positive"),
    (lambda x, r: ops.roi_align(x, r, (2, 0)), ValueError, "output_size must be positive"),
    (lambda x, r: ops.roi_align(x, r, 2.5), TypeError, "output_size must be an int"),
    (lambda x, r: ops.roi_align(x, r, 2, spatial_scale=0), ValueError, "spatial_scale"),
    (lambda x, r: ops.roi_align(x, r, 2, sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
    (lambda x, r: ops.roi_align(x, r, 2, aligned=1), TypeError, "aligned must be a bool"),
    (lambda x, r: ops.roi_align(x, r.double(), 2), TypeError, "boxes has dtype torch.float64"),
    (lambda x, r: ops.roi_align(x.long(), r, 2), TypeError, "input must have a floating point dtype"),
    (lambda x, r: ops.roi_align(x, r + torch.tensor([2.0, 0, 0, 0, 0]), 2), ValueError,
     r"batch indices, which must lie in \[0, 2\)"),
    (lambda x, r: ops.roi_align(x, [r[:, 1:]] * 3, 2), ValueError, "3 tensors, one per image"),
    (lambda x, r: ops.multiscale_roi_align([x], [r[:, 1:]], [(8, 8)], 2, 2), ValueError,
     "boxes has 1 tensors but the features have batch size 2"),
    (lambda x, r: ops.multiscale_roi_align([x], [r[:, 1:], r[:, 1:]], [(8, -8)] * 2, 2, 2), ValueError,
     "image_sizes"),
    (lambda x, r: ops.multiscale_roi_align([x, x[:, :2]], [r[:, 1:]] * 2, [(8, 8)] * 2, 2, 2), ValueError,
     r"features\[1\] has batch and channels"),
])
def test_bad_roi_align_arguments_name_the_argument(call, error, message):
    input = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0.0, 1, 1, 5, 5], [1.0, 0, 0, 3, 3]])
    with pytest.raises(error, match=message):
        call(input, rois)
