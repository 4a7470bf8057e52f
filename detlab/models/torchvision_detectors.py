"""torchvision's Faster R-CNN checkpoints as starting weights of detlab's :class:`~detlab.models.faster_rcnn.FasterRCNN`.

``model.weights`` may name one of :data:`TORCHVISION_DETECTORS` (downloaded once by torchvision's weights API into
``$TORCH_HOME/hub/checkpoints``) or be the path of a file holding such a state_dict. Every tensor is mapped to
detlab's key; any key left over on either side is an error listing them, so a wrong file never half-loads.

The class predictor: when every class of the dataset is one of the checkpoint's COCO categories, its rows for
those classes are kept, in the dataset's label order (fine-tuning on COCO, or on a subset of it, starts from the
trained detector); otherwise the class and box predictors are new (torchvision's fine-tuning tutorial) while the
backbone, FPN, RPN and box head keep the checkpoint's weights. torchvision supplies weights here, never model code.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from detlab.backbones.weights import WeightsError, check_state_fits, download_state_dict
from detlab.torchfiles import TorchFileError, read_torch_file

PREDICTOR_KEYS = ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                  "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias")


@dataclass(frozen=True)
class TorchvisionDetector:
    """A torchvision detector checkpoint: its weights enum member and the detlab architecture it fits (the
    torchvision settings that go with it, e.g. the 320 model's input size, are in the configs of ``configs/``)."""

    weights: str
    backbone: str
    neck: str = "fpn"


TORCHVISION_DETECTORS = {
    "fasterrcnn_resnet50_fpn": TorchvisionDetector("FasterRCNN_ResNet50_FPN_Weights.COCO_V1", "resnet50"),
    "fasterrcnn_mobilenet_v3_large_fpn": TorchvisionDetector(
        "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1", "mobilenet_v3_large"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": TorchvisionDetector(
        "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1", "mobilenet_v3_large"),
}

#: torchvision detectors whose heads detlab does not build, and why.
UNSUPPORTED = {
    "fasterrcnn_resnet50_fpn_v2": "its FPN and RPN head use BatchNorm and its box head is four conv layers and "
                                  "one fc (torchvision's FastRCNNConvFCHead), which detlab does not build",
}


@dataclass(frozen=True)
class DetectorFile:
    """A local file holding a torchvision Faster R-CNN state_dict."""

    path: Path
    state: dict


def detector_weights(weights) -> TorchvisionDetector | DetectorFile | None:
    """What ``model.weights`` names if it is a whole detector (a torchvision name, or a file of a torchvision
    detector state_dict); None for backbone weights (None, ``"imagenet"``, a backbone or classification file)."""
    if weights is None or weights in ("none", "imagenet"):
        return None
    name = str(weights)
    if name in TORCHVISION_DETECTORS:
        return TORCHVISION_DETECTORS[name]
    if name in UNSUPPORTED:
        raise WeightsError(f"model.weights = {name!r}: not supported, {UNSUPPORTED[name]}; supported: "
                         f"{', '.join(TORCHVISION_DETECTORS)}")
    path = Path(name)
    if name.startswith("fasterrcnn_") and not path.exists():
        raise WeightsError(f"model.weights = {name!r} is not a torchvision detector detlab loads; valid: "
                         f"{', '.join(TORCHVISION_DETECTORS)} (or imagenet, none, a file)")
    if not path.is_file():
        return None  # the backbone loader gives the error
    try:
        state = read_torch_file(path, mmap=True)  # a look at the keys; a large file is not read in full
    except TorchFileError:
        return None  # the backbone loader gives the error
    if isinstance(state, dict) and any(str(key).startswith(("rpn.", "roi_heads.")) for key in state):
        return DetectorFile(path, state)
    return None


def check_fits(detector, cfg) -> None:
    """A named torchvision detector fits only its own backbone and neck: say which settings it needs."""
    if isinstance(detector, TorchvisionDetector):
        section = cfg.faster_rcnn
        if (cfg.backbone, section.neck) != (detector.backbone, detector.neck):
            raise WeightsError(f"model.weights = {cfg.weights!r} is a {detector.backbone} {detector.neck.upper()} "
                             f"detector; set model.backbone={detector.backbone} and "
                             f"model.faster_rcnn.neck={detector.neck} (this config has {cfg.backbone}, "
                             f"{section.neck})")


def state_dict_of(detector) -> tuple[dict, list[str] | None, str]:
    """(state_dict, category names with background first or None, a description for messages)."""
    if isinstance(detector, DetectorFile):
        rows = detector.state.get(PREDICTOR_KEYS[0])
        categories = coco_categories() if rows is not None and rows.shape[0] == 91 else None
        return detector.state, categories, str(detector.path)
    import torchvision

    enum = torchvision.models.get_weight(detector.weights)
    state = download_state_dict(enum)
    return state, list(enum.meta["categories"]), f"torchvision weights {detector.weights} ({enum.url})"


def coco_categories() -> list[str]:
    """The 91 entries of torchvision's COCO detectors: ``__background__``, the 80 names, ``N/A`` for unused ids."""
    import torchvision

    return list(torchvision.models.get_weight("FasterRCNN_ResNet50_FPN_Weights.COCO_V1").meta["categories"])


def torchvision_to_detlab_keys(model) -> dict[str, str]:
    """``{torchvision detector key: detlab key}`` of every tensor of ``model``'s state_dict (current torchvision
    names; :func:`normalise_key` maps the older ones)."""
    mapping = {}
    for key in model.state_dict():
        if key.startswith("backbone."):
            classification = model.backbone.torchvision_key(key[len("backbone."):])
            body = classification.removeprefix("features.")  # MobileNets: the body is torchvision's `features`
            mapping["backbone.body." + body] = key
        elif key.startswith("neck."):
            mapping["backbone.fpn." + re.sub(r"^neck\.(\w+_blocks\.\d+)\.", r"\1.0.", key)] = key
        elif key.startswith("rpn.head.conv."):
            mapping["rpn.head.conv.0.0." + key[len("rpn.head.conv."):]] = key
        else:
            mapping[key] = key
    return mapping


def normalise_key(key: str) -> str:
    """Older torchvision key names (files saved before its FPN and RPN head used ``Conv2dNormActivation``, e.g.
    the released ``fasterrcnn_resnet50_fpn`` weights) -> the current ones."""
    key = re.sub(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3", key)
    return re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", key)


def load_into(model, detector, class_names: list[str] | None) -> None:
    """Load a torchvision detector checkpoint into ``model`` (a detlab FasterRCNN) in place."""
    state, categories, source = state_dict_of(detector)
    state = {normalise_key(key): value for key, value in state.items()}
    mapping = torchvision_to_detlab_keys(model)
    ours = model.state_dict()
    predictor = select_predictor_rows(state, categories, class_names, ours[PREDICTOR_KEYS[0]].shape[0])
    # the predictor's rows may differ (other classes: it is replaced); everything else must fit exactly
    expected = {key: ours[mine] for key, mine in mapping.items() if key not in PREDICTOR_KEYS}
    given = {key: value for key, value in state.items() if key not in PREDICTOR_KEYS}
    check_state_fits(expected, given, f"{source} does not fit this Faster R-CNN ({model.backbone.name}, "
                                      f"{'FPN' if model.neck is not None else 'C4'}):")
    loaded = {mapping[key]: value for key, value in state.items() if key not in PREDICTOR_KEYS}
    loaded.update(predictor)
    model.load_state_dict({**ours, **loaded})
    model.backbone.weights = source


def select_predictor_rows(state: dict, categories: list[str] | None, class_names: list[str] | None,
                          rows: int) -> dict:
    """The predictor tensors to load (detlab keys = torchvision keys): the checkpoint's rows of background and of
    each of ``class_names`` when all of them are its categories; all of its rows when the model has as many
    classes and no names were given; nothing (a new predictor) otherwise."""
    if any(key not in state for key in PREDICTOR_KEYS):
        return {}
    theirs = state[PREDICTOR_KEYS[0]].shape[0]
    if class_names is not None and categories is not None and all(name in categories[1:] for name in class_names):
        keep = [0] + [categories.index(name) for name in class_names]
    elif class_names is None and theirs == rows:
        keep = list(range(theirs))
    else:
        return {}
    index = torch.tensor(keep)
    box_index = (index[:, None] * 4 + torch.arange(4)).flatten()
    cls_w, cls_b, box_w, box_b = (state[key] for key in PREDICTOR_KEYS)
    return dict(zip(PREDICTOR_KEYS, (cls_w[index], cls_b[index], box_w[box_index], box_b[box_index])))
