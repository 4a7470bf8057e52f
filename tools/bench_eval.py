"""Benchmark COCO bbox evaluation: detlab.eval vs pycocotools, faster-coco-eval and hotcoco (those installed).

    python tools/bench_eval.py [--quick] [--only detlab,hotcoco] [--modes files,memory] [--json out.json]

Every implementation gets the same inputs, in two modes, and is timed to the 12 stats:
- files: the annotation and results JSON files (written once, before timing, as ``json.dump`` writes them), so
  reading and parsing them is included - the whole of ``tools/eval_det.py --results --ann``;
- memory: the annotation dict and the results list as ``json.load`` returns them (its own indexing and result
  loading included, JSON parsing excluded).
One warm-up run each, then the median of ``--repeat`` runs, taken in rounds that run every implementation and
mode in turn (a busy machine's load then weighs on all alike); one whose warm-up takes over ``--slow`` seconds
(pycocotools at full size) is timed by that single run. Peak RSS is measured in a fresh child process
(one evaluation; in memory mode after building the inputs), for detlab only unless ``--memory-all``. For
detlab in files mode, one more run times its stages (reading each file, evaluating). Default size: 5000 images
x 100 detections, 80 classes (``--quick``: 200 images).
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
import tempfile
import time
from pathlib import Path

import numpy as np

from detlab.cli import tool
from detlab.eval import (
    coco_detections_from_columns,
    coco_detections_from_results,
    coco_ground_truth_from_dict,
    coco_ground_truth_from_file,
    evaluate_coco,
    evaluate_coco_files,
    read_coco_results,
)
from detlab.eval.simulate import simulate_detections, synthetic_coco_ground_truth

MODES = ("files", "memory")
ANN_FILE, RESULTS_FILE = "instances.json", "results.json"


# Each runner takes (gt, results): two file paths (str) in files mode, the parsed dict and list in memory mode.
def run_detlab(gt, results) -> np.ndarray:
    if isinstance(gt, str):
        return evaluate_coco_files(gt, results).stats
    g = coco_ground_truth_from_dict(gt)
    return evaluate_coco(g, coco_detections_from_results(results, g)).stats


def _run_cocoeval(coco_cls, eval_cls, gt, results) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):  # they print progress
        if isinstance(gt, str):
            coco_gt = coco_cls(gt)
        else:
            coco_gt = coco_cls()
            coco_gt.dataset = gt
            coco_gt.createIndex()
        ev = eval_cls(coco_gt, coco_gt.loadRes(results), "bbox")  # loadRes reads a str path itself
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
        coco_gt = hotcoco.COCO(gt)  # a path or a dict; loadRes too takes a path or a list
        ev = hotcoco.COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


# name -> (module that must be importable, runner, whether it mutates in-memory inputs so needs fresh copies)
IMPLEMENTATIONS = {
    "detlab": ("detlab", run_detlab, False),
    "pycocotools": ("pycocotools", run_pycocotools, True),
    "faster-coco-eval": ("faster_coco_eval", run_faster_coco_eval, True),
    "hotcoco": ("hotcoco", run_hotcoco, False),
}


def make_inputs(args) -> tuple[dict, list]:
    gt = synthetic_coco_ground_truth(args.images, args.classes, seed=args.seed)
    return gt, simulate_detections(gt, seed=args.seed, dets_per_image=args.dets_per_image)


def write_inputs(gt: dict, results: list, folder: Path) -> tuple[str, str]:
    """The two JSON files of files mode, as ``json.dump`` writes them (paths as str: pycocotools wants str)."""
    paths = folder / ANN_FILE, folder / RESULTS_FILE
    for data, path in zip((gt, results), paths):
        with open(path, "w") as f:
            json.dump(data, f)
    return str(paths[0]), str(paths[1])


def fresh(inputs: tuple, mutates: bool) -> tuple:
    """Inputs for one run; copies (made outside the timer) of in-memory inputs for implementations that add keys."""
    gt, results = inputs
    if not mutates or isinstance(gt, str):
        return inputs
    copy_gt = dict(gt, annotations=[dict(a) for a in gt["annotations"]])
    return copy_gt, [dict(r, bbox=list(r["bbox"])) for r in results]


def _time_run(run, inputs, mutates) -> tuple[float, np.ndarray]:
    this = fresh(inputs, mutates)
    t0 = time.perf_counter()
    stats = run(*this)
    return time.perf_counter() - t0, stats


def time_round_robin(jobs: dict, repeat: int, slow: float) -> dict:
    """jobs: key -> (run, inputs, mutates). One warm-up run each, then ``repeat`` rounds in which every job runs
    once in turn, so that a change of machine load during the benchmark weighs on all of them alike; a job whose
    warm-up took over ``slow`` seconds is not repeated (its single run is the figure). Returns key -> (times,
    stats)."""
    warm = {}
    for key, job in jobs.items():
        warm[key] = _time_run(*job)
        print(f"  warm-up {' '.join(key)}: {warm[key][0]:.3f} s", flush=True)
    times = {key: [] for key, (seconds, _) in warm.items() if seconds <= slow}
    for _ in range(repeat):
        for key in times:
            times[key].append(_time_run(*jobs[key])[0])
    return {key: (times.get(key) or [seconds], stats) for key, (seconds, stats) in warm.items()}


def detlab_stages(ann_path: str, results_path: str) -> dict:
    """Seconds per stage of one detlab evaluation from files: where the time goes."""
    stages, t0 = {}, time.perf_counter()

    def lap(name):
        nonlocal t0
        stages[name] = time.perf_counter() - t0
        t0 = time.perf_counter()

    gt = coco_ground_truth_from_file(ann_path)
    lap("read annotations")
    columns = read_coco_results(results_path)
    lap("read results (decode + columns)")
    dets = coco_detections_from_columns(columns, gt, results_path)
    lap("map ids")
    evaluate_coco(gt, dets)
    lap("evaluate")
    return stages


def peak_rss_mb(name: str, mode: str, args, folder: Path) -> float:
    """Peak RSS (MiB) of a child process that runs ``name`` once in ``mode`` (memory: it builds the inputs too)."""
    cmd = [sys.executable, __file__, "--_memory-child", f"{name}:{mode}", "--_files", str(folder),
           "--images", str(args.images), "--classes", str(args.classes),
           "--dets-per-image", str(args.dets_per_image), "--seed", str(args.seed)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_child(args) -> int:
    name, mode = args.memory_child.split(":")
    _, run, mutates = IMPLEMENTATIONS[name]
    if mode == "files":
        run(str(Path(args.files) / ANN_FILE), str(Path(args.files) / RESULTS_FILE))
    else:
        run(*fresh(make_inputs(args), mutates))
    print(_peak_rss_mb())
    return 0


def _peak_rss_mb() -> float:
    """This process's peak RSS (MiB): /proc's VmHWM where there is one, since Linux's ru_maxrss keeps the RSS of
    the parent that started this process (across fork and exec) - here the benchmark, holding all the inputs."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument("--slow", type=float, default=10.0, help="a warm-up longer than this is the only run")
    parser.add_argument("--quick", action="store_true", help="200 images, 3 runs: a smoke test")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: files (JSON files, parsing "
                        "included), memory (parsed dicts and lists)")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--memory-all", action="store_true", help="peak RSS of the references too (slow)")
    parser.add_argument("--only", help="comma-separated implementations to run, e.g. detlab,hotcoco (default: all)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    parser.add_argument("--_files", dest="files", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeat = 200, 3
    args.only = args.only.split(",") if args.only else list(IMPLEMENTATIONS)
    args.modes = args.modes.split(",")
    if set(args.only) - set(IMPLEMENTATIONS) or "detlab" not in args.only:
        parser.error(f"--only: pick among {', '.join(IMPLEMENTATIONS)}, detlab included")
    if set(args.modes) - set(MODES) or not args.modes:
        parser.error(f"--modes: pick among {', '.join(MODES)}")
    return args


def measure(inputs: dict, args, folder: Path) -> dict:
    """Per implementation: skipped, not installed, or per mode runs, median and all times, stats, peak RSS."""
    rows, jobs = {}, {}
    for name, (module, run, mutates) in IMPLEMENTATIONS.items():
        if name not in args.only:
            rows[name] = {"skipped": True}
        elif importlib.util.find_spec(module) is None:
            rows[name] = {"installed": False}
        else:
            rows[name] = {"installed": True}
            jobs.update({(name, mode): (run, inputs[mode], mutates) for mode in args.modes})
    for (name, mode), (times, stats) in time_round_robin(jobs, args.repeat, args.slow).items():
        with_rss = not args.no_memory and (name == "detlab" or args.memory_all)
        rss = peak_rss_mb(name, mode, args, folder) if with_rss else None
        rows[name][mode] = {"runs": len(times), "median_s": statistics.median(times), "times_s": times,
                            "stats": stats.tolist(), "peak_rss_mb": rss}  # fmt: skip
    return rows


def print_table(rows: dict, modes: list) -> None:
    ref = rows["pycocotools"] if rows["pycocotools"].get("installed") else None
    print("\n| implementation | mode | runs | median time (s) | speed-up vs pycocotools | time / detlab | peak RSS (MiB) "
          "| max abs diff of 12 stats vs pycocotools |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, row in rows.items():
        if not row.get("installed"):
            print(f"| {name} | {'not run (--only)' if row.get('skipped') else 'not installed, skipped'} | | | | | | |")
            continue
        for mode in modes:
            r, ours = row[mode], rows["detlab"][mode]
            speedup = f"{ref[mode]['median_s'] / r['median_s']:.1f}x" if ref else "n/a"
            diff = f"{np.abs(np.array(r['stats']) - ref[mode]['stats']).max():.1e}" if ref else "n/a"
            rss = "n/a" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
            print(f"| {name} | {mode} | {r['runs']} | {r['median_s']:.3f} | {speedup} | {r['median_s'] / ours['median_s']:.2f} "
                  f"| {rss} | {diff} |")  # fmt: skip


@tool
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    gt, results = make_inputs(args)
    print(f"{args.images} images, {len(results)} detections, {len(gt['annotations'])} ground truths, {args.classes} classes")
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        folder = Path(tmp)
        inputs = {"files": write_inputs(gt, results, folder), "memory": (gt, results)}
        rows = measure(inputs, args, folder)
        stages = detlab_stages(*inputs["files"]) if "files" in args.modes else None
    print_table(rows, args.modes)
    if stages:
        print("\ndetlab from files, one run: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
    if args.json:
        config = {k: getattr(args, k) for k in ("images", "dets_per_image", "classes", "seed", "repeat", "modes")}
        with open(args.json, "w") as f:
            figures = {"config": config, "num_detections": len(results), "results": rows, "detlab_stages_s": stages}
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
