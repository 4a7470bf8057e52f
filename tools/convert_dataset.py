"""Convert a detection dataset between its four formats (VOC devkit, flat VOC folder, Ultralytics YOLO, COCO), or
export its object crops as an image-classification folder (for pretraining a backbone with tools/train_cls.py).

  python tools/convert_dataset.py convert --from yolo --source data/cells/data.yaml --split val \
      --to coco --out out/cells_val.json
  python tools/convert_dataset.py convert --from flat_voc --source labelimg/ --to voc --out data/voc --split all
  python tools/convert_dataset.py convert --from voc --source ../shared/datasets/voc-cells --split test \
      --to yolo --out-split val --out data/cells_yolo
  python tools/convert_dataset.py convert --from coco --source ann.json --images imgs/ --to yolo --out data/yolo
  python tools/convert_dataset.py voc2coco --voc-root data/voc --years 2007 2012 --splits trainval --out voc.json
  python tools/convert_dataset.py coco2voc --images coco/val2017 --ann coco/annotations/instances_val2017.json \
      --voc-root out/voc --year 2017 --split val
  python tools/convert_dataset.py crops --voc-root ../shared/datasets/voc-cells --split train --out crops/train
  python tools/convert_dataset.py crops --voc-root ../shared/datasets/voc-cells --split val --out crops/val
"""

import argparse
import sys

from detlab.cli import tool
from detlab.data import COCODetection, VOCDetection
from detlab.data.convert import FORMATS, coco_to_voc, read_dataset, voc_to_coco, write_dataset
from detlab.data.crops import export_crops


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    convert = sub.add_parser("convert", help="any format -> any other (" + ", ".join(FORMATS) + ")",
                             description="\n".join(f"{name}: {what}" for name, what in FORMATS.items()),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("--from", dest="source_format", required=True, choices=list(FORMATS))
    convert.add_argument("--source", required=True, help="what --from reads (see above)")
    convert.add_argument("--images", help="coco: the image folder of --source; flat_voc: its images (default: beside)")
    convert.add_argument("--split", help="voc: ImageSets/Main name read and written (default trainval); yolo: the "
                                         "YAML key read and the split folder written (default train)")
    convert.add_argument("--out-split", help="the split name written, when not --split (e.g. --split trainval "
                                             "--out-split train)")
    convert.add_argument("--year", default="2007", help="voc: VOC<year> read and written")
    convert.add_argument("--classes", nargs="+", help="class names in label order (default: the names found)")
    convert.add_argument("--to", required=True, choices=list(FORMATS))
    convert.add_argument("--out", required=True, help="voc: root (VOCdevkit/ made in it); flat_voc, yolo: folder; "
                                                      "coco: JSON path (images referenced under its folder)")
    to_coco = sub.add_parser("voc2coco", help="VOC folder -> COCO JSON (file_names relative to VOCdevkit/)")
    to_coco.add_argument("--voc-root", required=True, help="folder holding VOCdevkit/")
    to_coco.add_argument("--years", nargs="+", default=["2007"])
    to_coco.add_argument("--splits", nargs="+", default=["trainval"])
    to_coco.add_argument("--classes", nargs="+", help="class names in label order (default: the 20 VOC classes)")
    to_coco.add_argument("--discover-classes", action="store_true", help="use the sorted names found")
    to_coco.add_argument("--out", required=True, help="output JSON path")
    to_voc = sub.add_parser("coco2voc", help="COCO JSON + images -> VOC folder")
    to_voc.add_argument("--images", required=True, help="folder the JSON's file_names are relative to")
    to_voc.add_argument("--ann", required=True, help="instances JSON")
    to_voc.add_argument("--voc-root", required=True, help="output folder (VOCdevkit/ is created in it)")
    to_voc.add_argument("--year", default="2007")
    to_voc.add_argument("--split", default="trainval")
    crops = sub.add_parser("crops", help="VOC split or COCO JSON -> <out>/<class>/*.png object crops + background/")
    source = crops.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc-root", help="folder holding VOCdevkit/ (classes: the names found)")
    source.add_argument("--ann", help="COCO instances JSON (with --images)")
    crops.add_argument("--images", help="COCO: folder the JSON's file_names are relative to")
    crops.add_argument("--year", default="2007")
    crops.add_argument("--split", default="train", help="VOC: ImageSets/Main/<split>.txt (export training images only)")
    crops.add_argument("--out", required=True, help="output folder (<class>/ subfolders are created in it)")
    crops.add_argument("--context", type=float, default=0.2, help="grow each box by this fraction per side")
    crops.add_argument("--backgrounds-per-image", type=int, default=2, help="object-free patches per image")
    crops.add_argument("--near-misses-per-object", type=int, default=0,
                       help="background crops of each object shifted to an IoU of 0.1-0.4 (hard negatives)")
    args = parser.parse_args(argv)
    if args.direction == "convert":
        splits = [args.split] if args.split else None
        dataset = read_dataset(args.source_format, args.source, args.images, splits, [args.year], args.classes)
        out = write_dataset(args.to, dataset, args.out, args.out_split or args.split, args.year)
        print(f"{len(dataset)} images, {sum(len(r.boxes) for r in dataset.records)} boxes, classes: "
              f"{', '.join(dataset.class_names)}")
    elif args.direction == "voc2coco":
        out = voc_to_coco(args.voc_root, args.out, args.years, args.splits, args.classes, args.discover_classes)
    elif args.direction == "coco2voc":
        out = coco_to_voc(args.images, args.ann, args.voc_root, args.year, args.split)
    else:
        if args.ann is not None and args.images is None:
            parser.error("crops --ann needs --images (the folder its file_names are relative to)")
        dataset = (VOCDetection(args.voc_root, args.year, args.split, discover_classes=True) if args.voc_root
                   else COCODetection(args.images, args.ann))
        counts = export_crops(dataset, args.out, args.context, args.backgrounds_per_image, args.near_misses_per_object)
        print(", ".join(f"{name}: {count}" for name, count in counts.items()))
        out = args.out
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
