"""Batching for detection: collate of variable-size images, padding to a batch tensor, aspect-ratio grouping,
and a DataLoader helper with seeded workers and pinned memory."""

import itertools
import math
import random
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset


def collate(batch: Sequence[tuple]) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])``: images keep their own sizes (the model pads
    them, as torchvision's detection models do); use :func:`batch_images` for one padded tensor."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def batch_images(images: Sequence[torch.Tensor], size_divisible: int = 32, fill: float = 0.0):
    """Pad images (Tensor[3, H_i, W_i]) at the bottom/right into Tensor[B, 3, H, W] with H, W the largest sizes
    rounded up to ``size_divisible`` (backbone strides); returns it and image_sizes (int64[B, 2]: h, w). Padding
    bottom/right leaves box coordinates unchanged."""
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images], dtype=torch.int64)
    height, width = (int(math.ceil(int(v) / size_divisible) * size_divisible) for v in sizes.max(0).values)
    batch = images[0].new_full((len(images), images[0].shape[0], height, width), fill)
    for out, image in zip(batch, images):
        out[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch, sizes


def aspect_ratio_groups(dataset: Dataset) -> list[int]:
    """Group id per image: 0 for landscape (w >= h), 1 for portrait, from ``dataset.image_sizes()`` (no image
    decoding). Two groups, as Detectron2 uses: batching like with like keeps padding small for two-stage models."""
    return [0 if width >= height else 1 for height, width in image_sizes_of(dataset)]


def image_sizes_of(dataset: Dataset) -> list[tuple[int, int]]:
    """(height, width) per image of a detlab dataset, also through ``Subset`` (``data.max_train_images``) and
    ``ConcatDataset``."""
    if isinstance(dataset, Subset):
        sizes = image_sizes_of(dataset.dataset)
        return [sizes[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [size for part in dataset.datasets for size in image_sizes_of(part)]
    if not hasattr(dataset, "image_sizes"):
        raise TypeError(f"{type(dataset).__name__} has no image_sizes(); aspect-ratio grouping needs it")
    return list(dataset.image_sizes())


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices from ``sampler`` where all indices share a group id, but for the leftovers.

    Indices are taken in the sampler's order and each joins its group's pending batch, yielded when full. At the end
    the partial batches are yielded as they are unless ``drop_last``. With ``drop_last`` an epoch has
    ``len(sampler) // batch_size`` batches (at least 1), the same on every process of a distributed run: only the
    first ``len(self) * batch_size`` indices of the sampler's order are batched (the ones it gives last are left
    out, a random choice each epoch with a shuffling sampler), and the groups' leftovers of those fill the batches
    still missing, each group's together, so at most one batch per epoch mixes groups (two groups leave fewer than
    two batches of leftovers). That mixed batch pads portrait and landscape images to one size: up to
    (long side)^2 pixels per image instead of long x short, more memory in that one step. A share smaller than a
    batch is one batch, completed with repeats of its images. (Completing the largest partial batch with repeats
    of its own images, as torchvision's reference sampler does, starves a small group for ever: one portrait image
    among 15 landscape ones with batch 8 was never trained on.) ``sampler`` must visit every index once per epoch
    (Random/Sequential/ShardSampler), which makes ``len`` known in advance.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        self.sampler, self.group_ids = sampler, list(group_ids)
        self.batch_size, self.drop_last = batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        indices = itertools.islice(self.sampler, len(self) * self.batch_size) if self.drop_last else self.sampler
        pending: dict[int, list[int]] = {}
        yielded = 0
        for index in indices:
            group = pending.setdefault(self.group_ids[index], [])
            group.append(index)
            if len(group) == self.batch_size:
                yield group[:]
                yielded += 1
                group.clear()
        if not self.drop_last:
            yield from sorted((group for group in pending.values() if group), key=len, reverse=True)
            return
        # the leftovers fill the missing batches exactly, except in a share smaller than a batch
        leftovers = [index for group_id in sorted(pending) for index in pending[group_id]]
        slots = (len(self) - yielded) * self.batch_size
        if not leftovers:
            return
        kept = (leftovers * math.ceil(slots / len(leftovers)))[:slots]
        for start in range(0, slots, self.batch_size):
            yield kept[start : start + self.batch_size]

    def __len__(self) -> int:
        if self.drop_last:  # at least one batch: a share smaller than a batch is completed with repeats
            return max(len(self.sampler) // self.batch_size, 1)
        if len(self.sampler) != len(self.group_ids):
            raise ValueError("the batches of a share of the images (ShardSampler of several processes) are counted "
                             "in advance only with drop_last")
        counts = np.bincount(self.group_ids)
        return int((counts // self.batch_size + (counts % self.batch_size > 0)).sum())


class ShardSampler(Sampler[int]):
    """Process ``rank``'s share of one epoch of ``range(length)`` among ``world_size`` processes: the permutation
    seeded by ``seed`` (the same on every process; in order without ``shuffle``), dealt round-robin (process ``r``
    takes positions ``r, r + N, ...``) after dropping the last ``length % N`` positions, so that every process
    has ``length // N`` indices and as many steps. The images of step k of N processes with batch b are then those
    of step k of one process with batch N x b. One process: the whole permutation. Each iteration draws the next
    permutation of the seeded sequence (a new order per pass, as ``RandomSampler``'s)."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if length < world_size:
            raise ValueError(f"{length} images cannot be shared by {world_size} processes: each needs one at least")
        self.length, self.shuffle, self.rank, self.world_size = length, shuffle, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.length, generator=self.generator).tolist()
        else:
            order = list(range(self.length))
        return iter(order[self.rank : len(self) * self.world_size : self.world_size])

    def __len__(self) -> int:
        return self.length // self.world_size


class ShardBatchSampler(Sampler[list[int]]):
    """Process ``rank``'s batches of ``range(length)`` evaluated in order by ``world_size`` processes: batches of
    ``batch_size`` consecutive indices, process ``r`` taking batches ``r, r + N, ...``. Each image is in the batch
    it has on one process, and nothing is padded or repeated (a padding sampler would count images twice); a
    process may get one batch fewer than another."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.length, self.batch_size, self.rank, self.world_size = length, batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        starts = range(self.rank * self.batch_size, self.length, self.world_size * self.batch_size)
        return (list(range(start, min(start + self.batch_size, self.length))) for start in starts)

    def __len__(self) -> int:
        return len(range(self.rank, -(-self.length // self.batch_size), self.world_size))


def process_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s own random draws (augmentations, samplers) in a run seeded ``seed``: ``seed``
    itself on process 0 (a one-process run draws as before), another 32-bit seed on each other process, so that
    processes that see other images do not draw alike. (torch's CPU generator keeps only a seed's low 32 bits:
    adding ``rank << 32`` would change nothing.)"""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**63, rank]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from torch's per-worker seed (DataLoader seeds only
    torch), so any transform's randomness is fixed by the loader's seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 2, seed: int = 0,
                pin_memory: bool | None = None, group_by_aspect: bool = False, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader yielding ``(list of images, list of targets)`` via :func:`collate`.

    ``seed`` fixes the shuffle order and every worker's RNG (same batches and augmentations on every run with the
    same ``num_workers``); ``pin_memory`` defaults to whether CUDA is available; ``group_by_aspect`` batches
    landscape and portrait images separately (:class:`GroupedBatchSampler`). Process ``rank`` of ``world_size``
    (torch.distributed) gets its share: with ``shuffle`` (training) of each epoch's permutation
    (:class:`ShardSampler`), without (evaluation) every N-th batch in order (:class:`ShardBatchSampler`).
    """
    sampler = ShardSampler(len(dataset), seed, shuffle, rank, world_size) if shuffle or world_size == 1 else None
    if sampler is None:
        batching = dict(batch_sampler=ShardBatchSampler(len(dataset), batch_size, rank, world_size))
    elif group_by_aspect:
        groups = aspect_ratio_groups(dataset)
        batching = dict(batch_sampler=GroupedBatchSampler(sampler, groups, batch_size, drop_last))
    else:
        batching = dict(sampler=sampler, batch_size=batch_size, drop_last=drop_last)
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    # worker RNGs differ between processes (their images differ; equal augmentation draws would correlate them)
    generator = torch.Generator().manual_seed(process_seed(seed, rank))
    return DataLoader(dataset, collate_fn=collate, num_workers=num_workers, worker_init_fn=seed_worker,
                      generator=generator, pin_memory=pin_memory, **batching)
