"""Benchmark detlab's native ops against torchvision's, side by side on the same inputs.

Each case runs both implementations in this process: warm-up first, then the median of
several runs (CUDA events on a GPU), and checks that both give the same result. The table
shows the times and the ratio torchvision / detlab next to the target ratio.

    python tools/bench_ops.py                 # CPU cases, plus the GPU cases when a GPU is visible
    python tools/bench_ops.py --json out.json # also write the figures
    python tools/bench_ops.py --quick         # small sizes, a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torchvision
from torchvision.ops import boxes as tv_boxes

from detlab import ops
from detlab.cli import tool
from detlab.ops.testing import clustered_boxes, dense_boxes, random_boxes


@dataclass
class Case:
    name: str
    device: str
    target: float | None  # required ratio torchvision / detlab, None: reported only
    ours: Callable[[], object]
    reference: Callable[[], object]
    same: Callable[[object, object], bool]


@dataclass
class Result:
    name: str
    device: str
    torchvision_ms: float
    detlab_ms: float
    ratio: float
    target: float | None
    same_result: bool
    detlab_peak_mb: float | None = None


def time_ms(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def equal(a, b) -> bool:
    return torch.equal(a, b)


def close(a, b) -> bool:
    return all(torch.allclose(x, y, atol=1e-4, rtol=1e-5) for x, y in zip(a, b))


def nms_cases(device: str, sizes: dict[int, float | None], kinds: tuple[str, ...]) -> list[Case]:
    generators = {"random": random_boxes, "dense": dense_boxes, "clustered": clustered_boxes}
    cases = []
    for kind in kinds:
        for n, target in sizes.items():
            generator = torch.Generator().manual_seed(n)
            boxes = generators[kind](n, generator).to(device)
            scores = torch.rand(n, generator=generator).to(device)
            cases.append(Case(f"nms {kind} {n // 1000}k", device, target if kind == "random" else None,
                              lambda b=boxes, s=scores: ops.nms(b, s, 0.5),
                              lambda b=boxes, s=scores: torchvision.ops.nms(b, s, 0.5), equal))
    return cases


def batched_case(device: str, n: int, classes: int, target: float | None) -> Case:
    generator = torch.Generator().manual_seed(classes)
    boxes = clustered_boxes(n, generator, clusters=n // 20).to(device)
    scores = torch.rand(n, generator=generator).to(device)
    idxs = torch.randint(0, classes, (n,), generator=generator).to(device)
    # Same result as torchvision's per-category path; its public function may take the
    # coordinate-offset path instead, which is what is timed.
    return Case(f"batched_nms {classes} cls {n // 1000}k", device, target,
                lambda: ops.batched_nms(boxes, scores, idxs, 0.5),
                lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
                lambda ours, _: torch.equal(ours, tv_boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5)))


def roi_align_cases(device: str, feature_shape, num_rois: int, output: int, scale: float, label: str,
                    targets: tuple[float | None, float | None]) -> list[Case]:
    generator = torch.Generator().manual_seed(num_rois)
    batch, _, height, width = feature_shape
    features = torch.randn(*feature_shape, generator=generator).to(device)
    image = min(height, width) / scale
    boxes = random_boxes(num_rois, generator, canvas=image, min_size=16, max_size=image / 2)
    rois = torch.cat([torch.randint(0, batch, (num_rois, 1), generator=generator).float(), boxes], 1).to(device)
    grad = torch.randn(num_rois, feature_shape[1], output, output, generator=generator).to(device)
    leaf = features.clone().requires_grad_(True)

    def forward(fn):
        return lambda: fn(features, rois, output, scale, 2, True)

    def forward_backward(fn):
        def run():
            leaf.grad = None
            fn(leaf, rois, output, scale, 2, True).backward(grad)
            return leaf.grad.clone()
        return run

    return [
        Case(f"roi_align {label} fwd", device, targets[0], forward(ops.roi_align),
             forward(torchvision.ops.roi_align), lambda a, b: close([a], [b])),
        Case(f"roi_align {label} fwd+bwd", device, targets[1], forward_backward(ops.roi_align),
             forward_backward(torchvision.ops.roi_align), lambda a, b: close([a], [b])),
    ]


def multiscale_case(device: str, batch: int, channels: int, image: int, rois_per_image: int,
                    target: float | None) -> Case:
    generator = torch.Generator().manual_seed(image)
    names = ["p2", "p3", "p4", "p5"]
    shapes = [(batch, channels, image // 2 ** (2 + l), image // 2 ** (2 + l)) for l in range(4)]
    leaves = [torch.randn(*s, generator=generator).to(device).requires_grad_(True) for s in shapes]
    boxes = [random_boxes(rois_per_image, generator, canvas=image, min_size=16, max_size=image * 0.7).to(device)
             for _ in range(batch)]
    sizes = [(image, image)] * batch
    grad = torch.randn(batch * rois_per_image, channels, 7, 7, generator=generator).to(device)

    def run(module):
        def step():
            for leaf in leaves:
                leaf.grad = None
            module(dict(zip(names, leaves)), boxes, sizes).backward(grad)
            return [leaf.grad.clone() for leaf in leaves]
        return step

    return Case(f"multiscale_roi_align {len(names)} lvl {batch}x{rois_per_image} fwd+bwd", device, target,
                run(ops.MultiScaleRoIAlign(names, 7, 2)), run(torchvision.ops.MultiScaleRoIAlign(names, 7, 2)),
                close)


def cpu_cases(quick: bool) -> list[Case]:
    if quick:
        return (nms_cases("cpu", {1000: None}, ("random",)) + [batched_case("cpu", 2000, 8, None)]
                + roi_align_cases("cpu", (1, 16, 20, 20), 16, 7, 1 / 16, "small", (None, None)))
    return (nms_cases("cpu", {1000: 3.0, 5000: 5.0, 20000: 10.0}, ("random", "dense", "clustered"))
            + [batched_case("cpu", 20000, 80, 2.0)]
            + roi_align_cases("cpu", (2, 256, 50, 68), 256, 7, 1 / 16, "256ch 256 rois 7x7", (3.0, 3.0))
            + [multiscale_case("cpu", 2, 256, 512, 256, None)])


def gpu_cases(quick: bool) -> list[Case]:
    if quick:
        return nms_cases("cuda", {1000: None}, ("random",)) + [batched_case("cuda", 2000, 8, None)]
    return (nms_cases("cuda", {1000: 4.0, 20000: 3.0, 100000: 3.0}, ("random", "clustered"))
            + [batched_case("cuda", 20000, 80, 4.0)]
            + roi_align_cases("cuda", (2, 1024, 50, 68), 512, 14, 1 / 16, "C4 1024ch 512 rois 14x14", (None, 1.5))
            + [multiscale_case("cuda", 2, 256, 1024, 1000, 2.0)])


def peak_memory_mb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def run_case(case: Case, repeats: int, warmup: int) -> Result:
    same = case.same(case.ours(), case.reference())
    reference_ms = time_ms(case.reference, case.device, repeats, warmup)
    ours_ms = time_ms(case.ours, case.device, repeats, warmup)
    peak = peak_memory_mb(case.ours) if case.device == "cuda" and case.name.startswith("nms") else None
    return Result(case.name, case.device, reference_ms, ours_ms, reference_ms / ours_ms, case.target, same, peak)


def format_table(results: list[Result]) -> str:
    header = f"| {'case':<48} | {'device':<6} | {'torchvision ms':>14} | {'detlab ms':>10} | {'ratio':>7} | {'target':>7} | same |"
    lines = [header, "|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|"]
    for r in results:
        target = f">= {r.target:g}x" if r.target else "-"
        ok = "" if not r.target else (" ok" if r.ratio >= r.target else " MISS")
        lines.append(f"| {r.name:<48} | {r.device:<6} | {r.torchvision_ms:>14.3f} | {r.detlab_ms:>10.3f} | "
                     f"{r.ratio:>6.1f}x | {target:>7} | {'yes' if r.same_result else 'NO':>4} |{ok}")
    return "\n".join(lines)


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "backend": str(ops.backend()).splitlines()[0].split(":", 1)[1].strip()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@tool
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the results and the machine description here")
    parser.add_argument("--quick", action="store_true", help="small sizes and few runs (a smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (median reported)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    warmup = 1 if args.quick else 3

    cases = []
    if args.device in ("all", "cpu"):
        cases += cpu_cases(args.quick)
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            cases += gpu_cases(args.quick)
        elif args.device == "cuda":
            parser.error("--device cuda: no CUDA GPU is visible")
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results = []
    for case in cases:
        results.append(run_case(case, repeats, warmup))
        print(f"  {case.device} {case.name}: {results[-1].ratio:.1f}x", file=sys.stderr, flush=True)
    print(format_table(results))
    peaks = [r for r in results if r.detlab_peak_mb is not None]
    for r in peaks:
        print(f"peak GPU memory of detlab {r.name}: {r.detlab_peak_mb:.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": [asdict(r) for r in results]}, f, indent=2)
    return 0 if all(r.same_result for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
