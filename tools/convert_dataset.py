"""Convert a detection dataset between Pascal VOC and COCO instances JSON.

  python tools/convert_dataset.py voc2coco --voc-root data/voc --years 2007 2012 --splits trainval --out voc.json
  python tools/convert_dataset.py coco2voc --images coco/val2017 --ann coco/annotations/instances_val2017.json \
      --voc-root out/voc --year 2017 --split val
"""

import argparse
import sys

from detlab.data.convert import coco_to_voc, voc_to_coco
from detlab.data.records import DataError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
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
    args = parser.parse_args(argv)
    if args.direction == "voc2coco":
        out = voc_to_coco(args.voc_root, args.out, args.years, args.splits, args.classes, args.discover_classes)
    else:
        out = coco_to_voc(args.images, args.ann, args.voc_root, args.year, args.split)
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:  # bad input: one clear line, no traceback
        sys.exit(f"error: {error}")
