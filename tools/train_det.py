"""Train a detector; with no arguments, YOLOv3 on generated synthetic shapes on the CPU, then print the mAP table.

    python tools/train_det.py                                           # synthetic shapes, minutes on a CPU
    python tools/train_det.py --config configs/yolov3_resnet50_voc.yaml --set data.root=/data/voc
    python tools/train_det.py --set train.epochs=50 model.backbone=resnet18 model.yolov3.image_size=160
    python tools/train_det.py --config ... --resume runs/x/last.pt     # continue a run exactly
    torchrun --nproc_per_node=4 tools/train_det.py --config ...         # data-parallel on 4 GPUs (or CPU processes)
"""

import argparse
import sys

from detlab.cli import tool
from detlab.config import load_config
from detlab.engine import train
from detlab.engine.distributed import world_from_env


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (configs/*.yaml); default: the synthetic-shapes experiment")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. train.epochs=50 model.backbone=resnet18")
    parser.add_argument("--resume", help="checkpoint (last.pt) of this run to continue from")
    args = parser.parse_args(argv)
    summary = train(load_config(args.config, args.set), resume=args.resume)
    if not world_from_env().is_main:  # under torchrun process 0 alone reports
        return 0
    print(summary["table"])
    figure = "VOC mAP@0.5" if summary["metric"] == "voc" else "COCO AP@[.5:.95]"
    print(f"{figure}: {summary['headline']:.4f} (AP50 {summary['ap50']:.4f}); best {summary['best_metric']:.4f} "
          f"at epoch {summary['best_epoch']}; trained in {summary['seconds'] / 60:.1f} min; "
          f"checkpoints in {summary['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
