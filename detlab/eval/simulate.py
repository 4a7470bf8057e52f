"""Seeded synthetic COCO ground truth and realistic fake detections, to test and benchmark evaluators.

The detections imitate a real detector's mistakes: jittered true boxes, misses, false positives, class
confusions, duplicates, tied scores, integer boxes (so IoUs hit thresholds and each other exactly), and one
image with more than 100 detections of one class. Everything is plain COCO JSON structures (dicts and lists).
"""

from __future__ import annotations

import numpy as np


def synthetic_coco_ground_truth(num_images: int, num_classes: int = 80, seed: int = 0, mean_objects: float = 7.0) -> dict:
    """A COCO annotation dict: 640x480 images, long-tailed class frequencies (the last two classes have no
    ground truth), sizes from tiny to large, ~3% crowd regions, segment ``area`` below the box area, ~5% empty
    images, half the boxes on integer coordinates and ~2% exact copies of the previous box (IoU ties)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean_objects, num_images) * (rng.random(num_images) > 0.05)
    image = np.repeat(np.arange(num_images), counts)
    n = len(image)
    boxes = _random_boxes(rng, n)
    freq = 1.0 / np.arange(1, num_classes - 1) ** 0.8
    labels = rng.choice(num_classes - 2, n, p=freq / freq.sum())
    dup = np.flatnonzero(rng.random(n) < 0.02)
    dup = dup[(dup > 0) & (image[dup - 1] == image[np.maximum(dup, 1)])]
    boxes[dup], labels[dup] = boxes[dup - 1], labels[dup - 1]
    area = boxes[:, 2] * boxes[:, 3] * rng.uniform(0.5, 1.0, n)
    crowd = rng.random(n) < 0.03
    return {
        "images": [{"id": int(i) + 1, "width": 640, "height": 480, "file_name": f"{i:06d}.jpg"} for i in range(num_images)],
        "categories": [{"id": 2 * c + 1, "name": f"class{c}"} for c in range(num_classes)],  # gaps in ids, like COCO
        "annotations": [
            {"id": a + 1, "image_id": int(i) + 1, "category_id": 2 * int(c) + 1, "bbox": b, "area": float(ar), "iscrowd": int(cr)}
            for a, (i, c, b, ar, cr) in enumerate(zip(image, labels, boxes.tolist(), area, crowd))
        ],
    }


def _random_boxes(rng, n: int) -> np.ndarray:
    """float64[n, 4] xywh inside 640x480, log-uniform sides from 4 to 400 px, half rounded to integers."""
    side = np.exp(rng.uniform(np.log(4), np.log(400), (n, 2)))
    w, h = np.minimum(side[:, 0], 639), np.minimum(side[:, 1], 479)
    boxes = np.stack([rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h], axis=1)
    integer = rng.random(n) < 0.5
    boxes[integer] = np.round(boxes[integer])
    return boxes


def simulate_detections(gt: dict, seed: int = 0, dets_per_image: int | None = None, crowded_image: bool = True) -> list:
    """A COCO results list for annotation dict ``gt``, with a detector's typical errors (see module doc).

    Per object: missed with p=0.15, else a jittered box (p=0.1 under a wrong class, p=0.2 plus a duplicate
    with a lower score). Per image: Poisson(3) false positives of any class, or as many as needed to reach
    ``dets_per_image`` (images with more real detections keep their best ``dets_per_image``). 30% of scores are
    rounded to 2 decimals (ties), boxes of even images are rounded to integers. With ``crowded_image``, the
    first annotated image also gets 150 detections of its first object's class. The list is shuffled.
    """
    rng = np.random.default_rng(seed)
    image_ids = np.array([im["id"] for im in gt["images"]])
    cat_ids = np.array([c["id"] for c in gt["categories"]])
    anns = gt["annotations"]
    ann_img = np.array([a["image_id"] for a in anns], dtype=np.int64)
    ann_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    ann_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)

    found = np.flatnonzero(rng.random(len(anns)) > 0.15)
    hit = np.concatenate([found, found[rng.random(len(found)) < 0.2]])  # then duplicates
    img, cat, box = ann_img[hit], ann_cat[hit], ann_box[hit]
    box = box + rng.normal(0, 0.08, box.shape) * box[:, [2, 3, 2, 3]]
    box[:, 2:] = np.maximum(box[:, 2:], 1.0)
    score = rng.beta(4, 2, len(hit))
    score[len(found) :] *= 0.8
    confused = rng.random(len(hit)) < 0.1
    cat[confused] = rng.choice(cat_ids, int(confused.sum()))

    real = np.bincount(np.searchsorted(image_ids, img), minlength=len(image_ids))
    n_fp = rng.poisson(3, len(image_ids)) if dets_per_image is None else np.maximum(dets_per_image - real, 0)
    fp_img = np.repeat(image_ids, n_fp)
    img = np.concatenate([img, fp_img])
    cat = np.concatenate([cat, rng.choice(cat_ids, len(fp_img))])
    box = np.concatenate([box, _random_boxes(rng, len(fp_img))])
    score = np.concatenate([score, rng.beta(1.5, 5, len(fp_img))])

    if crowded_image and len(anns):
        many = 150
        img = np.concatenate([img, np.full(many, ann_img[0])])
        cat = np.concatenate([cat, np.full(many, ann_cat[0])])
        crowd_box = ann_box[0] + rng.normal(0, 0.1, (many, 4)) * ann_box[0, [2, 3, 2, 3]]
        crowd_box[:, 2:] = np.maximum(crowd_box[:, 2:], 1.0)
        box = np.concatenate([box, crowd_box])
        score = np.concatenate([score, rng.random(many)])

    tie = rng.random(len(score)) < 0.3
    score[tie] = np.round(score[tie], 2)
    integer = np.searchsorted(image_ids, img) % 2 == 0
    box[integer] = np.round(box[integer])
    keep = np.arange(len(img))
    if dets_per_image is not None:  # the best dets_per_image of each image
        order = np.lexsort((-score, img))
        first = np.searchsorted(img[order], img[order])
        keep = order[np.arange(len(order)) - first < dets_per_image]
    keep = rng.permutation(keep)
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": b, "score": float(s)}
        for i, c, b, s in zip(img[keep], cat[keep], box[keep].tolist(), score[keep])
    ]
