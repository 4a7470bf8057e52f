"""Classification checkpoints: self-describing plain dicts, written with detlab's one atomic writer
(:func:`detlab.engine.checkpoint.atomic_save`).

A checkpoint holds only dicts, lists, strings, numbers and tensors, so ``torch.load(path, weights_only=True)``
reads it. Keys: ``format``, ``detlab_version``, ``backbone``, ``classes``, ``weights`` (what the backbone started
from), ``mean``/``std``, ``config`` (the ClassifyConfig as a dict), ``epoch``, ``metrics``, ``history`` and
``model`` (the Classifier state_dict). ``detlab.backbones.build_backbone(name, weights=path)`` reads the backbone
part: this is the base that detection starts from. Reading one that is no classification checkpoint (any other file,
a detection checkpoint) is a :class:`~detlab.engine.checkpoint.CheckpointError` naming the file and what it is.
"""

import os

import detlab
from detlab.backbones import CLASSIFY_CHECKPOINT_FORMAT, build_backbone
from detlab.classify.model import Classifier
from detlab.engine.checkpoint import CheckpointError, foreign, read_checkpoint_file


def make_checkpoint(model: Classifier, classes: list[str], config: dict, **extra) -> dict:
    """The checkpoint dict of ``model``; ``extra`` (epoch, metrics, history) must be plain values too."""
    backbone = model.backbone
    return {
        "format": CLASSIFY_CHECKPOINT_FORMAT,
        "detlab_version": detlab.__version__,
        "backbone": backbone.name,
        "classes": list(classes),
        "weights": backbone.weights,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "config": config,
        **extra,
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }


def load_classifier(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """Rebuild the Classifier saved at ``path``; returns ``(model in eval mode, checkpoint dict)``."""
    checkpoint = read_checkpoint_file(path)
    problem = foreign(checkpoint)
    if problem:
        raise CheckpointError(f"{path}: not a detlab checkpoint ({problem})")
    if checkpoint["format"] != CLASSIFY_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a detlab classification checkpoint (format {checkpoint['format']!r}, "
                              f"expected {CLASSIFY_CHECKPOINT_FORMAT!r})")
    backbone = build_backbone(checkpoint["backbone"], levels=("c5",))
    config = checkpoint["config"]
    model = Classifier(backbone, len(checkpoint["classes"]), config["head"], config["dropout"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit a {checkpoint['backbone']} classifier of "
                              f"{len(checkpoint['classes'])} classes ({str(e).splitlines()[0]})") from None
    backbone.weights = str(path)
    return model.eval(), checkpoint
