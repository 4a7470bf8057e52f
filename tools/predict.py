"""Detect objects with a trained checkpoint; writes each image with its boxes drawn and one JSON of detections.

    python tools/predict.py --checkpoint runs/yolov3_synthetic/best.pt --images photo.jpg
    python tools/predict.py --checkpoint best.pt --images "data/*.jpg" folder/ --out-dir runs/predict --score 0.3

The JSON lists per image its path and detections (box xyxy in original pixels, score, label, class name).
"""

import argparse
import glob
import json
import sys
from pathlib import Path

from detlab.api import Detector, as_image_tensor
from detlab.plotting import draw_boxes, figure, save_figure

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def expand(patterns: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> image paths; a pattern matching nothing is an error."""
    paths = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise FileNotFoundError(f"--images {pattern!r}: no such file, or no image in it / matching it")
        paths += found
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a detlab detection checkpoint (best.pt or last.pt)")
    parser.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--out-dir", default="runs/predict", help="where the drawn images and detections.json go")
    parser.add_argument("--score", type=float, default=0.25, help="keep detections scoring at least this")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible, else CPU) | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        detector = Detector.from_checkpoint(args.checkpoint, device=args.device)
        paths = expand(args.images)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for path in paths:
            image = as_image_tensor(path)
            result = detector.predict(image, score_threshold=args.score)
            fig = figure((8, 8 * image.shape[1] / image.shape[2]))
            draw_boxes(fig.add_axes((0, 0, 1, 1)), image, result["boxes"], result["labels"], detector.class_names,
                       result["scores"])
            save_figure(fig, out / f"{path.stem}_pred.png")
            records.append({"image": str(path), "detections": [
                {"box": box, "score": score, "label": label, "class_name": name}
                for box, score, label, name in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                                   result["labels"].tolist(), result["class_names"])]})
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (out / "detections.json").write_text(json.dumps(records, indent=1))
    total = sum(len(r["detections"]) for r in records)
    print(f"{total} detections in {len(records)} images; wrote {out / 'detections.json'} and the drawn images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
