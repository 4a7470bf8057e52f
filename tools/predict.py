"""Detect objects with a trained checkpoint; writes each image with its boxes drawn and one JSON of detections.

    python tools/predict.py --checkpoint runs/yolov3_synthetic/best.pt --images photo.jpg
    python tools/predict.py --checkpoint best.pt --images "data/*.jpg" folder/ --out-dir runs/predict --score 0.3

Images are read as training reads them (detlab.data.images: upright by their EXIF orientation, 16-bit scaled by
their value range, alpha dropped); boxes are in those displayed pixels. A file given twice (a folder and a pattern
both matching it) is predicted once.

Each drawn image is the input's path relative to the inputs' common folder, under --out-dir, with ``.pred.png``
appended to its name (a/x.jpg -> a/x.jpg.pred.png): inputs with the same stem in other folders or with another
extension never overwrite each other. The JSON lists per image its path as given ("image"), its drawn image
relative to --out-dir ("output") and its detections (box xyxy in original pixels, score, label, class name).

An image that cannot be read is named on stderr and skipped; the others are still predicted and written.
Exit status: 0 every image predicted; 1 some were skipped; 2 nothing predicted (a bad argument or checkpoint, or
no image could be read).
"""

import argparse
import glob
import json
import os
import sys
from pathlib import Path

from detlab.api import Detector
from detlab.cli import tool
from detlab.data.images import ImageKinds, read_image
from detlab.data.records import IMAGE_EXTENSIONS, DataError
from detlab.plotting import draw_boxes, figure, save_figure

def expand(patterns: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> image paths, each file once; a pattern matching nothing is
    an error."""
    paths = {}  # absolute path -> the path as given, first occurrence first
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise FileNotFoundError(f"--images {pattern!r}: no such file, or no image in it / matching it")
        for p in found:
            paths.setdefault(os.path.abspath(p), p)
    return list(paths.values())


def output_names(paths: list[Path]) -> list[Path]:
    """Each input's drawn image relative to --out-dir: its path relative to the inputs' common folder, ``.pred.png``
    appended to the name. Distinct files have distinct absolute paths, hence distinct names."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath([p.parent for p in absolute])
    return [p.relative_to(root).with_name(f"{p.name}.pred.png") for p in absolute]


def predict_image(detector: Detector, image, score: float, drawn: Path) -> list[dict]:
    """Detections of ``image`` (Tensor[3, H, W] uint8) as JSON records; draws them into ``drawn``."""
    result = detector.predict(image, score_threshold=score)
    fig = figure((8, 8 * image.shape[1] / image.shape[2]))
    draw_boxes(fig.add_axes((0, 0, 1, 1)), image, result["boxes"], result["labels"], detector.class_names,
               result["scores"])
    save_figure(fig, drawn)
    return [{"box": box, "score": s, "label": label, "class_name": name}
            for box, s, label, name in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                           result["labels"].tolist(), result["class_names"])]


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a detlab detection checkpoint (best.pt or last.pt)")
    parser.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--out-dir", default="runs/predict", help="where the drawn images and detections.json go")
    parser.add_argument("--score", type=float, default=0.25, help="keep detections scoring at least this")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible, else CPU) | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    detector = Detector.from_checkpoint(args.checkpoint, device=args.device)
    paths = expand(args.images)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, skipped, kinds = [], 0, ImageKinds()
    for path, name in zip(paths, output_names(paths)):
        try:
            image, image_kinds = read_image(path)
        except DataError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped += 1
            continue
        kinds.add(image_kinds)
        records.append({"image": str(path), "output": name.as_posix(),
                        "detections": predict_image(detector, image, args.score, out / name)})
    (out / "detections.json").write_text(json.dumps(records, indent=1))
    total = sum(len(r["detections"]) for r in records)
    print(f"{total} detections in {len(records)} images; wrote {out / 'detections.json'} and the drawn images")
    if kinds.counts:
        print(f"converted to 8-bit upright RGB: {kinds.summary()}")
    if skipped:
        print(f"skipped {skipped} of {len(paths)} images that cannot be read (named above)", file=sys.stderr)
    return 0 if not skipped else 1 if records else 2


if __name__ == "__main__":
    sys.exit(main())
