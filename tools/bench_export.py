"""Latency of an exported detector: the eager model against its TorchScript and ONNX (onnxruntime, CPU) exports, side
by side in one process on the same batch, postprocess included. Warm-up first, then the median of --repeats runs;
the table gives each time and the ratio eager / export. The exports' detections are checked against the eager
model's (count per image and boxes to 1e-3 px after matching), so a fast but wrong export shows.

    python tools/bench_export.py                                   # both families, small random-init models
    python tools/bench_export.py --checkpoint runs/yolov3_synthetic/best.pt --batch 4
    python tools/bench_export.py --family faster_rcnn --size 480 640 --json out.json

Without --checkpoint each family is built from the default config with a ResNet18 backbone, random init (Faster R-CNN
at ``--size``'s short side, so the eager model does not resize). CPU only: the ONNX file runs on onnxruntime's CPU
provider, as deployed without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from bench_ops import machine, time_ms  # tools/ is the script's folder: its sibling benches import

from detlab.cli import tool
from detlab.config import load_config
from detlab.deploy import ONNX_PACKAGES, ExportError, export, load_torchscript
from detlab.engine.checkpoint import load_detector
from detlab.models import build_model

FAMILIES = {"yolov3": ["model.backbone=resnet18"],
            "faster_rcnn": ["model.name=faster_rcnn", "model.backbone=resnet18"]}


@dataclass
class Result:
    model: str
    batch: int
    size: tuple[int, int]
    eager_ms: float
    torchscript_ms: float
    onnxruntime_ms: float
    same_detections: bool


def same_detections(expected: list[dict], outputs) -> bool:
    boxes, _, labels, batch_index = (torch.as_tensor(o) for o in outputs)
    for image, eager in enumerate(expected):
        mine = batch_index == image
        if int(mine.sum()) != len(eager["boxes"]):
            return False
        if len(eager["boxes"]):
            distance = (boxes[mine][None] - eager["boxes"][:, None]).abs().amax(-1)
            distance[labels[mine][None] != eager["labels"][:, None]] = float("inf")
            if distance.min(1).values.max() >= 1e-3:
                return False
    return True


def bench(model, name: str, batch: int, size: tuple[int, int], repeats: int, warmup: int, folder: Path) -> Result:
    import onnxruntime

    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    scripted = load_torchscript(export(model, folder / f"{name}.torchscript.pt", "torchscript"))
    session = onnxruntime.InferenceSession(str(export(model, folder / f"{name}.onnx", "onnx")),
                                           providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy()}
    with torch.inference_mode():
        expected = model(list(images))
        runs = {"eager": lambda: model(list(images)), "torchscript": lambda: scripted(images),
                "onnxruntime": lambda: session.run(None, feed)}
        same = same_detections(expected, scripted(images)) and same_detections(expected, session.run(None, feed))
        times = {key: time_ms(fn, "cpu", repeats, warmup) for key, fn in runs.items()}
    return Result(name, batch, size, times["eager"], times["torchscript"], times["onnxruntime"], same)


def format_table(results: list[Result]) -> str:
    header = (f"| {'model':<12} | {'batch':>5} | {'size':>9} | {'eager ms':>9} | {'TorchScript ms':>14} | "
              f"{'ratio':>6} | {'onnxruntime ms':>14} | {'ratio':>6} | same |")
    lines = [header, "|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|"]
    for r in results:
        lines.append(f"| {r.model:<12} | {r.batch:>5} | {r.size[0]:>4}x{r.size[1]:<4} | {r.eager_ms:>9.2f} | "
                     f"{r.torchscript_ms:>14.2f} | {r.eager_ms / r.torchscript_ms:>5.2f}x | {r.onnxruntime_ms:>14.2f} | "
                     f"{r.eager_ms / r.onnxruntime_ms:>5.2f}x | {'yes' if r.same_detections else 'NO':>4} |")
    return "\n".join(lines)


def models(args) -> list[tuple[str, torch.nn.Module, tuple[int, int]]]:
    """(name, eager model, image size) per benchmarked model."""
    if args.checkpoint:
        model = load_detector(args.checkpoint).model
        square = getattr(model, "image_size", None)
        return [(type(model).__name__, model, (square, square) if square else tuple(args.size))]
    chosen = list(FAMILIES) if args.family == "both" else [args.family]
    height, width = args.size
    built = []
    for name in chosen:
        extra = ([f"model.yolov3.image_size={max(height, width)}"] if name == "yolov3" else
                 [f"model.faster_rcnn.min_size={min(height, width)}", f"model.faster_rcnn.max_size={max(height, width)}"])
        torch.manual_seed(0)
        model = build_model(load_config(None, FAMILIES[name] + extra).model, 20).eval()
        square = max(height, width)
        built.append((name, model, (square, square) if name == "yolov3" else (height, width)))
    return built


@tool
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a detlab detection checkpoint (default: random-init ResNet18 models)")
    parser.add_argument("--family", choices=["both", *FAMILIES], default="both", help="without --checkpoint")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 416], metavar=("H", "W"),
                        help="image size (YOLOv3: letterbox side max(H, W))")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", metavar="PATH", help="write the results and the machine description here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or min(args.size) < 32:
        parser.error("--batch and --repeats must be at least 1, --warmup at least 0, --size sides at least 32")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ExportError(f"bench_export needs onnxruntime ({e}): {ONNX_PACKAGES}") from e
    info = {**machine(), "onnxruntime": onnxruntime.__version__}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model, size in models(args):
            results.append(bench(model, name, args.batch, size, args.repeats, args.warmup, Path(folder)))
            print(f"  {name}: done", file=sys.stderr, flush=True)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.same_detections for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
