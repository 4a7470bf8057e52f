"""Fuzz detlab.ops against torchvision: seeded random cases, each compared with torchvision's answer.

    python tools/fuzz_ops.py --cases 5000 --seed 0               # every op, on the CPU
    python tools/fuzz_ops.py --op nms --cases 100000 --seed 3
    python tools/fuzz_ops.py --device cuda                         # on a GPU
    python tools/fuzz_ops.py --op roi_align --seed 0 --case 123    # replay one case

Prints, per op, the cases run, the mismatches (0 expected; the first few with the case index that
replays them) and the time; for roi_align and multiscale_roi_align also the worst error per dtype,
forward and backward: max |detlab - torchvision| and, in brackets, its share of the tolerance
(<= 1 passes). Exits with 1 if any case mismatches. What each case is compared with, and the
tolerances: detlab/ops/fuzz.py.
"""

from __future__ import annotations

import argparse
import sys

import torch

from detlab.cli import tool
from detlab.ops import fuzz


def format_report(report: fuzz.OpReport) -> str:
    lines = [f"{report.op:22} {report.device:5} {report.cases:7} cases {report.mismatches:5} mismatches "
             f"{report.seconds:8.1f} s"]
    lines += [f"    MISMATCH {m}" for m in report.first_mismatches]
    references = sorted({(dtype, ref) for dtype, _, ref in report.worst})
    if references:
        lines.append(f"    {'worst error':40} {'forward':24} backward")
    for dtype, ref in references:
        cells = []
        for what in ("forward", "backward"):
            abs_error, ratio = report.worst.get((dtype, what, ref), (0.0, 0.0))
            share = "reported only" if ref.endswith("reported") else f"{ratio:.2f} of tolerance"
            cells.append(f"{abs_error:.2e} ({share})")
        label = f"{dtype} vs torchvision {ref}"
        lines.append(f"    {label:40} {cells[0]:24} {cells[1]}")
    return "\n".join(lines)


@tool
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="cases per op (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cases (default 0)")
    parser.add_argument("--op", choices=("all",) + fuzz.OPS, default="all")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--case", type=int, metavar="INDEX", help="run only this case and describe it")
    args = parser.parse_args(argv)
    if args.cases < 0:
        parser.error(f"--cases must be >= 0, got {args.cases}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    ops = fuzz.OPS if args.op == "all" else (args.op,)
    if args.case is not None:
        failed = False
        for op in ops:
            result = fuzz.run_case(op, args.seed, args.case, args.device)
            print(f"{op} case {args.case}: {result.description}\n    {result.mismatch or 'matches torchvision'}")
            failed = failed or result.mismatch is not None
        return int(failed)
    mismatches = 0
    for op in ops:
        report = fuzz.fuzz(op, args.cases, args.seed, args.device)
        print(format_report(report), flush=True)
        mismatches += report.mismatches
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
