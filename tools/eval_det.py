"""Score any detector's COCO results JSON against a COCO annotation JSON, or a detlab checkpoint on its dataset.

    python tools/eval_det.py --results dets.json --ann instances_val2017.json [--out-dir runs/eval] [--voc]
    python tools/eval_det.py --checkpoint runs/x/best.pt [--set data.root=/data/voc] [--split val|train]
    torchrun --nproc_per_node=4 tools/eval_det.py --checkpoint ...   # the images shared by 4 processes

Prints pycocotools' 12 stats and a per-class AP table (``--voc``: VOC AP at ``--iou``, crowd as difficult),
writes ``metrics.json`` (all figures) and ``pr_curves.png`` into ``--out-dir``. The JSON files are decoded straight
into columns (``detlab.eval.cocojson``). Bad input (malformed JSON, unknown image/category ids, boxes of the wrong
length) is reported in one line naming the file, the entry and the field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detlab.cli import tool
from detlab.eval import coco_detections_from_file, coco_ground_truth_from_file, evaluate_coco
from detlab.eval.report import format_coco, format_voc, plot_pr_curves, pr_curves, write_json
from detlab.eval.voc import evaluate_voc_coco


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", help="COCO results JSON: [{image_id, category_id, bbox, score}]")
    parser.add_argument("--ann", help="COCO annotation JSON (instances_*.json)")
    parser.add_argument("--checkpoint", help="a detlab detection checkpoint (best.pt or last.pt), evaluated on its "
                        "config's dataset (VOC or COCO metric by dataset) instead of --results/--ann")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="--checkpoint: config overrides")
    parser.add_argument("--split", default="val", choices=("val", "train"), help="--checkpoint: which images")
    parser.add_argument("--device", default="auto", help="--checkpoint: auto (CUDA when visible, else CPU) | cpu | "
                        "cuda | cuda:N")
    parser.add_argument("--out-dir", default="runs/eval", help="where metrics.json and pr_curves.png go")
    parser.add_argument("--voc", action="store_true", help="VOC AP (11-point and area) instead of COCO stats")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of --voc (match when IoU > it)")
    args = parser.parse_args(argv)
    if args.checkpoint:
        return _evaluate_checkpoint(args)
    if not (args.results and args.ann):
        parser.error("give --results and --ann, or --checkpoint")
    gt = coco_ground_truth_from_file(args.ann)
    dets = coco_detections_from_file(args.results, gt)
    result = evaluate_voc_coco(gt, dets, args.iou) if args.voc else evaluate_coco(gt, dets)
    print(format_voc(result) if args.voc else format_coco(result))
    out = Path(args.out_dir)
    write_json(result, out / "metrics.json")
    plot_pr_curves(pr_curves(result), out / "pr_curves.png", title=f"{Path(args.results).name}")
    print(f"wrote {out / 'metrics.json'} and {out / 'pr_curves.png'}")
    return 0


def _evaluate_checkpoint(args) -> int:
    from detlab.engine.evaluate import evaluate_checkpoint

    from detlab.engine.distributed import world_from_env

    evaluation = evaluate_checkpoint(args.checkpoint, args.set, args.out_dir, args.split, args.device)
    if not world_from_env().is_main:  # under torchrun process 0 alone reports
        return 0
    print(evaluation.table)
    print(f"wrote {Path(args.out_dir) / 'metrics.json'} and {Path(args.out_dir) / 'pr_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
