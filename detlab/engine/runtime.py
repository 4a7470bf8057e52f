"""Where and how a trainer computes: ``device``, ``amp`` and ``threads``, the same names and values for detection
(``train.device`` ...) and classification (``device`` ...)."""

import contextlib

import torch

#: ``amp`` value -> autocast dtype (None: full float32).
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def device_problem(name: str) -> str | None:
    """What is wrong with the form of the device setting ``name`` (None: nothing). Whether this machine has the
    device is checked when it is used (:func:`resolve_device`): a checkpoint trained on a GPU still loads here."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return "is not a device; valid: auto (CUDA when visible, else CPU), cpu, cuda, cuda:N"
    if device.type not in ("cpu", "cuda"):
        return f"is a {device.type} device; detlab trains and predicts on cpu or cuda"
    return None


def threads_problem(threads: int | None) -> str | None:
    """What is wrong with a ``threads`` setting (None: nothing)."""
    return None if threads is None or threads >= 1 else "must be at least 1 (null: torch's default)"


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when CUDA sees one, else the CPU; otherwise a torch device string (``cpu``, ``cuda:1``).
    A string that is no device, or CUDA without a visible GPU, is a ValueError saying so."""
    problem = device_problem(name)
    if problem:
        raise ValueError(f"device {name!r} {problem}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asks for CUDA, but no CUDA GPU is visible here; use auto or cpu")
    return device


def set_threads(threads: int | None) -> None:
    """Torch's CPU threads; None keeps torch's default (one per core). 1 is fastest on a busy shared CPU."""
    problem = threads_problem(threads)
    if problem:
        raise ValueError(f"threads = {threads} {problem}")
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
