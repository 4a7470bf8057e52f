"""Checkpoints: the one atomic writer of detlab, self-describing detection checkpoints, and a detector from one.

Every checkpoint detlab writes (detection and classification) goes through :func:`atomic_save`: a temporary file in
the same folder, fsync, rename; a failed write removes its temporary file and leaves the previous file intact.

A detection checkpoint is a dict of tensors and plain Python values, loadable with ``torch.load(weights_only=True)``:
``format``, ``detlab_version``, ``kind``, ``config`` (nested dict), ``class_names``, ``model`` (a state_dict),
``epoch``. Two kinds:

- ``"training"`` (``last.pt``): everything ``--resume`` needs, also ``ema``, ``optimizer``, ``scheduler``,
  ``scaler``, ``rng``, ``history``, ``best_metric``, ``best_epoch``, ``planned_epochs``, ``train_seconds``;
- ``"inference"`` (``best.pt``): the weights to predict with (the EMA's when the run kept one: ``weights`` says
  ``"ema"`` or ``"model"``) and ``metric``, the validation figure that made it the best; a quarter of the size.

Format ``detlab.detect/1`` (detlab 0.1, the flat model config) still loads: its config is migrated
(:func:`detlab.config.migrate_flat_layout`).
"""

import dataclasses
import os
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import detlab
from detlab.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, migrate_flat_layout
from detlab.errors import DetlabError
from detlab.models import architecture_differences, build_model

FORMAT = "detlab.detect/2"
#: The format of detlab 0.1, still read: its config is migrated on load.
OLD_FORMAT = "detlab.detect/1"
KINDS = ("training", "inference")


class CheckpointError(DetlabError, ValueError):
    """A file that is not a usable detection checkpoint here (unreadable, another format, weights that do not fit,
    another model to resume); the message names the file."""


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` without ever leaving a truncated file there: written to a temporary file in
    the same folder (same file system, so the rename is atomic), flushed to disk, then renamed over ``path``. If
    anything fails, the temporary file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name (exclusive create, so never someone else's file) with the permissions the umask gives, as a
    # plain open would (mkstemp's are 0600)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (the folder entry) where the system allows it: POSIX folders can be opened and
    synced; some file systems refuse, and then the checkpoint is written all the same."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a detection checkpoint (``state`` plus ``format`` and ``detlab_version``) with :func:`atomic_save`."""
    atomic_save({"format": FORMAT, "detlab_version": detlab.__version__, **state}, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a detection checkpoint safely (``weights_only=True``), its config in today's layout; anything else is a
    clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: cannot be read as a torch checkpoint "
                              f"({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, OLD_FORMAT):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path}: not a detlab detection checkpoint (format {found!r}, "
                              f"expected {FORMAT!r} or {OLD_FORMAT!r})")
    if state["format"] == OLD_FORMAT:  # detlab 0.1 wrote only full training checkpoints
        state = {**state, "kind": "training", "config": migrate_flat_layout(state["config"])}
    if state.get("kind") not in KINDS:
        raise CheckpointError(f"checkpoint {path}: kind {state.get('kind')!r} is none of {', '.join(KINDS)}")
    return state


def inference_weights(state: dict, use_ema: bool = True, path: str | Path = "") -> dict:
    """The state_dict to predict with: a training checkpoint's EMA weights when it has them (and ``use_ema``),
    else its ``model``; an inference checkpoint's weights (which are the EMA's when its run kept one, so
    ``use_ema=False`` asks for weights it does not have: an error)."""
    if state["kind"] == "inference":
        if not use_ema and state.get("weights") == "ema":
            raise CheckpointError(f"checkpoint {path}: use_ema=False, but it holds only the EMA weights that were "
                                  f"evaluated; the raw weights are in the run's last.pt")
        return state["model"]
    if use_ema and state.get("ema"):
        return state["ema"]["module"]
    return state["model"]


@dataclass
class LoadedDetector:
    """A detector rebuilt from a checkpoint: ``model`` (eval mode), its ``config`` and ``class_names``."""

    model: torch.nn.Module
    config: Config
    class_names: list[str]


def load_detector(path: str | Path, overrides: list[str] = (), use_ema: bool = True) -> LoadedDetector:
    """Rebuild the detector a checkpoint holds (its EMA weights when it has them and ``use_ema``).

    ``overrides`` change its config first, e.g. the inference settings ``["model.score_threshold=0.1"]`` or the
    dataset to evaluate on; one that changes an architecture key (:func:`detlab.models.architecture`) is refused,
    naming the key: the weights fit only the checkpoint's architecture."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"], source=f"checkpoint {path}")
    if overrides:
        changed = load_config(None, overrides, base=config_to_dict(cfg))
        differences = architecture_differences(cfg.model, changed.model)
        if differences:
            key, theirs, ours = differences[0]
            raise ConfigError(f"checkpoint {path}: {key} = {ours!r} would change the architecture its weights were "
                              f"trained for ({key} = {theirs!r}); only settings such as the inference thresholds "
                              f"or the dataset can change on load")
        cfg = changed
    class_names = list(state["class_names"])
    # the weights come from the checkpoint: do not load the backbone's pretrained ones again
    model = build_model(dataclasses.replace(cfg.model, weights=None), len(class_names))
    try:
        model.load_state_dict(inference_weights(state, use_ema, path))
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: its weights do not fit a {cfg.model.name} with backbone "
                         f"{cfg.model.backbone} and {len(class_names)} classes ({first})") from e
    return LoadedDetector(model.eval(), cfg, class_names)


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
