"""Print a detection dataset's scan summary (images, background images, boxes per class, ignore regions, what the
reader fixed: clipped or empty boxes, duplicate rows; corrupt images, the kinds converted) and save a box-size
histogram PNG.

  python tools/dataset_stats.py yolo --source data/cells/data.yaml --split val
  python tools/dataset_stats.py flat_voc --source labelimg/
  python tools/dataset_stats.py voc --root ../shared/datasets/voc-cells --splits trainval test --discover-classes
  python tools/dataset_stats.py coco --images coco/train2017 --ann coco/annotations/instances_train2017.json
  python tools/dataset_stats.py synthetic --num-images 200 --png runs/stats/synthetic_sizes.png
"""

import argparse
import sys

from detlab.cli import tool
from detlab.data.coco import COCODetection
from detlab.data.images import check_images
from detlab.data.convert import FORMATS, read_dataset
from detlab.data.stats import dataset_stats, plot_box_sizes, summary_line
from detlab.data.synthetic import SyntheticShapes
from detlab.data.voc import VOCDetection


@tool
def main(argv=None) -> int:
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
    for name in ("yolo", "flat_voc"):
        other = sub.add_parser(name, help=FORMATS[name])
        other.add_argument("--source", required=True, help=FORMATS[name])
        other.add_argument("--images", help="flat_voc: the images' folder (default: beside the XMLs)")
        other.add_argument("--split", help="yolo: the YAML key (default train)")
        other.add_argument("--ignore-classes", nargs="+", default=[], help="names of ignore regions")
    synthetic = sub.add_parser("synthetic")
    synthetic.add_argument("--num-images", type=int, default=200)
    synthetic.add_argument("--size", type=int, default=256)
    synthetic.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.format == "voc":
        dataset = VOCDetection(args.root, args.years, args.splits, discover_classes=args.discover_classes)
    elif args.format == "coco":
        dataset = COCODetection(args.images, args.ann, include_crowd=args.include_crowd)
    elif args.format in ("yolo", "flat_voc"):
        dataset = read_dataset(args.format, args.source, args.images, [args.split] if args.split else None,
                               ignore_classes=args.ignore_classes)
    else:
        dataset = SyntheticShapes(args.num_images, args.size, args.size, seed=args.seed)
    stats = dataset_stats(dataset)
    print(summary_line(stats, args.format))  # the line training prints when it starts
    if hasattr(dataset, "records"):  # read from files: decode every image, as data.skip_bad_images does
        readable = check_images(dataset, skip_bad=True, what=f"{args.format} images")
        print(f"corrupt or unreadable images: {len(dataset) - len(readable)}")
    print(f"box-size histogram: {plot_box_sizes(stats, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
