"""Fine-tuning from a detlab detection checkpoint: ``model.weights=<run>/best.pt`` (or ``last.pt``).

The new model starts from every weight of the checkpoint's detector (its EMA weights when the run kept one, as
evaluation and ``best.pt`` do) - backbone, neck and heads - and trains on the dataset of the new config. The
architecture must be the checkpoint's: same ``model.name`` and ``model.backbone``, and every tensor the same
shape, except the class predictor's rows, which follow the classes:

- a class of the new dataset that the checkpoint also has (same name) keeps its trained rows, wherever it sits
  in either label order;
- a new class gets freshly initialised rows (the family's own initialisation, priors included);
- the rows that are not per class (Faster R-CNN's background, YOLO's box and objectness outputs) are kept.

Which tensors hold per-class rows, and how they are laid out, is each family's ``class_rows`` (see
:class:`ClassRows`). Anything else that does not fit is an error listing the keys, as for every weights file.
Optimizer state, schedule and epoch are not taken: this starts a new run (``--resume`` continues one).
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from detlab.backbones.weights import WeightsError, check_state_fits
from detlab.torchfiles import TorchFileError, is_detection_checkpoint, read_torch_file


@dataclass(frozen=True)
class ClassRows:
    """How a tensor's dim-0 rows depend on the number of classes C: ``groups`` blocks (e.g. one per anchor), each
    ``fixed`` rows that are not per class, then ``per_class`` rows for each class in label order.

    Faster R-CNN's ``cls_score`` is ``ClassRows(1, 1, 1)`` (background, then the classes), its ``bbox_pred``
    ``ClassRows(1, 4, 4)``; a YOLO predictor with 3 anchors of ``(x, y, w, h, obj, classes...)`` is
    ``ClassRows(3, 5, 1)``."""

    groups: int
    fixed: int
    per_class: int

    def classes_of(self, rows: int) -> int | None:
        """The C that ``rows`` rows stand for; None when no C gives that many."""
        per_group, remainder = divmod(rows, self.groups)
        classes, rest = divmod(per_group - self.fixed, self.per_class)
        return classes if remainder == 0 and rest == 0 and classes >= 0 else None


@dataclass
class DetectionCheckpoint:
    """A detlab detection checkpoint read as fine-tuning weights: its ``path``, the ``state`` it holds, and what
    it says about its model."""

    path: Path
    state: dict

    @property
    def model_config(self) -> dict:
        return self.state.get("config", {}).get("model", {})

    @property
    def class_names(self) -> list[str]:
        return list(self.state.get("class_names", []))

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights evaluation used: the EMA's when the checkpoint has them, else the model's."""
        ema = self.state.get("ema")
        return ema["module"] if self.state.get("kind") == "training" and ema else self.state["model"]


def detection_checkpoint(weights) -> DetectionCheckpoint | None:
    """The detlab detection checkpoint ``model.weights`` names, None when it names something else (None,
    ``"imagenet"``, a torchvision name, a backbone, classification or torchvision file, or no file: their own
    loaders judge those). The file is memory-mapped: a look at a large training checkpoint costs little."""
    if weights is None or not Path(str(weights)).is_file():
        return None
    try:
        state = read_torch_file(weights, mmap=True)
    except TorchFileError:
        return None  # the backbone loader names the file and what it is
    return DetectionCheckpoint(Path(str(weights)), state) if is_detection_checkpoint(state) else None


def backbone_weights(weights):
    """What a family passes to ``build_backbone`` for ``model.weights``: nothing for a detection checkpoint (its
    weights are loaded whole by :func:`load_detection_checkpoint` once the model is built)."""
    return None if detection_checkpoint(weights) is not None else weights


def check_family(checkpoint: DetectionCheckpoint, cfg) -> None:
    """The checkpoint's model must be of ``cfg``'s family and backbone (a ModelConfig): say which to set."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}  # detlab 0.1 wrote no model.name
    for key in ("name", "backbone"):
        theirs, ours = checkpoint.model_config.get(key, defaults[key]), getattr(cfg, key)
        if theirs != ours:
            raise WeightsError(f"model.weights = {str(checkpoint.path)!r} is a detector with model.{key} = "
                               f"{theirs!r}; fine-tuning from it needs the same architecture: set model.{key}="
                               f"{theirs} (this config has {ours!r})")


def class_sources(their_names: list[str], our_names: list[str] | None, our_count: int) -> list[int | None]:
    """For each of our classes, the label of the same class in the checkpoint, None for a new class. Without our
    names (a model built for no dataset), the checkpoint's labels in order when the counts agree."""
    if our_names is None:
        return list(range(our_count)) if len(their_names) == our_count else [None] * our_count
    position = {name: label for label, name in enumerate(their_names)}
    return [position.get(name) for name in our_names]


def remap_class_rows(theirs: torch.Tensor, ours: torch.Tensor, layout: ClassRows,
                     sources: list[int | None]) -> torch.Tensor:
    """``ours`` (Tensor[R_ours, ...]) with the checkpoint's rows put in: every group's fixed rows, and the rows of
    each class whose ``sources`` entry names its label in ``theirs`` (Tensor[R_theirs, ...])."""
    their_classes = layout.classes_of(theirs.shape[0])
    out = ours.detach().clone()
    their_group, our_group = theirs.shape[0] // layout.groups, ours.shape[0] // layout.groups
    for group in range(layout.groups):
        t0, o0 = group * their_group, group * our_group
        out[o0:o0 + layout.fixed] = theirs[t0:t0 + layout.fixed]
        for label, source in enumerate(sources):
            if source is not None and source < their_classes:
                o = o0 + layout.fixed + label * layout.per_class
                t = t0 + layout.fixed + source * layout.per_class
                out[o:o + layout.per_class] = theirs[t:t + layout.per_class]
    return out


def load_detection_checkpoint(model: nn.Module, checkpoint: DetectionCheckpoint, class_rows,
                              class_names: list[str] | None, num_classes: int) -> str:
    """Load ``checkpoint``'s weights into ``model`` (built for ``num_classes`` classes named ``class_names``) in
    place, the class rows remapped by name (``class_rows(key) -> ClassRows | None``, the family's). Returns the
    line that says what was kept."""
    source = str(checkpoint.path)
    state = dict(checkpoint.weights())
    ours = model.state_dict()
    their_names = checkpoint.class_names
    per_class = {key: layout for key in ours if (layout := class_rows(key)) is not None}
    for key, layout in per_class.items():
        if key in state and layout.classes_of(state[key].shape[0]) != len(their_names):
            raise WeightsError(f"{source}: {key} has {state[key].shape[0]} rows, which is not "
                               f"{len(their_names)} classes as its class_names say: a damaged checkpoint?")
    # FrozenBatchNorm2d has no step counter: a checkpoint trained with plain BatchNorm carries one it does not need
    state = {key: value for key, value in state.items()
             if key in ours or not key.endswith("num_batches_tracked")}
    expected = {key: value for key, value in ours.items() if key not in per_class}
    given = {key: value for key, value in state.items() if key not in per_class}
    check_state_fits(expected, given, f"{source} does not fit this {type(model).__name__} (model.weights "
                                      f"fine-tunes a detector of the same architecture):")
    missing = sorted(per_class.keys() - state.keys())
    if missing:
        raise WeightsError(f"{source} does not fit this {type(model).__name__}: missing keys {', '.join(missing)}")
    sources = class_sources(their_names, class_names, num_classes)
    for key, layout in per_class.items():
        if state[key].shape[1:] != ours[key].shape[1:]:
            raise WeightsError(f"{source} does not fit this {type(model).__name__}: {key}: file "
                               f"{tuple(state[key].shape)} vs model {tuple(ours[key].shape)}")
        state[key] = remap_class_rows(state[key], ours[key], layout, sources)
    model.load_state_dict({**ours, **state})
    kept = [name for name, s in zip(class_names or [], sources) if s is not None]
    new = [name for name, s in zip(class_names or [], sources) if s is None]
    summary = f"fine-tuning from {source} ({checkpoint.state.get('kind')} checkpoint, epoch " \
              f"{checkpoint.state.get('epoch')}): "
    if class_names is None:
        return summary + ("its class rows in label order" if sources and sources[0] is not None
                          else "new class rows")
    return summary + (f"class rows kept for {len(kept)} of {len(sources)} classes"
                      + (f"; new for {', '.join(new)}" if new else ""))
