"""Self-describing training checkpoints, written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values: ``format``, ``detlab_version``, ``config`` (nested
dict), ``class_names``, ``model`` and ``ema`` (state_dicts), ``optimizer``, ``scheduler``, ``scaler``, ``epoch``
(epochs completed), ``rng``, ``history`` (per-epoch log records) and ``best_metric``.
"""

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

import detlab

FORMAT = "detlab.detect/1"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` through a temporary file in the same folder and a rename, so a crash mid-write
    never leaves a truncated checkpoint where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "detlab_version": detlab.__version__, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a detection checkpoint safely (``weights_only=True``); anything else is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path}: not a detlab detection checkpoint (format {found!r}, "
                         f"expected {FORMAT!r})")
    return state


def rng_state() -> dict:
    """Every RNG the training touches, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
