"""Inference speed of detlab's YOLOv3-MobileNetV3-Large against torchvision's two MobileNetV3-Large detectors
(``ssdlite320_mobilenet_v3_large``, ``fasterrcnn_mobilenet_v3_large_fpn``), side by side in one process on the same
images: throughput at ``--batch`` images per call and latency at one image per call.

    python tools/bench_infer.py                                        # CPU: small sizes, a smoke test's worth
    python tools/bench_infer.py --device cuda --json infer.json        # GPU: 416 px, batch 32 and batch 1
    python tools/bench_infer.py --device cuda --amp fp16 --json infer_fp16.json

Every model is built with random weights (no download: ``weights=None, weights_backbone=None``; detlab's from
``configs/yolov3_mobilenet_v3_large_coco.yaml`` with ``model.weights=null``) for ``--classes`` classes, and gets the
same float images of ``--size`` square, which each prepares as it does for its users: detlab letterboxes to
``model.yolov3.image_size`` (set to ``--size``), SSDLite resizes to 320, Faster R-CNN to its ``min_size`` 800.
All keep detections scoring at least ``--score-threshold`` (random weights score low: few survive, as with a
trained model on an empty scene; post-processing costs more on busy images). Times: warm-up calls, then the median
of ``--runs`` (CUDA events on a GPU), model by model, under ``torch.inference_mode`` and ``--amp`` autocast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision
from bench_ops import machine, time_ms  # tools/ is the script's folder: its sibling benches import
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, ssdlite320_mobilenet_v3_large

from detlab.cli import tool
from detlab.config import load_config
from detlab.engine.runtime import AMP_DTYPES, autocast, machine_problems, resolve_device, set_threads, threads_problem
from detlab.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DETLAB = "detlab_yolov3_mobilenet_v3_large"


def detlab_yolov3(size: int, classes: int, score: float) -> torch.nn.Module:
    cfg = load_config(ROOT / "configs" / "yolov3_mobilenet_v3_large_coco.yaml",
                      ["model.weights=null", f"model.yolov3.image_size={size}", f"model.score_threshold={score}"])
    return build_model(cfg.model, classes)


def torchvision_ssdlite(size: int, classes: int, score: float) -> torch.nn.Module:
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes + 1,
                                         score_thresh=score)


def torchvision_faster_rcnn(size: int, classes: int, score: float) -> torch.nn.Module:
    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=classes + 1,
                                             box_score_thresh=score)


#: Model name -> (builder(size, classes, score threshold), the input it makes of a size x size image).
MODELS = {
    DETLAB: (detlab_yolov3, "{size}x{size} letterboxed"),
    "torchvision_ssdlite320_mobilenet_v3_large": (torchvision_ssdlite, "320x320 resized"),
    "torchvision_fasterrcnn_mobilenet_v3_large_fpn": (torchvision_faster_rcnn, "800x800 resized"),
}
#: Defaults per device: the GPU figures at the target's sizes, the CPU's small enough for a smoke test.
DEFAULTS = {"cuda": {"size": 416, "batch": 32, "runs": 20, "warmup": 5},
            "cpu": {"size": 160, "batch": 4, "runs": 3, "warmup": 1}}


def bench_model(name: str, args, device: torch.device) -> dict:
    """Throughput at ``args.batch`` and latency at batch 1 of model ``name``: ``{"model", "input", "params_m",
    "batch_ms", "throughput_img_s", "latency_ms"}``."""
    build, prepared = MODELS[name]
    torch.manual_seed(0)
    model = build(args.size, args.classes, args.score_threshold).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, args.size, generator=generator).to(device) for _ in range(args.batch)]

    def timed(batch: list[torch.Tensor]) -> float:
        @torch.inference_mode()
        def call():
            with autocast(device, args.amp):
                model(batch)

        return time_ms(call, device.type, args.runs, args.warmup)

    batch_ms = timed(images)
    return {"model": name, "input": prepared.format(size=args.size),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch_ms": batch_ms,
            "throughput_img_s": args.batch / (batch_ms / 1000), "latency_ms": timed(images[:1])}


def format_table(rows: list[dict], batch: int) -> str:
    """Markdown table; the speed-ups are detlab's over each model (above 1: detlab is faster)."""
    ours = next((r for r in rows if r["model"] == DETLAB), None)
    lines = [f"| model | input | params M | batch {batch} img/s | batch 1 ms | detlab speed-up, batch {batch} | "
             f"detlab speed-up, batch 1 |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        speedups = "- | -" if ours is None else (f"{ours['throughput_img_s'] / r['throughput_img_s']:.2f}x | "
                                                 f"{r['latency_ms'] / ours['latency_ms']:.2f}x")
        lines.append(f"| {r['model']} | {r['input']} | {r['params_m']:.1f} | {r['throughput_img_s']:.1f} | "
                     f"{r['latency_ms']:.2f} | {speedups} |")
    return "\n".join(lines)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, help="square image side (GPU default 416, CPU 160)")
    parser.add_argument("--batch", type=int, help="images per call for the throughput (GPU default 32, CPU 4)")
    parser.add_argument("--runs", type=int, help="timed calls per figure, median reported (GPU 20, CPU 3)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (GPU 5, CPU 1)")
    parser.add_argument("--amp", default="off", choices=list(AMP_DTYPES), help="autocast dtype (default off)")
    parser.add_argument("--classes", type=int, default=80, help="object classes (COCO's 80)")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="detections kept from this score")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    problems = {"threads": threads_problem(args.threads), **machine_problems(args.device, args.amp)}
    for option, problem in problems.items():
        if problem:
            parser.error(f"--{option} {getattr(args, option)!r} {problem}")
    args.device = resolve_device(args.device)
    for key, default in DEFAULTS[args.device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    for key, minimum in (("size", 32), ("batch", 1), ("runs", 1), ("warmup", 0), ("classes", 1)):
        if getattr(args, key) < minimum:
            parser.error(f"--{key} must be at least {minimum}, got {getattr(args, key)}")
    return args


@tool
def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"device {args.device}, amp {args.amp}, {args.size} px, batch {args.batch}, median of {args.runs} after "
          f"{args.warmup} warm-up, torchvision {torchvision.__version__}", flush=True)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args, args.device))
        print(f"  {name}: {rows[-1]['throughput_img_s']:.1f} img/s, {rows[-1]['latency_ms']:.2f} ms",
              file=sys.stderr, flush=True)
    print(format_table(rows, args.batch))
    if args.json:
        settings = {k: getattr(args, k) for k in ("size", "batch", "runs", "warmup", "amp", "classes",
                                                  "score_threshold")}
        Path(args.json).write_text(json.dumps({"machine": info, "device": str(args.device), **settings,
                                               "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
