"""Detector: a trained detection checkpoint ready to predict on paths, PIL images, arrays or tensors.

    det = Detector.from_checkpoint("runs/yolov3_synthetic/best.pt")   # device="auto": CUDA when visible
    result = det.predict("image.jpg")        # {"boxes", "scores", "labels", "class_names"}, original pixels
    results = det.predict([pil_image, array_hwc_uint8, tensor_chw])

``predict`` keeps no state between calls (the model is in eval mode and grad mode is per thread), so one Detector
may serve several threads at once.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detlab.config import config_to_dict
from detlab.data.images import load_image, to_rgb_array
from detlab.engine.checkpoint import load_detector
from detlab.engine.runtime import resolve_device


class Detector:
    """A detector in eval mode with its ``class_names`` and ``config`` (a nested dict, as in the checkpoint)."""

    def __init__(self, model: torch.nn.Module, class_names: list[str], config: dict, device="auto"):
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names, self.config = list(class_names), config

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="auto", use_ema: bool = True,
                        overrides: list[str] = ()) -> "Detector":
        """Load a checkpoint written by :func:`detlab.engine.train` (``best.pt``, or ``last.pt`` with its EMA
        weights when it has them); ``device="auto"`` is the GPU when CUDA sees one.

        ``overrides`` change its config before the model is built, e.g. the inference settings
        ``["model.score_threshold=0.1", "model.yolov3.multi_label=false"]``; one that changes the architecture
        is an error naming the key (the weights would not fit)."""
        loaded = load_detector(path, overrides, use_ema)
        return cls(loaded.model, loaded.class_names, config_to_dict(loaded.config), device)

    @torch.inference_mode()
    def predict(self, images, score_threshold: float = 0.25, batch_size: int = 8):
        """Detect objects.

        Args:
            images: a path (str / Path; read as training reads it, see :func:`as_image_tensor`), a PIL image,
                an ndarray[H, W, 3] uint8 (RGB), a Tensor[3, H, W] (uint8, or float in [0, 1]), or a list of them.
            score_threshold: keep detections scoring at least this.

        Returns:
            per image (a list for a list input): ``{"boxes": Tensor[K, 4] xyxy original pixels, "scores":
            Tensor[K], "labels": Tensor[K], "class_names": list[str]}``.
        """
        single = not isinstance(images, (list, tuple))
        tensors = [as_image_tensor(x) for x in ([images] if single else images)]
        results = []
        for start in range(0, len(tensors), batch_size):
            batch = [t.to(self.device) for t in tensors[start : start + batch_size]]
            for output in self.model(batch):
                keep = output["scores"] >= score_threshold
                result = {k: v[keep].cpu() for k, v in output.items()}
                result["class_names"] = [self.class_names[i] for i in result["labels"].tolist()]
                results.append(result)
        return results[0] if single else results


def as_image_tensor(image) -> torch.Tensor:
    """A path, PIL image, ndarray[H, W, 3] uint8 or Tensor[3, H, W] -> Tensor[3, H, W] (uint8, or float in
    [0, 1] as given); anything else is a clear error.

    A path is read as training reads it (:func:`detlab.data.images.load_image`: upright by its EXIF orientation,
    16-bit scaled by its value range, alpha dropped); a missing one is a FileNotFoundError, an undecodable one a
    :class:`~detlab.data.records.DataError` (a ValueError) naming it. A PIL image's mode is converted the same way,
    but its EXIF orientation is not applied: the caller holds those pixels and gets boxes in them."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
        return load_image(image)
    if isinstance(image, Image.Image):
        image = to_rgb_array(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"ndarray image must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor image must be [3, H, W], got {tuple(image.shape)}")
        return image
    raise TypeError(f"cannot predict on a {type(image).__name__}: give a path, PIL image, ndarray[H, W, 3] uint8 "
                    f"or Tensor[3, H, W]")
