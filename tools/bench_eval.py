"""Benchmark COCO bbox evaluation: detlab.eval vs pycocotools, faster-coco-eval and hotcoco (those installed).

    python tools/bench_eval.py [--quick] [--only detlab,hotcoco] [--json out.json]

Every implementation gets the same in-memory inputs - the annotation dict and the results list, as
``json.load`` returns them - and is timed from there to the 12 stats (its own indexing and result loading
included, JSON parsing excluded). One warm-up run, then the median of ``--repeat`` runs; an implementation
whose warm-up takes over ``--slow`` seconds (pycocotools at full size) is timed by that single run. Peak RSS
is measured in a fresh child process (inputs built, then one evaluation), for detlab only unless
``--memory-all``. Default size: 5000 images x 100 detections, 80 classes (``--quick``: 200 images).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from detlab.eval import coco_detections_from_results, coco_ground_truth_from_dict, evaluate_coco
from detlab.eval.simulate import simulate_detections, synthetic_coco_ground_truth


def run_detlab(gt: dict, results: list) -> np.ndarray:
    g = coco_ground_truth_from_dict(gt)
    return evaluate_coco(g, coco_detections_from_results(results, g)).stats


def _run_cocoeval(coco_cls, eval_cls, gt: dict, results: list) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):  # they print progress
        coco_gt = coco_cls()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = eval_cls(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def run_pycocotools(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _run_cocoeval(COCO, COCOeval, gt, results)


def run_faster_coco_eval(gt, results):
    from faster_coco_eval import COCO, COCOeval_faster

    return _run_cocoeval(COCO, COCOeval_faster, gt, results)


def run_hotcoco(gt, results):
    import hotcoco

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = hotcoco.COCO(gt)
        ev = hotcoco.COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


# name -> (module that must be importable, runner, whether it mutates its inputs so needs fresh copies)
IMPLEMENTATIONS = {
    "detlab": ("detlab", run_detlab, False),
    "pycocotools": ("pycocotools", run_pycocotools, True),
    "faster-coco-eval": ("faster_coco_eval", run_faster_coco_eval, True),
    "hotcoco": ("hotcoco", run_hotcoco, False),
}


def make_inputs(args) -> tuple[dict, list]:
    gt = synthetic_coco_ground_truth(args.images, args.classes, seed=args.seed)
    return gt, simulate_detections(gt, seed=args.seed, dets_per_image=args.dets_per_image)


def fresh(gt: dict, results: list, mutates: bool) -> tuple[dict, list]:
    """Inputs for one run; copies (made outside the timer) for implementations that add keys to them."""
    if not mutates:
        return gt, results
    copy_gt = dict(gt, annotations=[dict(a) for a in gt["annotations"]])
    return copy_gt, [dict(r, bbox=list(r["bbox"])) for r in results]


def time_one(run, gt, results, mutates, repeat: int, slow: float) -> tuple[list, np.ndarray]:
    times = []
    for i in range(1 + repeat):
        inputs = fresh(gt, results, mutates)
        t0 = time.perf_counter()
        stats = run(*inputs)
        times.append(time.perf_counter() - t0)
        if i == 0 and times[0] > slow:
            return times, stats  # too slow to repeat: the single run is the figure
    return times[1:], stats


def peak_rss_mb(name: str, args) -> float:
    """Peak RSS (MiB) of a child process that builds the inputs and runs ``name`` once."""
    cmd = [sys.executable, __file__, "--_memory-child", name, "--images", str(args.images), "--classes", str(args.classes),
           "--dets-per-image", str(args.dets_per_image), "--seed", str(args.seed)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument("--slow", type=float, default=10.0, help="a warm-up longer than this is the only run")
    parser.add_argument("--quick", action="store_true", help="200 images, 3 runs: a smoke test")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child process")
    parser.add_argument("--memory-all", action="store_true", help="peak RSS of the references too (slow)")
    parser.add_argument("--only", help="comma-separated implementations to run, e.g. detlab,hotcoco (default: all)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeat = 200, 3

    gt, results = make_inputs(args)
    if args.memory_child:
        _, run, mutates = IMPLEMENTATIONS[args.memory_child]
        run(*fresh(gt, results, mutates))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return 0

    print(f"{args.images} images, {len(results)} detections, {len(gt['annotations'])} ground truths, {args.classes} classes")
    rows = {}
    only = set(args.only.split(",")) if args.only else set(IMPLEMENTATIONS)
    if only - set(IMPLEMENTATIONS) or "detlab" not in only:
        parser.error(f"--only: pick among {', '.join(IMPLEMENTATIONS)}, detlab included")
    for name, (module, run, mutates) in IMPLEMENTATIONS.items():
        if name not in only:
            rows[name] = {"skipped": True}
            continue
        if importlib.util.find_spec(module) is None:
            rows[name] = {"installed": False}
            continue
        times, stats = time_one(run, gt, results, mutates, args.repeat, args.slow)
        rows[name] = {"installed": True, "runs": len(times), "median_s": statistics.median(times), "times_s": times,
                      "stats": stats.tolist(), "peak_rss_mb": None}  # fmt: skip
        if not args.no_memory and (name == "detlab" or args.memory_all):
            rows[name]["peak_rss_mb"] = peak_rss_mb(name, args)
        print(f"  {name}: {rows[name]['median_s']:.3f} s", flush=True)

    ours = rows["detlab"]["median_s"]
    ref = rows["pycocotools"] if "median_s" in rows["pycocotools"] else None
    print(f"\n| implementation | runs | median time (s) | speed-up vs pycocotools | time / detlab | peak RSS (MiB) | max abs diff of 12 stats vs pycocotools |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if row.get("skipped"):
            print(f"| {name} | not run (--only) | | | | | |")
            continue
        if not row["installed"]:
            print(f"| {name} | not installed, skipped | | | | | |")
            continue
        speedup = f"{ref['median_s'] / row['median_s']:.1f}x" if ref else "n/a"
        diff = f"{np.abs(np.array(row['stats']) - ref['stats']).max():.1e}" if ref else "n/a"
        rss = "n/a" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f}"
        print(f"| {name} | {row['runs']} | {row['median_s']:.3f} | {speedup} | {row['median_s'] / ours:.2f} | {rss} | {diff} |")
    if args.json:
        config = {k: getattr(args, k) for k in ("images", "dets_per_image", "classes", "seed", "repeat")}
        with open(args.json, "w") as f:
            json.dump({"config": config, "num_detections": len(results), "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
