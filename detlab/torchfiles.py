"""Reading files that ``torch.save`` wrote, safely, and the formats of detlab's own checkpoints.

Every weights or checkpoint file detlab opens (backbone weights, torchvision detector files, classification and
detection checkpoints, fine-tuning sources) is read by :func:`read_torch_file`: ``torch.load(weights_only=True)``,
tensors and plain values only, never pickled code. A file torch cannot read so is a :class:`TorchFileError` that
says what the file is (empty, truncated, text, holding Python objects); torch's own message is never passed on,
because it suggests ``weights_only=False``, i.e. running the file's code.

This module sits below ``backbones``, ``models`` and ``engine``, which all read such files.
"""

import pickle
import re
from pathlib import Path

import torch

from detlab.errors import DetlabError

#: ``format`` of a detection checkpoint written by :mod:`detlab.engine.checkpoint` (detlab 0.2 on).
DETECTION_FORMAT = "detlab.detect/2"
#: ``format`` of detlab 0.1's detection checkpoints (flat model config), still read.
OLD_DETECTION_FORMAT = "detlab.detect/1"
DETECTION_FORMATS = (DETECTION_FORMAT, OLD_DETECTION_FORMAT)


class TorchFileError(DetlabError, ValueError):
    """A file ``torch.load(weights_only=True)`` cannot read. ``what`` says what the file is instead; the message
    is ``"<path>: <what>"``."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path}: {what}")
        self.path, self.what = path, what


def read_torch_file(path: str | Path, map_location="cpu", mmap: bool = False):
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True``.

    Args:
        mmap: map the tensors' storage from the file instead of reading it (cheap for a look at a large file's
            plain values); files of torch's legacy format, which cannot be mapped, are read in full.

    Raises:
        FileNotFoundError: no file at ``path``.
        TorchFileError: torch cannot read the file that way (see :func:`describe_unreadable`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as first:
        if mmap and not _is_zip(path):
            return read_torch_file(path, map_location)  # the legacy format: read in full
        # torch's own message suggests weights_only=False, i.e. running the file's code: never pass it on
        raise TorchFileError(path, describe_unreadable(path, first)) from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # torch.save's zip format (the only one that can be mapped)


def describe_unreadable(path: Path, error: Exception) -> str:
    """What a file is that ``torch.load(weights_only=True)`` failed on with ``error``."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    objects = re.search(r"GLOBAL ([\w.]+)", str(error))
    if isinstance(error, pickle.UnpicklingError) and objects:
        return (f"it holds Python objects ({objects[1]}), which detlab never writes and never loads: loading them "
                f"could run code")
    if head.startswith(b"PK\x03\x04"):
        return "a truncated or damaged torch file: an interrupted copy or download?"
    try:
        text = head.decode()
    except UnicodeDecodeError:
        return "its bytes are not torch.save's format"
    return f"a text file, not one torch.save wrote: it begins {text[:24]!r}"


def is_detection_checkpoint(state) -> bool:
    """Whether ``state`` (what a torch file held) is a detlab detection checkpoint of a format this detlab reads."""
    return isinstance(state, dict) and state.get("format") in DETECTION_FORMATS
