"""Evaluation of a detector on a dataset with the detlab evaluator (VOC or COCO metric), and of a checkpoint.

The model is anything following torchvision's detection contract in eval mode: ``model(images) -> [{"boxes",
"scores", "labels"}]`` with boxes in the given images' pixels; targets come untransformed from the dataset.
A batch that does not fit in the GPU's memory is an :class:`OutOfMemoryError` naming the settings to lower.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from detlab.data import make_loader
from detlab.engine import distributed
from detlab.engine.checkpoint import load_detector
from detlab.engine.data import build_data, untransformed
from detlab.engine.runtime import resolve_device
from detlab.errors import DetlabError
from detlab.eval import evaluate_coco_predictions, evaluate_voc, format_coco, format_voc
from detlab.eval.report import plot_pr_curves, pr_curves, write_json
from detlab.models import input_pipeline, input_size


class OutOfMemoryError(DetlabError, RuntimeError):
    """A batch did not fit in the device's memory (torch.OutOfMemoryError); the message names the settings that
    size a batch, with their values, and what to do."""


def out_of_memory(error: Exception, cfg, device, doing: str, advice: str) -> OutOfMemoryError:
    """The :class:`OutOfMemoryError` for torch's ``error`` while ``doing`` (e.g. ``"training epoch 3"``) under the
    :class:`~detlab.config.Config` ``cfg``: ``train.batch_size`` and the family's input size with their values,
    what torch failed to allocate, then ``advice``."""
    sizes = {"train.batch_size": cfg.train.batch_size, **input_size(cfg.model)}
    asked = re.search(r"Tried to allocate [\d.]+ \w+", str(error))
    settings = ", ".join(f"{key}={value}" for key, value in sizes.items()) + (f"; {asked[0]}" if asked else "")
    return OutOfMemoryError(f"out of memory on {device} while {doing} ({settings}): {advice}")


@dataclass
class Evaluation:
    """``result`` (VocResult or CocoResult), ``table`` (printable), ``headline`` (mAP@0.5 for VOC — all-point
    area — and AP@[.5:.95] for COCO) and ``ap50`` (AP at IoU 0.5 either way)."""

    result: object
    table: str
    headline: float
    ap50: float


@torch.inference_mode()
def predict_dataset(model, dataset, batch_size: int = 8, num_workers: int = 0, device="cpu",
                    progress: bool = True, world: distributed.World = distributed.SINGLE
                    ) -> tuple[list[dict], list[dict]]:
    """Run ``model`` (put in eval mode) over ``dataset``; returns (predictions, targets) on the CPU, per image in
    dataset order. Under torch.distributed (``world``) each process predicts every N-th batch
    (:class:`~detlab.data.loader.ShardBatchSampler`: the same batches, so the same predictions, as one process)
    and process 0 gets every image's; the others get empty lists."""
    model.eval()
    batches = []  # (batch number in the dataset, (predictions, targets))
    loader = make_loader(dataset, batch_size, num_workers=num_workers, pin_memory=False, rank=world.rank,
                         world_size=world.size)
    for step, (images, batch_targets) in enumerate(tqdm(loader, desc="eval", leave=False, disable=not progress)):
        outputs = model([image.to(device) for image in images])
        batches.append((world.rank + step * world.size, ([{k: v.cpu() for k, v in output.items()}
                                                          for output in outputs], batch_targets)))
    gathered = distributed.gather_in_order(batches, world)
    return ([p for predictions, _ in gathered for p in predictions],
            [t for _, targets in gathered for t in targets])


def score(predictions: list[dict], targets: list[dict], class_names: list[str], metric: str) -> Evaluation:
    """The detlab evaluator's figures for one run."""
    if metric == "voc":
        result = evaluate_voc(predictions, targets, len(class_names), class_names=class_names)
        return Evaluation(result, format_voc(result), result.map_area, result.map_area)
    result = evaluate_coco_predictions(predictions, targets, len(class_names), class_names)
    return Evaluation(result, format_coco(result), float(result.stats[0]), float(result.stats[1]))


def evaluate_model(model, dataset, class_names: list[str], metric: str, batch_size: int = 8, device="cpu",
                   progress: bool = True, world: distributed.World = distributed.SINGLE) -> Evaluation:
    """``model``'s figures on ``dataset``; under torch.distributed (``world``) the prediction is shared by the
    processes (:func:`predict_dataset`) and the scoring done once, by process 0, for all."""
    predictions, targets = predict_dataset(model, dataset, batch_size, device=device, progress=progress, world=world)
    evaluation = score(predictions, targets, class_names, metric) if world.is_main else None
    return distributed.broadcast_object(evaluation, world)


def evaluate_checkpoint(checkpoint: str | Path, overrides: list[str] = (), out_dir: str | Path | None = None,
                        split: str = "val", device: str = "auto") -> Evaluation:
    """Evaluate a checkpoint on its own config's dataset (``overrides`` change the config, e.g. ``data.root=...``
    or ``model.score_threshold=0.05``) in batches of its ``train.batch_size`` images, as its training evaluated;
    ``split`` is ``"val"`` or ``"train"``. Writes metrics.json and pr_curves.png into ``out_dir`` when given. Under
    torchrun the processes share the images (:func:`predict_dataset`); process 0 writes, every one returns."""
    if split not in ("val", "train"):
        raise ValueError(f"split: {split!r} is not valid; valid choices: val, train")
    loaded = load_detector(checkpoint, overrides)
    cfg, device = loaded.config, resolve_device(device)
    world = distributed.setup(device)  # under torchrun: the processes share the images
    device = distributed.process_device(device, world)
    data = build_data(cfg.data, input_pipeline(cfg.model), cfg.train.seed)
    dataset = data.val if split == "val" else untransformed(data.train)
    try:
        evaluation = evaluate_model(loaded.model.to(device), dataset, loaded.class_names, data.metric,
                                    batch_size=cfg.train.batch_size, device=device, progress=world.is_main,
                                    world=world)
    except torch.OutOfMemoryError as e:
        raise out_of_memory(e, cfg, device, f"evaluating {checkpoint}",
                            "lower train.batch_size, the images per evaluation batch (e.g. train.batch_size=1 in "
                            "the overrides), or evaluate on the CPU") from e
    finally:
        distributed.teardown()
    if out_dir is not None and world.is_main:
        write_report(evaluation, out_dir, title=Path(checkpoint).name)
    return evaluation


def write_report(evaluation: Evaluation, out_dir: str | Path, title: str) -> None:
    out = Path(out_dir)
    write_json(evaluation.result, out / "metrics.json")
    plot_pr_curves(pr_curves(evaluation.result), out / "pr_curves.png", title=title)
