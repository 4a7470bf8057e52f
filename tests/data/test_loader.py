import subprocess
import sys

import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, RandomSampler, SequentialSampler, Subset

from detlab.data import GroupedBatchSampler, SyntheticShapes, aspect_ratio_groups, batch_images, collate, make_loader
from detlab.data.loader import ShardSampler


class _Sizes(Dataset):
    """Blank images of given (height, width) sizes."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        height, width = self.sizes[index]
        return torch.full((3, height, width), index, dtype=torch.uint8), {"boxes": torch.zeros(0, 4), "index": index}

    def image_sizes(self):
        return self.sizes


def test_collate_keeps_variable_sizes_and_batch_images_pads():
    dataset = _Sizes([(20, 30), (33, 10)])
    images, targets = collate([dataset[0], dataset[1]])
    assert [tuple(i.shape) for i in images] == [(3, 20, 30), (3, 33, 10)] and [t["index"] for t in targets] == [0, 1]
    batch, sizes = batch_images(images, size_divisible=16)
    assert batch.shape == (2, 3, 48, 32) and sizes.tolist() == [[20, 30], [33, 10]]
    assert torch.equal(batch[1, :, :33, :10], images[1]) and (batch[1, :, 33:] == 0).all()


def test_grouped_batch_sampler_batches_like_aspect_together():
    sizes = [(10, 20), (20, 10), (10, 20), (20, 10), (10, 20), (30, 31), (10, 20)]
    dataset = _Sizes(sizes)
    groups = aspect_ratio_groups(dataset)
    assert groups == [0, 1, 0, 1, 0, 0, 0]
    sampler = GroupedBatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(0)), groups, 2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # 5 landscape -> 2 full + 1 partial; 2 portrait -> 1
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    dropping = GroupedBatchSampler(SequentialSampler(dataset), groups, 2, drop_last=True)
    assert list(dropping) == [[0, 2], [1, 3], [4, 5]] and len(dropping) == 3


def test_drop_last_trains_a_group_smaller_than_a_batch_with_the_other_leftovers():
    groups = [0] * 9 + [1] * 7  # 9 landscape, 7 portrait images, batch 8
    sampler = GroupedBatchSampler(SequentialSampler(range(16)), groups, 8, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2
    assert batches == [list(range(8)), [8, 9, 10, 11, 12, 13, 14, 15]]  # the leftovers: landscape 8, every portrait


def test_drop_last_never_starves_a_lone_portrait_image():
    """COCO-MINI's 16 memorisation images hold one portrait image; completing the largest partial batch with its own
    repeats (torchvision's rule) gave the 7 landscape leftovers the last batch every epoch, and the portrait image
    was never trained on."""
    groups = [0] * 5 + [1] + [0] * 10
    for seed in range(20):
        batches = list(GroupedBatchSampler(ShardSampler(16, seed=seed), groups, 8, drop_last=True))
        assert len(batches) == 2 and sorted(i for b in batches for i in b) == list(range(16))  # each image once
        assert sum(len({groups[i] for i in b}) > 1 for b in batches) == 1  # the one mixed batch: the leftovers


def test_drop_last_leaves_out_the_images_the_sampler_gives_last():
    groups = [0] * 11 + [1] * 6  # 17 images, batch 4: 4 batches, one image left out each epoch
    left_out = []
    for seed in range(40):
        order = list(ShardSampler(17, seed=seed))
        batches = list(GroupedBatchSampler(ShardSampler(17, seed=seed), groups, 4, drop_last=True))
        used = [i for b in batches for i in b]
        assert len(batches) == 4 and all(len(b) == 4 for b in batches) and sorted(used) == sorted(order[:16])
        assert sum(len({groups[i] for i in b}) > 1 for b in batches) <= 1
        left_out.append(order[16])
    assert any(groups[i] == 1 for i in left_out) and len(set(left_out)) > 8  # not always the same group or image


@pytest.mark.parametrize("landscape, portrait", [(16, 1), (24, 3)])
def test_drop_last_trains_a_small_group_when_the_large_one_fills_its_batches(landscape, portrait):
    """The large group alone fills every batch of an epoch; the portrait images must still get their turns (they
    are left out only when the shuffle puts them in the tail)."""
    groups = [0] * landscape + [1] * portrait
    seen = {i: 0 for i in range(landscape, landscape + portrait)}
    for seed in range(50):
        for batch in GroupedBatchSampler(ShardSampler(len(groups), seed=seed), groups, 8, drop_last=True):
            for i in set(batch) & set(seen):
                seen[i] += 1
    assert all(count >= 38 for count in seen.values()), seen  # each left out in 1 epoch of 17 or 9 on average


def test_drop_last_completes_a_share_smaller_than_a_batch_with_repeats_of_all_of_it():
    groups = [0, 0, 1, 0, 0]  # 5 images, one portrait, batch 8
    (batch,) = list(GroupedBatchSampler(SequentialSampler(range(5)), groups, 8, drop_last=True))
    assert len(batch) == 8 and set(batch) == {0, 1, 2, 3, 4}


def test_aspect_groups_reach_through_subset_and_concat():
    """data.max_train_images wraps the training set in a Subset, several COCO splits are concatenated."""
    first, second = _Sizes([(10, 20), (20, 10), (10, 20)]), _Sizes([(20, 10)])
    assert aspect_ratio_groups(Subset(first, [2, 1])) == [0, 1]
    assert aspect_ratio_groups(ConcatDataset([first, Subset(second, [0])])) == [0, 1, 0, 1]
    loader = make_loader(Subset(first, [0, 1, 2]), batch_size=2, shuffle=False, num_workers=0, group_by_aspect=True)
    assert [[t["index"] for t in targets] for _, targets in loader] == [[0, 2], [1]]


def test_make_loader_groups_by_aspect_and_is_seeded():
    dataset = _Sizes([(10, 20), (20, 10)] * 4)
    loaders = [make_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=7, group_by_aspect=True)
               for _ in range(2)]
    orders = [[[t["index"] for t in targets] for _, targets in loader] for loader in loaders]
    assert orders[0] == orders[1]  # the same seed, the same batches
    assert [[t["index"] for t in targets] for _, targets in loaders[0]] != orders[0]  # a new order each epoch
    assert all(len({dataset.sizes[i] for i in batch}) == 1 for batch in orders[0])
    other = make_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=8, group_by_aspect=True)
    assert [[t["index"] for t in targets] for _, targets in other] != orders[0]


@pytest.mark.slow
def test_make_loader_with_workers_and_pinned_memory_matches_direct_access():
    dataset = SyntheticShapes(4, 32, 48, seed=0)
    loader = make_loader(dataset, batch_size=2, num_workers=2, pin_memory=torch.cuda.is_available())
    images = [image for batch, _ in loader for image in batch]
    assert all(torch.equal(images[i].cpu(), dataset[i][0]) for i in range(4))


def test_data_never_imports_models_or_eval():
    code = ("import sys, detlab.data, detlab.data.stats, detlab.data.convert; "
            "print(sorted(m for m in sys.modules if m.startswith(('detlab.models', 'detlab.eval'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
