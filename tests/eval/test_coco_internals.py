"""The fast paths of detlab.eval.coco / matching (packed-key sorts, lookup tables, run maxima) against the plain
numpy they replace, including the fallbacks taken when ids are sparse or keys do not fit in 63 bits."""

import numpy as np
import pytest

from detlab.eval import coco as C
from detlab.eval.matching import group_pairs
from detlab.eval.simulate import simulate_detections, synthetic_coco_ground_truth

from coco_oracle import detlab_eval, pycocotools_eval


@pytest.mark.parametrize("sizes", [[3, 5000, 7], [1, 1, 1], [2**30, 2**20, 2**12]])  # the last does not fit
def test_lexsort_ints_is_a_stable_lexsort(sizes):
    rng = np.random.default_rng(0)
    n = 5000
    columns = [rng.integers(0, min(s, 4), n) * (s // min(s, 4)) for s in sizes]  # many ties
    expected = np.lexsort(columns[::-1])  # np.lexsort is stable; last key most significant
    assert np.array_equal(C._lexsort_ints(columns, sizes), expected)


def test_lexsort_ints_empty():
    assert len(C._lexsort_ints([np.zeros(0, np.int64)], [1])) == 0


def test_dense_rank_descending():
    values = np.array([0.5, 0.25, 0.5, -0.0, 0.0, 1.0, -3.0, 0.25])
    rank, num = C._dense_rank_descending(values)
    assert num == 5  # 1.0, 0.5, 0.25, 0.0 (= -0.0), -3.0
    assert rank.tolist() == [1, 2, 1, 3, 3, 0, 4, 2]
    assert C._dense_rank_descending(np.zeros(0))[1] == 0
    rank, num = C._dense_rank_descending(np.array([np.nan, 0.5, np.nan, -np.inf, np.inf]))
    assert num == 4 and rank.tolist() == [3, 1, 3, 2, 0]  # NaNs last and tied, as argsort(-scores) has them


def _top_detections_by_successive_stable_sorts(dets, num_classes):
    """The former implementation, as the reference: (category, -score, image, input order), rank by group."""
    order = np.argsort(dets.image, kind="stable")
    order = order[np.argsort(-dets.scores[order], kind="stable")]
    order = order[np.argsort(dets.category[order], kind="stable")]
    group = (dets.image * num_classes + dets.category)[order]
    by_group = np.argsort(group, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_group] = np.arange(len(order)) - np.searchsorted(group[by_group], group[by_group])
    keep = rank < C.MAX_DETS[-1]
    return order[keep], rank[keep]


@pytest.mark.parametrize("nan", [False, True])
def test_top_detections_equal_successive_stable_sorts(nan):
    """Ties, > 100 detections per group, and NaN scores (model outputs are not checked for NaN): pycocotools'
    order, NaN last and ties stable, as a stable argsort of -scores has them."""
    rng = np.random.default_rng(3)
    n = 3000
    scores = np.round(rng.random(n), 1) * rng.choice([1.0, -1.0], n)  # ties, -0.0 and 0.0
    if nan:
        scores[rng.random(n) < 0.2] = np.nan
    dets = C.CocoDetections(rng.integers(0, 5, n), rng.integers(0, 3, n), rng.random((n, 4)), scores)
    top, rank = C._top_detections(dets, 3)
    order, expected_rank = _top_detections_by_successive_stable_sorts(dets, 3)
    assert np.array_equal(top.boxes_xywh, dets.boxes_xywh[order]) and np.array_equal(rank, expected_rank)


@pytest.mark.parametrize("known", [[3, 5, 9], [10**12, 10**13], [-4, 0, 7]])  # dense, sparse, negative
def test_index_of(known):
    known = np.array(known, dtype=np.int64)
    values = known[[2, 0, 1, 0]] if len(known) > 2 else known[[1, 0, 1]]
    index = C._index_of(known, values, "src", "image_id", "detection")
    assert np.array_equal(known[index], values)
    for absent in (known[0] - 1, known[-1] + 1, -(2**40), 2**62):
        if absent in known:
            continue
        with pytest.raises(ValueError, match="absent from the annotations"):
            C._index_of(known, np.append(values, absent), "src", "image_id", "detection")


@pytest.mark.parametrize("scale", [1, 10**9])  # dense group ids (lookup tables), sparse ones (binary searches)
def test_group_pairs(scale):
    rng = np.random.default_rng(1)
    det_group = rng.integers(0, 50, 400) * scale
    gt_group = rng.integers(0, 60, 300) * scale
    pair_det, pair_gt, pair_pos = group_pairs(det_group, gt_group)
    expected = [(d, g) for d in range(len(det_group)) for g in range(len(gt_group)) if det_group[d] == gt_group[g]]
    assert list(zip(pair_det.tolist(), pair_gt.tolist())) == expected
    for d, g, p in zip(pair_det, pair_gt, pair_pos):
        assert p == np.count_nonzero(gt_group[:g] == gt_group[g])


def test_needed_true_positives_equal_searchsorted():
    """The fewest true positives reaching each recall threshold, as pycocotools' searchsorted on tp / npig."""
    npig = np.arange(0, 3001).reshape(1, -1)
    need = C._needed_true_positives(npig)
    assert np.all(need[0, 0] == 0)
    for n in range(1, 3001):
        assert np.array_equal(need[0, n], np.searchsorted(np.arange(n + 1) / n, C.REC_THRS, side="left")), n


def test_segment_max_equals_reduceat():
    rng = np.random.default_rng(2)
    values = rng.integers(-1, 100, (300, 40))
    starts = np.flatnonzero(np.r_[True, rng.random(299) < 0.6])
    assert np.array_equal(C._segment_max(values, starts), np.maximum.reduceat(values, starts, axis=0))


def test_sparse_huge_ids_give_the_same_figures():
    """Image and category ids far apart (lookup tables refused) give exactly the figures of dense ids."""
    gt = synthetic_coco_ground_truth(60, 12, seed=5, mean_objects=8)
    res = simulate_detections(gt, seed=5)
    ref = detlab_eval(gt, res)
    big = 10**12
    gt_sparse = {
        "images": [dict(im, id=im["id"] * big) for im in gt["images"]],
        "categories": [dict(c, id=c["id"] * big) for c in gt["categories"]],
        "annotations": [
            dict(a, image_id=a["image_id"] * big, category_id=a["category_id"] * big) for a in gt["annotations"]
        ],
    }
    res_sparse = [dict(r, image_id=r["image_id"] * big, category_id=r["category_id"] * big) for r in res]
    ours = detlab_eval(gt_sparse, res_sparse)
    assert np.array_equal(ours.stats, ref.stats)
    assert np.array_equal(ours.precision, ref.precision) and np.array_equal(ours.recall, ref.recall)


@pytest.mark.parametrize("seed", range(3))
def test_bit_for_bit_equal_to_pycocotools(seed):
    """Exact equality (no tolerance) of the stats, precision and recall arrays."""
    gt = synthetic_coco_ground_truth(150, 20, seed=seed, mean_objects=6)
    res = simulate_detections(gt, seed=seed, dets_per_image=60)
    ours, ref = detlab_eval(gt, res), pycocotools_eval(gt, res)
    assert np.array_equal(ours.stats, np.asarray(ref.stats))
    assert np.array_equal(ours.precision, ref.eval["precision"])
    assert np.array_equal(ours.recall, ref.eval["recall"])
