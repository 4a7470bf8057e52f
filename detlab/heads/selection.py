"""Per-image selection over a whole batch at once: the steps every family's post-processing shares, written once
for the eager models and the exported graphs (:mod:`detlab.deploy.graphs`).

Candidates of all images are kept flat, each with its image's batch position, and per-image steps become batched
ones:

- NMS per image and category = one ``batched_nms`` whose categories are ``image * categories + category``
  (categories never suppress each other, so each image's kept set is what NMS of that image alone keeps);
- "the best ``limit`` of each image" = :func:`best_per_image` over candidates sorted best first.

Sizes are never turned into Python numbers: under ``torch.jit.trace`` a size is a traced 0-dim tensor, under
``torch.export`` a symbolic int, so the exported graphs keep dynamic batch (and image) sizes.

The eager models run each image alone through these steps (a batch of one): an image's detections then never
depend on the other images of its batch, as the order of exactly tied scores after NMS would, and they equal
torchvision's, which selects per image too. The exported graphs run the whole batch at once.
"""

import torch


def at_most(size, limit: int):
    """``min(size, limit)`` for a size that may be a traced 0-dim tensor (TorchScript), a symbolic int
    (``torch.export``) or an int, without freezing it into a constant."""
    if isinstance(size, torch.Tensor):
        return size.clamp(max=limit)
    return torch.sym_min(size, limit)


def best_per_image(order: torch.Tensor, images: torch.Tensor, batch_size, limit: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` entries of each image.

    Args:
        order (Tensor[K]): anything per candidate (e.g. its index), candidates best first.
        images (Tensor[K] int64): the image of each candidate, in 0..batch_size-1 (in any order).
        batch_size: B (an int, or a traced or symbolic size); limit: how many of each image to keep.

    Returns:
        ``order`` at the kept candidates (Tensor[K']) and their images (Tensor[K']), grouped by image in batch order,
        each image's in the given order.
    """
    if isinstance(batch_size, int) and batch_size == 1:  # the eager models' case: a slice, no host sync
        return order[:limit], images[:limit]
    image_ids = torch.arange(batch_size, device=images.device)
    per_image = (images[:, None] == image_ids[None]).to(torch.int64)  # [K, batch_size]
    rank = per_image.cumsum(0).gather(1, images[:, None]).squeeze(1) - 1  # earlier candidates of the same image
    kept = rank < limit
    # a table of `limit` slots per image, filled in rank order; reading it row by row groups the images
    slots = torch.full_like(image_ids, -1).repeat(limit)  # Tensor[batch_size * limit]
    candidate = torch.arange(order.shape[0], device=order.device)
    slots = slots.scatter(0, images[kept] * limit + rank[kept], candidate[kept])
    filled = (slots >= 0).nonzero().squeeze(1)
    return order[slots[filled]], filled // limit
