"""Detector families and the one table that names them.

A family is what a user picks with ``model.name``. It brings, in its own file: its config section (a dataclass,
``model.<name>.*`` in YAML and ``--set``), its build function, the input pipeline its config asks for (see
:mod:`detlab.data.inputs`), and which of its section's keys define the architecture. The engine, the tools and
``Detector`` ask the family through the functions below; none of them tests ``model.name``.

Every model follows torchvision's detection contract: ``model(images, targets) -> dict of losses`` in train mode,
``model(images) -> [{"boxes": Tensor[K, 4] xyxy original pixels, "scores": Tensor[K], "labels": Tensor[K]}]`` in
eval mode, labels 0..C-1.

Adding a family = a model file (+ its heads / necks), a line in :data:`MODELS`, configs and tests.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from detlab.models import faster_rcnn, finetune, yolov3


@dataclass(frozen=True)
class ModelFamily:
    """What detlab knows of a detector family.

    Attributes:
        config: the dataclass of its ``model.<name>`` section. Loading checks each field's ``choices`` and
            ``check`` (:func:`detlab.settings.setting`), then, where the class has it, the method
            ``problems(backbone) -> {key: problem}``: what does not fit ``model.backbone``.
        build: ``build(model_config, num_classes, class_names=None) -> nn.Module``, ``model_config`` a
            :class:`detlab.config.ModelConfig`; ``class_names`` (the dataset's, when known) lets pretrained
            weights keep the predictor rows of the classes they share.
        inputs: ``inputs(model_config)`` -> its input pipeline (:mod:`detlab.data.inputs`).
        architecture_keys: the section's keys that define the architecture, compared by ``--resume`` and by
            checkpoint loading (besides the shared ``model.name`` and ``model.backbone``).
        training_keys: the section's other keys that shape the training (targets, loss, input size): ``--resume``
            refuses to change them too.
        resume_applies: the section's keys a resumed run may change (inference settings, memory layout). With
            the two above they name every key of the section (see :mod:`detlab.engine.resume`).
        input_size_keys: the section's keys that set the input's size, named when a batch does not fit in memory.
        class_rows: ``class_rows(state_dict key) -> ClassRows | None``: which tensors hold rows per class and
            how (:class:`detlab.models.finetune.ClassRows`), for fine-tuning from a detection checkpoint to
            other classes.
    """

    config: type
    build: Callable[..., nn.Module]
    inputs: Callable
    architecture_keys: tuple[str, ...]
    training_keys: tuple[str, ...] = ()
    resume_applies: tuple[str, ...] = ()
    input_size_keys: tuple[str, ...] = ()
    class_rows: Callable[[str], finetune.ClassRows | None] = lambda key: None


# model.name -> family
MODELS = {
    "yolov3": ModelFamily(yolov3.YOLOv3Config, yolov3.build_yolov3, yolov3.yolov3_inputs, yolov3.ARCHITECTURE_KEYS,
                          yolov3.TRAINING_KEYS, yolov3.RESUME_APPLIES, yolov3.INPUT_SIZE_KEYS, yolov3.class_rows),
    "faster_rcnn": ModelFamily(faster_rcnn.FasterRCNNConfig, faster_rcnn.build_faster_rcnn,
                               faster_rcnn.faster_rcnn_inputs, faster_rcnn.ARCHITECTURE_KEYS,
                               faster_rcnn.TRAINING_KEYS, faster_rcnn.RESUME_APPLIES, faster_rcnn.INPUT_SIZE_KEYS,
                               faster_rcnn.class_rows),
}

#: Shared ``model.*`` keys that define the architecture of every family.
SHARED_ARCHITECTURE_KEYS = ("name", "backbone")


def model_family(name: str) -> ModelFamily:
    """The family ``model.name`` names; an unknown name is an error listing the valid ones."""
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; valid choices: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(cfg, num_classes: int, class_names: list[str] | None = None) -> nn.Module:
    """The detector of a :class:`detlab.config.ModelConfig` with ``num_classes`` classes (labels 0..C-1), named
    ``class_names`` when given.

    ``model.weights`` may be a detlab detection checkpoint: the model then starts from all of its weights, the
    class rows matched by name (:mod:`detlab.models.finetune`); ``model.initial_weights`` says what was kept."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{num_classes} classes but {len(class_names)} class names")
    family = model_family(cfg.name)
    checkpoint = finetune.detection_checkpoint(cfg.weights)
    if checkpoint is not None:
        finetune.check_family(checkpoint, cfg)
    model = family.build(cfg, num_classes, class_names)
    if checkpoint is not None:
        model.initial_weights = finetune.load_detection_checkpoint(model, checkpoint, family.class_rows,
                                                                   class_names, num_classes)
    return model


def input_pipeline(cfg):
    """How the family of ``cfg`` (a ModelConfig) wants its training images (:mod:`detlab.data.inputs`)."""
    return model_family(cfg.name).inputs(cfg)


def architecture(cfg) -> dict:
    """``{dotted key: value}`` of the settings of ``cfg`` (a ModelConfig) that define the architecture, e.g.
    ``{"model.name": "yolov3", "model.backbone": "resnet18", "model.yolov3.image_size": 128, ...}``."""
    keys = {f"model.{key}": getattr(cfg, key) for key in SHARED_ARCHITECTURE_KEYS}
    section = cfg.section
    keys.update({f"model.{cfg.name}.{key}": getattr(section, key) for key in model_family(cfg.name).architecture_keys})
    return keys


def input_size(cfg) -> dict:
    """``{dotted key: value}`` of the settings of ``cfg`` (a ModelConfig) that set the input's size, e.g.
    ``{"model.yolov3.image_size": 416}``: what lowers the memory a batch needs."""
    return {f"model.{cfg.name}.{key}": getattr(cfg.section, key) for key in model_family(cfg.name).input_size_keys}


def architecture_differences(theirs, ours) -> list[tuple[str, object, object]]:
    """``(dotted key, their value, our value)`` for every architecture setting where two ModelConfigs differ (a
    key only one family has counts as a difference, its value None on the other side)."""
    a, b = architecture(theirs), architecture(ours)
    return [(key, a.get(key), b.get(key)) for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]


__all__ = ["MODELS", "ModelFamily", "SHARED_ARCHITECTURE_KEYS", "architecture", "architecture_differences",
           "build_model", "input_pipeline", "input_size", "model_family"]
