"""Faster R-CNN, detlab against torchvision: the same architecture with the same weights on the same batch, side
by side in one process. Reports training images/s (forward + backward + SGD step), inference images/s and peak
memory of each, and the ratio detlab / torchvision next to its target.

    python tools/bench_train.py                          # CPU: MobileNetV3-Large-320-FPN and R50-FPN, 2 images
    python tools/bench_train.py --size 800 1088 --batch 2 --iterations 5
    python tools/bench_train.py --device cuda --amp bf16 --batch 8 --json out.json

Both models are built as for fine-tuning from pretrained weights (torchvision's recipe: frozen BatchNorm in the
backbone, the last 3 backbone stages trained, 91 COCO classes): torchvision's with its own builders
(``_resnet_fpn_extractor`` / ``_mobilenet_extractor``, ``FasterRCNN``), detlab's from ``configs/`` with the
torchvision weights copied in through detlab's torchvision-weights loader. The images are given at 3/4 of
``--size`` so both models resize them (to ``--size`` for R50-FPN). Timing alternates the two models (warm-up
first, then the median of ``--iterations``), so both see the same machine load.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the resident-set growth over the run of
each model alone (sampled every 2 ms, after returning freed memory to the system), a rough but like-for-like
figure.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from detlab.boxes import box_iou
from detlab.cli import tool
from detlab.config import load_config
from detlab.engine.runtime import autocast, machine_problems, resolve_device, set_threads, threads_problem
from detlab.models import build_model
from detlab.models.torchvision_detectors import DetectorFile, load_into
from detlab.transfer import apply_strategy

ROOT = Path(__file__).resolve().parents[1]

# name -> (detlab config, transfer strategy matching torchvision's trainable_backbone_layers=3)
CASES = {
    "mobilenet_v3_large_320_fpn": ("configs/faster_rcnn_mobilenet_v3_large_320_fpn_coco.yaml", "partial:2"),
    "resnet50_fpn": ("configs/faster_rcnn_resnet50_fpn_coco.yaml", "partial:3"),
}
TARGETS = {"cpu": {"train": 1.1, "inference": 1.2}, "cuda": {"train": 1.3, "inference": 1.3}}


def torchvision_model(name: str) -> torch.nn.Module:
    """torchvision's detector as its builders make it for fine-tuning from pretrained weights (random here)."""
    if name == "resnet50_fpn":
        backbone = torchvision.models.resnet50(weights=None, norm_layer=TorchvisionFrozenBN)
        return TorchvisionFasterRCNN(_resnet_fpn_extractor(backbone, 3), num_classes=91)
    backbone = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=TorchvisionFrozenBN)
    backbone = _mobilenet_extractor(backbone, True, 3)
    anchors = TorchvisionAnchors(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return TorchvisionFasterRCNN(backbone, num_classes=91, rpn_anchor_generator=anchors, min_size=320, max_size=640,
                                 rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=150, rpn_score_thresh=0.05)


def detlab_model(name: str, theirs: torch.nn.Module) -> torch.nn.Module:
    config, strategy = CASES[name]
    cfg = load_config(ROOT / config, ["model.weights=null", "model.faster_rcnn.frozen_batchnorm=true",
                                      "model.score_threshold=0.05", "model.nms_threshold=0.5"])
    ours = build_model(cfg.model, 90)
    apply_strategy(ours, strategy)
    load_into(ours, DetectorFile(Path("torchvision model"), theirs.state_dict()), None)
    return ours


def batch(size: tuple[int, int], count: int, device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    height, width = size[0] * 3 // 4, size[1] * 3 // 4
    images = [torch.rand(3, height, width, generator=generator).to(device) for _ in range(count)]
    targets = []
    for _ in range(count):
        xy = torch.rand(6, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = 20 + torch.rand(6, 2, generator=generator) * torch.tensor([width * 0.3, height * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(1, 91, (6,), generator=generator).to(device)})
    return images, targets


class PeakMemory:
    """Peak memory of the code inside the block: CUDA's allocator peak, or RSS growth sampled on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base, self.top, self.running = self._rss(), self._rss(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.top = max(self.top, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.peak_mb = (self.top - self.base) / 2**20


def matched_share(theirs: list[dict], ours: list[dict]) -> float:
    """Share of torchvision's detections that detlab's has too: the same label (torchvision's minus 1), IoU >
    0.99, score within 1e-3 (detlab computes in channels-last layout, so float rounding can reorder near-equal
    scores; matching, not indexing, compares them)."""
    found = total = 0
    for t, o in zip(theirs, ours):
        total += len(t["boxes"])
        if len(t["boxes"]) and len(o["boxes"]):
            same = (box_iou(t["boxes"], o["boxes"]) > 0.99) & (t["labels"][:, None] - 1 == o["labels"][None]) & (
                (t["scores"][:, None] - o["scores"][None]).abs() < 1e-3)
            found += int(same.any(dim=1).sum())
    return found / total if total else 1.0


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_case(name: str, size, count: int, iterations: int, device: torch.device, amp: str) -> dict:
    torch.manual_seed(0)
    theirs = torchvision_model(name)
    ours = detlab_model(name, theirs)
    models = {"torchvision": theirs.to(device), "detlab": ours.to(device)}
    images, targets = batch(size, count, device)
    with torch.no_grad():  # the same weights give the same detections (a check, not a timing)
        same = [m.eval()(images) for m in models.values()]
    agree = matched_share(*same)
    optimizers = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
                  for k, m in models.items()}

    def train_step(key):
        model = models[key]
        with autocast(device, amp):
            # torchvision's targets are labels 1..90 (0 is its background), detlab's 0..89
            given = targets if key == "torchvision" else [dict(t, labels=t["labels"] - 1) for t in targets]
            losses = model(images, given)
        loss = sum(losses.values())
        optimizers[key].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[key].step()

    @torch.inference_mode()
    def infer(key):
        with autocast(device, amp):
            models[key](images)

    results = {}
    for mode, step in (("train", train_step), ("inference", infer)):
        for model in models.values():
            model.train(mode == "train")
        times = {key: [] for key in models}
        for key in models:  # warm-up (and the one-off allocations), then alternate
            timed(partial(step, key), device)
        for _ in range(iterations):
            for key in models:
                times[key].append(timed(partial(step, key), device))
        peaks = {}
        for key in models:
            with PeakMemory(device) as peak:
                step(key)
            peaks[key] = peak.peak_mb
        rate = {key: count / statistics.median(t) for key, t in times.items()}
        results[mode] = {"torchvision_img_s": rate["torchvision"], "detlab_img_s": rate["detlab"],
                         "ratio": rate["detlab"] / rate["torchvision"],
                         "target": TARGETS[device.type][mode],
                         "torchvision_peak_mb": peaks["torchvision"], "detlab_peak_mb": peaks["detlab"]}
    return {"case": name, "images": count, "size": list(size), "device": str(device), "amp": amp,
            "same_detections_share": agree, **results}


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1088], metavar=("HEIGHT", "WIDTH"),
                        help="the model input size the images are resized to (R50-FPN)")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--iterations", type=int, default=5, help="timed steps per model and mode")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--amp", default="off", choices=["off", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    problems = {"threads": threads_problem(args.threads), **machine_problems(args.device, args.amp)}
    for option, problem in problems.items():
        if problem:
            parser.error(f"--{option} {getattr(args, option)!r} {problem}")
    set_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, amp {args.amp}")
    rows = []
    for name in args.cases:
        result = run_case(name, tuple(args.size), args.batch, args.iterations, device, args.amp)
        rows.append(result)
        for mode in ("train", "inference"):
            r = result[mode]
            verdict = "met" if r["ratio"] >= r["target"] else "NOT met"
            print(f"{name:28s} {mode:9s} torchvision {r['torchvision_img_s']:7.2f} img/s "
                  f"({r['torchvision_peak_mb']:7.0f} MB)  detlab {r['detlab_img_s']:7.2f} img/s "
                  f"({r['detlab_peak_mb']:7.0f} MB)  ratio {r['ratio']:.2f}x (target >= {r['target']}x: {verdict})")
        print(f"{name:28s} torchvision's detections that detlab's match (same weights): "
              f"{result['same_detections_share']:.1%}")
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
