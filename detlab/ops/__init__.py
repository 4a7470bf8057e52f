"""detlab's native layer: NMS, batched NMS, RoIAlign and multi-level RoIAlign.

C++ (CPU) and CUDA kernels registered as ``torch.ops.detlab.*``, compiled on first use (see
``_build``), with torchvision-compatible Python signatures. ``backend()`` tells what is active;
``DETLAB_OPS=torchvision`` switches to torchvision's ops explicitly. This package imports
nothing else from detlab.
"""

from ._backend import Backend, backend
from ._build import NativeOpsBuildError
from .nms import batched_nms, nms
from .roi_align import MultiScaleRoIAlign, RoIAlign, multiscale_roi_align, roi_align

__all__ = [
    "Backend",
    "MultiScaleRoIAlign",
    "NativeOpsBuildError",
    "RoIAlign",
    "backend",
    "batched_nms",
    "multiscale_roi_align",
    "nms",
    "roi_align",
]
