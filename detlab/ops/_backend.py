"""Which implementation serves ``detlab.ops``: detlab's compiled kernels, or torchvision's ops
when the user asks for them with ``DETLAB_OPS=torchvision``. Never a silent switch: a build
failure raises, and the torchvision choice is announced once."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import torch

from . import _build

logger = logging.getLogger("detlab.ops")

CHOICES = ("native", "torchvision")


@dataclass(frozen=True)
class Backend:
    """What ``detlab.ops`` runs on."""

    name: str  # "native" (detlab's compiled kernels) or "torchvision"
    cpu_kernels: bool  # detlab's CPU kernels are loaded
    cuda_kernels: bool  # detlab's CUDA kernels are compiled in
    cuda_note: str  # why the CUDA kernels are, or are not, there
    gpu_available: bool  # torch.cuda.is_available()
    library: str | None  # path of the compiled library

    def __str__(self) -> str:
        if self.name == "torchvision":
            kernels = "torchvision's ops (DETLAB_OPS=torchvision); detlab's native kernels are not used"
        else:
            kernels = "detlab native: CPU kernels" + (" + CUDA kernels" if self.cuda_kernels else "")
        lines = [
            f"backend:      {kernels}",
            f"CUDA kernels: {self.cuda_note}",
            f"GPU visible:  {'yes, ' + torch.cuda.get_device_name(0) if self.gpu_available else 'no'}",
            f"library:      {self.library or '-'}",
            f"torch:        {torch.__version__} (CUDA {torch.version.cuda})",
        ]
        return "\n".join(lines)


_lock = threading.Lock()
_backend: Backend | None = None


def backend() -> Backend:
    """Resolve the backend on first use: load (compiling if needed) the native library, or
    announce that torchvision's ops are used."""
    global _backend
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            _backend = _resolve()
    return _backend


def _resolve() -> Backend:
    choice = os.environ.get("DETLAB_OPS", "native").strip().lower() or "native"
    if choice not in CHOICES:
        raise ValueError(f"DETLAB_OPS must be one of {CHOICES}, got {choice!r}")
    gpu = torch.cuda.is_available()
    if choice == "torchvision":
        import torchvision.ops  # noqa: F401  (fail here, not inside an op, if it is missing)

        logger.warning("detlab: DETLAB_OPS=torchvision, so detlab.ops runs torchvision's nms and roi_align "
                       "instead of detlab's native kernels")
        return Backend("torchvision", False, False, "not used (DETLAB_OPS=torchvision)", gpu, None)
    config = _build.build_config()
    path = _build.build(config)
    torch.ops.load_library(str(path))
    from . import _registrations  # noqa: F401  (autograd and fake kernels for the loaded schemas)

    return Backend("native", True, config.with_cuda, config.cuda_note, gpu, str(path))


def use_native(tensor: torch.Tensor) -> bool:
    """True if detlab's kernels serve this tensor's device; False under the torchvision choice.
    Raises when the native backend has no kernel for the device."""
    active = backend()
    if active.name == "torchvision":
        return False
    device = tensor.device.type
    if device == "cpu" or (device == "cuda" and active.cuda_kernels):
        return True
    if device == "cuda":
        raise RuntimeError(f"detlab's CUDA kernels are {active.cuda_note}. "
                           f"Set DETLAB_OPS=torchvision to use torchvision's ops instead.")
    raise RuntimeError(f"detlab's native ops run on CPU and CUDA tensors, got a {device} tensor. "
                       f"Set DETLAB_OPS=torchvision to use torchvision's ops instead.")
