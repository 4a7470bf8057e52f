"""Export a detector, postprocess included, to TorchScript or ONNX.

    from detlab.deploy import export, load_torchscript
    export(model, "model.onnx", "onnx", class_names=names)      # or Detector.export / tools/export.py
    boxes, scores, labels, batch_index = load_torchscript("model.torchscript.pt")(images)

What an exported model takes (one input, ``images``, float32 in [0, 1], RGB, NCHW):

- YOLOv3: Tensor[B, 3, S, S], S = ``model.yolov3.image_size``, images already letterboxed to S x S
  (:class:`detlab.data.transforms.Letterbox`, as the eager model does it). Dynamic: the batch size. Fixed: S (the
  letterbox's size is the model's; another S would be another model).
- Faster R-CNN: Tensor[B, 3, H, W], any H and W (padded inside to multiples of 32). Dynamic: batch, height and
  width. The graph does not resize: it detects at the resolution it is given, so the results equal the eager
  model's on images already at its size rule (short side ``min_size``, long side at most ``max_size``).
  All images of a batch share one size.

What it returns (four outputs, flat over the batch, grouped by image in batch order, best score first within an
image): ``boxes`` Tensor[N, 4] float32 xyxy in the pixels of the input tensor (clipped to it), ``scores`` Tensor[N]
float32, ``labels`` Tensor[N] int64 in 0..C-1, ``batch_index`` Tensor[N] int64 (the image of each row). An image
without detections has no rows; a batch without any gives N = 0. The inference settings (score and NMS thresholds,
``max_detections``, ``pre_nms_top_k``, the RPN's proposal counts) are those of the model when exported.

Class names travel with the file: ONNX metadata ``detlab.class_names`` (JSON), TorchScript extra file
``detlab.json`` (``{"class_names": [...], "input": ..., "outputs": [...]}``).

The native ops: TorchScript keeps calling ``torch.ops.detlab.*``, so loading it needs detlab's compiled library
(:func:`load_torchscript` loads it; C++: ``torch::dynamic_library`` of ``detlab.ops.backend().library``). ONNX
replaces them by standard operators (:mod:`detlab.deploy.onnx_ops`: ``NonMaxSuppression``, ``RoiAlign``), so
the file runs in onnxruntime without detlab. ONNX export needs ``pip install onnx onnxruntime onnxscript``
(imported only here, only when exporting to ONNX), and detlab's native ops (not ``DETLAB_OPS=torchvision``).
"""

import copy
import json
import warnings
from pathlib import Path

import torch

from detlab.deploy.graphs import GRAPHS, OUTPUTS
from detlab.errors import DetlabError

#: ``format`` -> the file suffix :func:`default_path` gives it.
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
ONNX_PACKAGES = "pip install onnx onnxruntime onnxscript"


class ExportError(DetlabError, ValueError):
    """A model, format or environment that cannot be exported; the message names the argument."""


def default_path(checkpoint: str | Path, format: str) -> Path:
    """Beside the checkpoint: ``runs/x/best.pt`` -> ``runs/x/best.onnx`` / ``runs/x/best.torchscript.pt``."""
    check_format(format)
    return Path(checkpoint).with_suffix(FORMATS[format])


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"format: unknown export format {format!r}; valid choices: {', '.join(FORMATS)}")


def exportable(model: torch.nn.Module) -> torch.nn.Module:
    """The model's graph (:mod:`detlab.deploy.graphs`) around a CPU copy of it in eval mode."""
    graph = GRAPHS.get(type(model))
    if graph is None:
        raise ExportError(f"model: cannot export a {type(model).__name__}; exportable: "
                          f"{', '.join(cls.__name__ for cls in GRAPHS)}")
    from detlab.ops import backend

    if backend().name != "native":
        raise ExportError("export traces detlab's native ops, but DETLAB_OPS=torchvision is set: unset it to export")
    try:
        return graph(copy.deepcopy(model).cpu().float().eval()).eval().requires_grad_(False)
    except NotImplementedError as e:  # a part of the model the graph cannot express
        raise ExportError(f"model: {e}") from None


def export(model: torch.nn.Module, path: str | Path, format: str = "onnx", class_names: list[str] | None = None,
           opset: int = 18) -> Path:
    """Write ``model`` (a detlab detector) with its postprocess to ``path`` as ``format`` ("onnx" or
    "torchscript"); the contract of the file is in the module docstring. ``opset``: ONNX opset, at least 18.
    Returns the path."""
    check_format(format)
    if format == "onnx" and opset < 18:
        raise ExportError(f"opset: the ONNX export needs opset 18 or later (RoiAlign's coordinate modes, "
                          f"ReduceMax with axes as input), got {opset}")
    graph = exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"class_names": list(class_names or []), "model": type(model).__name__,
            "input": describe_input(graph), "outputs": list(OUTPUTS)}
    with torch.no_grad():
        if format == "torchscript":
            _torchscript(graph, path, info)
        else:
            _onnx(graph, path, info, opset)
    return path


def describe_input(graph) -> str:
    height, width = ("H", "W") if graph.dynamic_size else graph.example()[0].shape[-2:]
    return f"images float32 [B, 3, {height}, {width}] RGB in [0, 1]"


def _torchscript(graph, path: Path, info: dict) -> None:
    with _QuietJit():
        traced = torch.jit.trace(graph, graph.example(), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"detlab.json": json.dumps(info)})


class _QuietJit(warnings.catch_warnings):
    """TorchScript is deprecated in favour of torch.export, but it is what C++ and older deployments load: the
    module docstring says so once, not a warning on every call."""

    def __enter__(self):
        super().__enter__()
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


def _drop_runtime_asserts(program) -> None:
    """Remove torch.export's runtime checks of sizes from ``program``: a size after NMS or a mask has no finite bound
    there, and a bound derived from it (3 classes x 2**63 boxes) overflows ONNX's int64 when translated. ONNX
    Runtime checks nothing of them anyway."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_scalar.default:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript file written by :func:`export`, with detlab's native ops loaded first (the file calls them)."""
    from detlab.ops import backend

    backend()
    with _QuietJit():
        return torch.jit.load(str(path), map_location="cpu")


def _onnx(graph, path: Path, info: dict, opset: int) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs all three)
        import onnxscript  # noqa: F401
        from detlab.deploy import onnx_ops
    except ImportError as e:
        raise ExportError(f"format onnx needs the packages onnx and onnxscript ({e}): {ONNX_PACKAGES}") from e
    # named Dims with bounds on height and width trip torch.export's constraint solver (padding to multiples of 32
    # derives other sizes from them); DYNAMIC hints let it find the relations itself
    dims = {0: torch.export.Dim.DYNAMIC(min=1, max=1024)}
    if graph.dynamic_size:
        dims.update({2: torch.export.Dim.DYNAMIC(min=32, max=4096), 3: torch.export.Dim.DYNAMIC(min=32, max=4096)})
    program = torch.export.export(graph, graph.example(), dynamic_shapes=(dims,), strict=False)
    _drop_runtime_asserts(program)
    program = torch.onnx.export(program, graph.example(), dynamo=True, opset_version=opset, input_names=["images"],
                                output_names=list(OUTPUTS), custom_translation_table=onnx_ops.translations(),
                                verbose=False)
    program.model.metadata_props["detlab.class_names"] = json.dumps(info["class_names"])
    program.model.metadata_props["detlab.input"] = info["input"]
    program.save(str(path))
