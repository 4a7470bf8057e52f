"""On a GPU the training step waits for the device once: the ``.tolist()`` of the logged losses in
:meth:`Trainer.step`. Everything else (model forward, losses, backward, gradient clipping, loss scaling, optimizer,
LR schedule, EMA) is queued without a host sync, except where a family's targets have data-dependent sizes:

- YOLOv3: :func:`detlab.heads.yolo.assign_targets` (the positives' count: ``nonzero`` and boolean masks);
- Faster R-CNN: proposals (small boxes dropped and NMS keep data-dependent counts), the
  matching and sampling of anchors and proposals, the native ops' FPN level split, and the target checks of
  ``FasterRCNN.move_target``. As torchvision's.

Each sync is found by torch's sync debug mode: set to ``"warn"``, every synchronizing CUDA call warns, attributed to
the Python line that made it, so the test lists every sync outside those places at once (``"error"`` would stop at
the first). The ``.tolist()`` line must be found once per step: a check that the warnings are seen at all.
"""

import inspect
import linecache
import os
import warnings
from pathlib import Path

import pytest
import torch
from det_helpers import TINY

import detlab.ops
from detlab import boxes
from detlab.config import load_config
from detlab.data import make_loader
from detlab.engine.trainer import Trainer
from detlab.heads import matching, roi, rpn, yolo
from detlab.models import faster_rcnn

from .test_faster_rcnn_train import TINY_FASTER_RCNN

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

STEPS = 3  # checked, after one unchecked warm-up step (lazy optimizer state, cuDNN's first choices)


def source_lines(function) -> tuple[str, range]:
    """(file, the lines of ``function``)."""
    lines, start = inspect.getsourcelines(function)
    return str(Path(inspect.getsourcefile(function)).resolve()), range(start, start + len(lines))


def whole_package(package) -> tuple[str, range]:
    """(the package's folder, with a trailing separator; every line of every file in it)."""
    return str(Path(package.__file__).resolve().parent) + os.sep, range(0)


def logged_reduction_line() -> tuple[str, int]:
    """Where Trainer.step turns the stacked losses into floats: the one sync every step may make."""
    file, lines = source_lines(Trainer.step)
    found = [n for n in lines if ".tolist()" in linecache.getline(file, n)]
    assert len(found) == 1, f"Trainer.step should call .tolist() once, on lines {found}"
    return file, found[0]


#: Where each family may sync, beyond the logged reduction: (file, lines; an empty range is the whole file or
#: folder).
ALLOWED = {
    "yolov3": [source_lines(yolo.assign_targets)],
    "faster_rcnn": [source_lines(f) for f in (
        rpn.RegionProposalNetwork.select_proposals, boxes.remove_small_boxes,
        rpn.RegionProposalNetwork.assign, rpn.RegionProposalNetwork.loss, matching.Matcher.__call__,
        matching.BalancedSampler.__call__, roi.RoIHeads.sample, roi.RoIHeads.loss, faster_rcnn.FasterRCNN.move_target,
        faster_rcnn.resize_boxes)] + [whole_package(detlab.ops)],
}
CONFIGS = {"yolov3": TINY, "faster_rcnn": TINY_FASTER_RCNN}


def allowed(where: tuple[str, int], places: list[tuple[str, range]]) -> bool:
    file, line = where
    return any(file == f and line in lines if lines else file.startswith(f) for f, lines in places)


def synced_lines(run) -> list[tuple[str, int]]:
    """(file, line) of every synchronizing CUDA call ``run()`` makes, in order."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [(str(Path(w.filename).resolve()), w.lineno) for w in caught if "synchronizing" in str(w.message)]


def describe(where: tuple[str, int]) -> str:
    return f"{where[0]}:{where[1]}: {linecache.getline(*where).strip()}"


@pytest.mark.parametrize("amp", ["off", "fp16"])
@pytest.mark.parametrize("family", ["yolov3", "faster_rcnn"])
def test_a_training_step_syncs_the_host_only_for_its_logged_losses(tmp_path, family, amp):
    cfg = load_config(None, CONFIGS[family] + [f"train.out_dir={tmp_path}", "train.device=cuda", f"train.amp={amp}",
                                               f"data.synthetic_train={4 * (STEPS + 1)}"])
    trainer = Trainer(cfg, print_fn=lambda *a: None)
    assert trainer.ema is not None and cfg.train.clip_grad_norm  # the whole step: EMA and clipping included
    loader = make_loader(trainer.data.train, cfg.train.batch_size, shuffle=True, num_workers=0, drop_last=True,
                         group_by_aspect=trainer.inputs.group_by_aspect)
    batches = list(loader)
    assert len(batches) == STEPS + 1
    trainer.model.train()
    trainer.step(*batches[0])

    def steps():
        for images, targets in batches[1:]:
            trainer.step(images, targets)

    synced = synced_lines(steps)
    reduction = logged_reduction_line()
    assert synced.count(reduction) == STEPS, "the logged reduction's sync was not seen: is sync debug mode working?"
    unexpected = [where for where in synced if where != reduction and not allowed(where, ALLOWED[family])]
    expected = sorted({describe(where) for where in synced if where != reduction and where not in unexpected})
    print(f"{family} amp={amp}: {len(synced)} syncs in {STEPS} steps; allowed ones at:", *expected, sep="\n  ")
    assert not unexpected, "host syncs in the training step:\n" + "\n".join(
        sorted({describe(where) for where in unexpected}))
