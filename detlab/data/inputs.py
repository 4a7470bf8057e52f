"""How a detector family wants its training images shaped: the input pipeline the family chooses.

The family (``detlab.models``) says which pipeline its config asks for; the engine builds the training data and
loader from it and never reads a family's own keys. An input pipeline has:

- ``resize()``: the geometric transform a training image starts with (before augmentation);
- ``crop_size``: (height, width) that scale-jitter augmentation crops back to;
- ``group_by_aspect``: whether training batches group landscape and portrait images (two-stage models pad a batch
  to its largest image, so like-with-like keeps the padding small);
- ``scale(height, width)``: the factor from an original image's pixels to the model's input pixels (what box
  sizes become, e.g. for anchor fitting).

Evaluation images stay untransformed: the model itself prepares them the same way and returns boxes in their
original pixels.
"""

from dataclasses import dataclass

import torch

from detlab.data.transforms import Letterbox, Resize


def check_model_input(image: torch.Tensor) -> None:
    """A ValueError unless ``image`` is a Tensor[3, H, W] with pixels (what every family's ``forward`` takes)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"images: each must be Tensor[3, H, W], got {shape}")
    if image.numel() == 0:  # resizing it would divide by zero
        raise ValueError(f"images: an image has no pixels: shape {tuple(image.shape)}")


@dataclass(frozen=True)
class SquareLetterbox:
    """YOLO's input: the long side resized to ``size`` (aspect kept), padded to ``size x size``. Every image has
    the same shape, so batches need no grouping."""

    size: int
    group_by_aspect = False

    def resize(self) -> Letterbox:
        return Letterbox(self.size)

    @property
    def crop_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def scale(self, height: int, width: int) -> float:
        return self.size / max(height, width)

    def __str__(self) -> str:
        return f"letterboxed to {self.size}x{self.size}"


@dataclass(frozen=True)
class ShorterSide:
    """Faster R-CNN's input: the short side resized to ``min_size`` unless the long side would pass ``max_size``
    (aspect kept), each batch padded to its largest image, so batches group like-shaped images. Scale-jitter crops
    back to ``min_size`` square (the model keeps an image that already fits its size rule as it is)."""

    min_size: int
    max_size: int
    group_by_aspect = True

    def resize(self) -> Resize:
        return Resize(self.min_size, self.max_size)

    @property
    def crop_size(self) -> tuple[int, int]:
        return (self.min_size, self.min_size)

    def scale(self, height: int, width: int) -> float:
        return min(self.min_size / min(height, width), self.max_size / max(height, width))

    def __str__(self) -> str:
        return f"short side {self.min_size}, long side at most {self.max_size}"
