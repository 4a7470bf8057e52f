"""Where and how a trainer computes: ``device``, ``amp`` and ``threads``, the same names and values for detection
(``train.device`` ...) and classification (``device`` ...)."""

import contextlib

import torch

#: ``amp`` value -> autocast dtype (None: full float32).
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when CUDA sees one, else the CPU; otherwise a torch device string (``cpu``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Torch's CPU threads; None keeps torch's default (one per core). 1 is fastest on a busy shared CPU."""
    if threads is not None:
        torch.set_num_threads(threads)


def autocast(device: torch.device, amp: str):
    """The mixed-precision context of ``amp`` (``off | fp16 | bf16``) on ``device``."""
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling for float16 (whose small gradients would underflow); a no-op scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
