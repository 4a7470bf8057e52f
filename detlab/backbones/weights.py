"""Loading backbone weights: torchvision's ImageNet weights, a torchvision-layout state_dict, a detlab
classification checkpoint, or a backbone state_dict saved by detlab.

Whatever the source, the file must fit exactly: an error lists the missing and unexpected keys and the shape
mismatches (in the file's own key names), so that a wrong file never half-loads.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from detlab.backbones.backbone import Backbone
from detlab.errors import DetlabError
from detlab.torchfiles import TorchFileError, describe_unreadable, read_torch_file

#: ``format`` value of a checkpoint written by :mod:`detlab.classify`. Such a checkpoint is a plain dict with at
#: least ``backbone`` (a ``BACKBONES`` name) and ``model`` (the classifier's state_dict, whose backbone entries
#: are prefixed ``backbone.``). This module only reads it; it is the shared base between classification and
#: detection.
CLASSIFY_CHECKPOINT_FORMAT = "detlab.classify/1"

# Keys of torchvision's classification heads: a backbone has no head, so these are dropped, not "unexpected".
_TORCHVISION_HEAD_PREFIXES = ("fc.", "classifier.")
_MAX_LISTED = 12


class WeightsError(DetlabError, ValueError):
    """``model.weights`` names weights that cannot be had (no network, a file that is no weights) or do not fit."""


def load_weights(backbone: Backbone, weights: str | os.PathLike | None) -> None:
    """Load ``weights`` into ``backbone`` in place and record the source in ``backbone.weights``.

    Args:
        weights: ``None`` or ``"none"`` (keep the random init); ``"imagenet"`` (torchvision's default weights
            enum, downloaded and cached by torchvision under ``$TORCH_HOME/hub/checkpoints``); or the path of a
            torchvision-layout state_dict, a detlab classification checkpoint, or a saved ``backbone.state_dict()``.
    """
    if weights is None or weights == "none":
        backbone.weights = None
        return
    if weights == "imagenet":
        enum = backbone.imagenet_weights
        state = download_state_dict(enum)
        _load_torchvision_layout(backbone, state, source=f"torchvision weights {enum} ({enum.url})")
        backbone.weights = "imagenet"
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights {str(weights)!r} is neither 'imagenet', 'none' nor an existing file")
    try:
        state = read_torch_file(path)
    except TorchFileError as error:
        raise WeightsError(f"{path}: cannot be read as PyTorch weights ({error.what})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict or a detlab checkpoint, found a {type(state).__name__}")
    if state.get("format") == CLASSIFY_CHECKPOINT_FORMAT:
        _load_detlab_layout(backbone, _backbone_state(state, path, backbone.name), source=str(path))
    elif all(key.startswith("stages.") for key in state):
        _load_detlab_layout(backbone, state, source=str(path))
    else:
        _load_torchvision_layout(backbone, state, source=str(path))
    backbone.weights = str(path)


def download_state_dict(enum) -> dict:
    """The state_dict of a torchvision weights enum member, downloaded once into ``$TORCH_HOME/hub/checkpoints``
    by torchvision's weights API. No network, or a damaged cached file, is a one-line :class:`WeightsError` that
    names the file to put there or remove."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(enum.url).path).name
    try:
        return enum.get_state_dict(progress=False, weights_only=True)
    except OSError as error:  # urllib's errors: no network, proxy, HTTP
        raise WeightsError(f"cannot download {enum.url} ({error}); without network, put the file at {cached}") \
            from None
    except Exception as error:  # the cached file is there but unreadable: torch's text suggests weights_only=False
        what = describe_unreadable(cached, error) if cached.is_file() else type(error).__name__
        raise WeightsError(f"{cached}: the cached torchvision weights {enum} cannot be read ({what}); remove the "
                           f"file to download it again") from None


def _backbone_state(checkpoint: dict, path: Path, name: str) -> dict[str, torch.Tensor]:
    """The backbone entries of a classification checkpoint, with the ``backbone.`` prefix removed."""
    if checkpoint["backbone"] != name:
        raise WeightsError(
            f"{path} is a classification checkpoint of backbone {checkpoint['backbone']!r}; "
            f"it cannot be loaded into backbone {name!r}"
        )
    prefix = "backbone."
    return {key[len(prefix):]: value for key, value in checkpoint["model"].items() if key.startswith(prefix)}


def _load_detlab_layout(backbone: Backbone, state: dict[str, torch.Tensor], source: str) -> None:
    expected = backbone.state_dict()
    _check_fits(expected, state, source, backbone.name)
    backbone.load_state_dict({**expected, **state})


def _load_torchvision_layout(backbone: Backbone, state: dict[str, torch.Tensor], source: str) -> None:
    ours = backbone.state_dict()
    expected = {backbone.torchvision_key(key): value for key, value in ours.items()}
    state = {key: value for key, value in state.items() if not key.startswith(_TORCHVISION_HEAD_PREFIXES)}
    _check_fits(expected, state, source, backbone.name)
    state = {**expected, **state}
    backbone.load_state_dict({key: state[backbone.torchvision_key(key)] for key in ours})


def _check_fits(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str, name: str) -> None:
    check_state_fits(expected, state, f"{source} does not fit backbone {name!r}:")


def check_state_fits(expected: dict[str, torch.Tensor], state: dict, header: str) -> None:
    """Raise a :class:`WeightsError` (one line: ``header``, then the lists) naming every key and shape that differs between ``state``
    and ``expected``, both in the file's key names.

    ``num_batches_tracked`` may be absent (old torchvision files and torchvision's FrozenBatchNorm2d lack it); the
    model's own value is kept then.
    """
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state.keys())
        if not isinstance(state[key], torch.Tensor) or state[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lists = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            lists.append(f"{title} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}")
    raise WeightsError(f"{header} {'; '.join(lists)}")
