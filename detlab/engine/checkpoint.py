"""Checkpoints: the one atomic writer of detlab, self-describing detection checkpoints, and a detector from one.

Every checkpoint detlab writes (detection and classification) goes through :func:`atomic_save`: a temporary file in
the same folder, fsync, rename; a failed write removes its temporary file and leaves the previous file intact. A
write killed outright (SIGKILL, power loss) cannot clean up: its temporary file ``<name>.<pid>.<hex>.tmp`` stays
until the next run in that folder removes it (:func:`remove_interrupted_writes`).

Every checkpoint is read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint_file`, on :mod:`detlab.torchfiles`): tensors and plain
values only, never pickled code. A file that is no detlab checkpoint (empty, truncated, random bytes, JSON, a bare
tensor or state_dict, one holding Python objects) is a :class:`CheckpointError` naming the file and what it is.

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
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import detlab
from detlab.backbones import CLASSIFY_CHECKPOINT_FORMAT
from detlab.config import (Config, ConfigError, config_from_dict, config_to_dict, load_config, migrate_flat_layout,
                           parse_overrides)
from detlab.errors import DetlabError
from detlab.models import architecture, architecture_differences, build_model
from detlab.torchfiles import DETECTION_FORMAT, OLD_DETECTION_FORMAT, TorchFileError, read_torch_file

FORMAT = DETECTION_FORMAT
#: The format of detlab 0.1, still read: its config is migrated on load.
OLD_FORMAT = OLD_DETECTION_FORMAT
KINDS = ("training", "inference")


class CheckpointError(DetlabError, ValueError):
    """A file that is not a usable detection checkpoint here (unreadable, another format, weights that do not fit,
    another model to resume); the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path where there is no file."""


#: The temporary file of a write in progress: ``<name>.<pid of the writer>.<8 hex digits>.tmp``; earlier detlab wrote
#: ``<name>.<8 hex digits>.tmp`` (no pid).
_TEMPORARY = re.compile(r"(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[0-9a-f]{8}\.tmp")


def atomic_write(path: str | Path, write: Callable) -> None:
    """Call ``write(binary file)`` on a temporary file in the folder of ``path`` (same file system, so the rename is
    atomic), flush it to disk, then rename it over ``path``: ``path`` is never left truncated. If anything fails,
    the temporary file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name (exclusive create, so never someone else's file) with the permissions the umask gives, as a
    # plain open would (mkstemp's are 0600); the pid tells the next run whether its writer is still alive
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` with :func:`atomic_write`: never a truncated file there."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_interrupted_writes(folder: str | Path, names: tuple[str, ...], print_fn=print) -> list[Path]:
    """Remove the temporary files that killed :func:`atomic_write` calls left in ``folder`` for the files
    ``names`` (e.g. ``("last.pt", "best.pt")``): only names of detlab's own pattern, and only those whose writer
    is no longer running. Prints how many (and their size) when there were any; returns their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for path in sorted(folder.iterdir()):
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["name"] in names and path.is_file() and not _running(match["pid"]):
            stale.append(path)
    size = sum(path.stat().st_size for path in stale)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print_fn(f"{folder}: removed {len(stale)} temporary file{'s' * (len(stale) > 1)} of interrupted writes "
                 f"({size / 1e6:.1f} MB: {', '.join(path.name for path in stale)})")
    return stale


def _running(pid: str | None) -> bool:
    """Whether process ``pid`` (a temporary file's writer) still runs; a file without a pid (of an earlier detlab) or
    of a pid that is gone is a leftover. Where processes cannot be probed harmlessly (not POSIX), assume it runs."""
    if pid is None:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no pid can be: not ours to remove
        return True
    return True


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


def read_checkpoint_file(path: str | Path, map_location="cpu"):
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` (tensors and plain values only).
    A missing file is a :class:`CheckpointNotFoundError`; a file torch cannot read that way is a
    :class:`CheckpointError` ``"<path>: not a detlab checkpoint (<what it is>)"``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    try:
        return read_torch_file(path, map_location)
    except TorchFileError as e:
        raise CheckpointError(f"{path}: not a detlab checkpoint ({e.what})") from None


def foreign(state) -> str | None:
    """Why ``state`` (what a checkpoint file held) is no detlab checkpoint of any kind, None when it is one (a dict
    with a ``format``): ``"<path>: not a detlab checkpoint (" + foreign(state) + ")"``."""
    if not isinstance(state, dict):
        return f"torch.save of a {type(state).__name__}, not of the dict of a detlab checkpoint"
    if isinstance(state.get("format"), str):
        return None
    if state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return (f"a bare state_dict of {len(state)} tensors, e.g. torchvision's: weights without a config; a "
                f"backbone's or torchvision detector's weights start a new run as model.weights")
    keys = ", ".join(map(str, list(state)[:6])) + (", ..." if len(state) > 6 else "")
    return f"a dict without detlab's 'format' key (keys: {keys or 'none'})"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a detection checkpoint (``state`` plus ``format`` and ``detlab_version``) with :func:`atomic_save`."""
    atomic_save({"format": FORMAT, "detlab_version": detlab.__version__, **state}, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a detection checkpoint safely (:func:`read_checkpoint_file`), its config in today's layout; anything
    else is a :class:`CheckpointError` naming the file and saying what it is."""
    state = read_checkpoint_file(path, map_location)
    problem = foreign(state)
    if problem:
        raise CheckpointError(f"{path}: not a detlab checkpoint ({problem})")
    found = state["format"]
    if found == CLASSIFY_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a detlab detection checkpoint (a classification checkpoint, format "
                              f"{found!r}: its backbone starts a detector as model.weights={path})")
    if found not in (FORMAT, OLD_FORMAT):
        newer = " (of a newer detlab?)" if found.startswith("detlab.detect/") else ""
        raise CheckpointError(f"{path}: not a detlab detection checkpoint (format {found!r}{newer}; detlab "
                              f"{detlab.__version__} reads {FORMAT!r} and {OLD_FORMAT!r})")
    if found == OLD_FORMAT:
        state = _migrate_old_format(state)
    if state.get("kind") not in KINDS:
        raise CheckpointError(f"checkpoint {path}: kind {state.get('kind')!r} is none of {', '.join(KINDS)}")
    return state


def _migrate_old_format(state: dict) -> dict:
    """A detlab 0.1 checkpoint (``OLD_FORMAT``, always a full training checkpoint) in today's layout. 0.1 wrote its
    default VOC splits (trainval -> test) into every config, even a synthetic one; today they are None, which
    means the same for VOC (and nothing for synthetic data), so a resumed run sees no change in them."""
    config = migrate_flat_layout(state["config"])
    data = config.get("data", {})
    if data.get("dataset") in ("voc", "synthetic") and (data.get("train_splits"), data.get("val_splits")) == (
            "trainval", "test"):
        data["train_splits"] = data["val_splits"] = None
    return {**state, "kind": "training", "config": config}


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
        # an override of the architecture is refused as such, before the checks across keys that it would fail
        # against the checkpoint's other keys (a neck whose levels its anchor sizes do not match, ...)
        differences = _architecture_overrides(cfg, overrides)
        changed = None if differences else load_config(None, overrides, base=config_to_dict(cfg))
        differences = differences or architecture_differences(cfg.model, changed.model)
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


def _architecture_overrides(cfg: Config, overrides: list[str]) -> list[tuple[str, object, object]]:
    """``(dotted key, checkpoint value, override value)`` of each override (``"key=value"``) that sets an
    architecture key of ``cfg`` to another value."""
    current = architecture(cfg.model)
    changes = []
    for override, (_, layer) in zip(overrides, parse_overrides(overrides)):
        key = override.partition("=")[0].strip()
        if key in current:
            value = layer
            for part in key.split("."):
                value = value[part]
            if value != current[key]:
                changes.append((key, current[key], value))
    return changes


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
