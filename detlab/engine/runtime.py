"""Where and how a trainer computes: ``device``, ``amp`` and ``threads``, the same names and values for detection
(``train.device`` ...) and classification (``device`` ...)."""

import contextlib
import warnings

import torch

from detlab.errors import DetlabError

#: ``amp`` value -> autocast dtype (None: full float32).
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceError(DetlabError, ValueError):
    """This machine cannot compute as asked: a device it lacks, or a mixed precision its device does not run."""


def device_problem(name: str) -> str | None:
    """What is wrong with the form of the device setting ``name`` (None: nothing). Whether this machine has the
    device is :func:`machine_problems`' question: a checkpoint trained on a GPU still loads here."""
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


def machine_problems(device: str, amp: str = "off") -> dict[str, str]:
    """What keeps this machine from computing on ``device`` with mixed precision ``amp``: ``{"device": problem}``
    (no such device, no visible GPU, a GPU index past the last) or ``{"amp": problem}`` (torch's autocast refuses
    or would disable itself there); empty when it can."""
    problem = device_problem(device) or _availability_problem(device)
    if problem:
        return {"device": problem}
    if AMP_DTYPES[amp] is None:
        return {}
    where = _resolved(device)
    try:
        with warnings.catch_warnings():
            # "... not supported. Disabling autocast" is a UserWarning: a silent fallback to float32 otherwise
            warnings.simplefilter("error", UserWarning)
            torch.autocast(where.type, dtype=AMP_DTYPES[amp])
    except (RuntimeError, UserWarning) as error:
        reason = str(error).strip().splitlines()[0]
        return {"amp": f"is not supported on {where} ({reason}); use off, or another mode"}
    return {}


def _availability_problem(name: str) -> str | None:
    device = _resolved(name)
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "asks for CUDA, but no CUDA GPU is visible here; use auto or cpu"
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"asks for GPU {device.index}, but this machine has {count} (cuda:0 .. cuda:{count - 1})"
    return None


def _resolved(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when CUDA sees one, else the CPU; otherwise a torch device string (``cpu``, ``cuda:1``).
    A string that is no device, or a device this machine lacks, is a :class:`DeviceError` saying so."""
    problem = machine_problems(name).get("device")
    if problem:
        raise DeviceError(f"device {name!r} {problem}")
    return _resolved(name)


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
