"""Export a trained checkpoint, postprocess included, to ONNX or TorchScript.

    python tools/export.py --checkpoint runs/yolov3_synthetic/best.pt                      # -> runs/.../best.onnx
    python tools/export.py --checkpoint best.pt --format torchscript --out model.torchscript.pt
    python tools/export.py --checkpoint best.pt --set model.score_threshold=0.1 model.max_detections=50

The file takes ``images`` (float32 [B, 3, H, W], RGB in [0, 1]; YOLOv3: letterboxed to its image_size, Faster
R-CNN: any size, not resized inside) and returns ``boxes`` [N, 4], ``scores`` [N], ``labels`` [N] (0..C-1) and
``batch_index`` [N]; the class names travel inside it. Details: detlab/deploy/__init__.py. The inference settings are
the checkpoint's, changed with --set. ONNX needs ``pip install onnx onnxruntime onnxscript``.

Exit status: 0 written; 2 a bad argument, checkpoint or environment (one line on stderr).
"""

import argparse
import sys

from detlab.cli import tool
from detlab.deploy import FORMATS, default_path, export
from detlab.engine.checkpoint import load_detector


@tool
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a detlab detection checkpoint (best.pt or last.pt)")
    parser.add_argument("--format", default="onnx", choices=list(FORMATS), help="onnx (default) or torchscript")
    parser.add_argument("--out", help="the file to write; default: beside the checkpoint, .onnx / .torchscript.pt")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="inference settings to change first, e.g. model.score_threshold=0.1")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or later)")
    args = parser.parse_args(argv)
    loaded = load_detector(args.checkpoint, args.set)
    out = args.out or default_path(args.checkpoint, args.format)
    path = export(loaded.model, out, args.format, loaded.class_names, opset=args.opset)
    print(f"wrote {path} ({args.format}, {type(loaded.model).__name__}, {len(loaded.class_names)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
