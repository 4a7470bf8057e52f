"""Print a detection dataset's counts (images, boxes per class) and save a box-size histogram PNG.

  python tools/dataset_stats.py voc --root ../shared/datasets/voc-cells --splits trainval test --discover-classes
  python tools/dataset_stats.py coco --images coco/train2017 --ann coco/annotations/instances_train2017.json
  python tools/dataset_stats.py synthetic --num-images 200 --png runs/stats/synthetic_sizes.png
"""

import argparse
import sys

from detlab.data.coco import COCODetection
from detlab.data.stats import dataset_stats, format_stats, plot_box_sizes
from detlab.data.synthetic import SyntheticShapes
from detlab.data.voc import VOCDetection
from detlab.data.records import DataError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--png", default="box_sizes.png", help="where to save the box-size histogram")
    sub = parser.add_subparsers(dest="format", required=True)
    voc = sub.add_parser("voc")
    voc.add_argument("--root", required=True, help="folder holding VOCdevkit/")
    voc.add_argument("--years", nargs="+", default=["2007"])
    voc.add_argument("--splits", nargs="+", default=["trainval"])
    voc.add_argument("--discover-classes", action="store_true")
    coco = sub.add_parser("coco")
    coco.add_argument("--images", required=True)
    coco.add_argument("--ann", required=True)
    coco.add_argument("--include-crowd", action="store_true")
    synthetic = sub.add_parser("synthetic")
    synthetic.add_argument("--num-images", type=int, default=200)
    synthetic.add_argument("--size", type=int, default=256)
    synthetic.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.format == "voc":
        dataset = VOCDetection(args.root, args.years, args.splits, discover_classes=args.discover_classes)
    elif args.format == "coco":
        dataset = COCODetection(args.images, args.ann, include_crowd=args.include_crowd)
    else:
        dataset = SyntheticShapes(args.num_images, args.size, args.size, seed=args.seed)
    stats = dataset_stats(dataset)
    print(format_stats(stats))
    print(f"box-size histogram: {plot_box_sizes(stats, args.png)}")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:  # bad input: one clear line, no traceback
        sys.exit(f"error: {error}")
