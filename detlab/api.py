"""Detector: a trained detection checkpoint ready to predict on paths, PIL images, arrays or tensors.

    det = Detector.from_checkpoint("runs/yolov3_synthetic/best.pt")   # device="auto": CUDA when visible
    result = det.predict("image.jpg")        # {"boxes", "scores", "labels", "class_names"}, original pixels
    results = det.predict([pil_image, array_hwc_uint8, tensor_chw])

    with Detector.from_checkpoint("best.pt", workers=4, half=True) as det:   # fp16 autocast on a GPU
        results = det.predict(paths, batch_size=32)   # batch k + 1 decoded by the threads while batch k runs
        figures = det.benchmark(paths, batch_size=32)   # latency p50 / p95 per batch (ms), images/s

``predict`` keeps no state between calls (the model is in eval mode, grad and autocast modes are per thread, the
preprocessing pool takes work from any thread), so one Detector may serve several threads at once.
"""

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detlab.config import config_to_dict
from detlab.data.images import load_image, to_rgb_array
from detlab.engine.checkpoint import load_detector
from detlab.engine.runtime import DeviceError, autocast, resolve_device

#: Preprocessing threads of a Detector unless given: decoding (PIL, zlib, libjpeg) releases the GIL.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
#: Detections scoring below this are dropped by :meth:`Detector.predict` unless told otherwise.
SCORE_THRESHOLD = 0.25


class Detector:
    """A detector in eval mode with its ``class_names`` and ``config`` (a nested dict, as in the checkpoint).

    Args:
        device: ``"auto"`` (the GPU when CUDA sees one), ``"cpu"``, ``"cuda:1"`` or a torch.device.
        workers: threads of the Detector's own pool that read and convert images (paths decoded, arrays made
            tensors, pinned on a GPU), the next batch while the model runs the current one; created once, stopped
            by :meth:`close` (or leaving a ``with`` block). 0: the calling thread reads them. Default
            :data:`DEFAULT_WORKERS`.
        half: run the model under float16 autocast (CUDA only). Autocast rather than ``model.half()``: the weights
            stay float32 and each op runs in the precision autocast gives it, so the box maths that the families
            already do in float32 (YOLO's decoding and post-processing, the R-CNN heads' deltas and proposals) stay
            float32, as they do in a mixed-precision training run.
    """

    def __init__(self, model: torch.nn.Module, class_names: list[str], config: dict, device="auto",
                 workers: int | None = None, half: bool = False):
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if not isinstance(half, bool):
            raise TypeError(f"half must be True or False, got {half!r}")
        if half and self.device.type != "cuda":
            raise DeviceError(f"half=True needs a CUDA device, but this Detector runs on {self.device}; "
                              f"use half=False there")
        workers = DEFAULT_WORKERS if workers is None else workers
        _check_count("workers", workers, 0)
        self.model = model.to(self.device).eval()
        self.class_names, self.config, self.half = list(class_names), config, half
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="detlab-detector") if workers else None
        self.closed = False

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="auto", use_ema: bool = True, overrides: list[str] = (),
                        workers: int | None = None, half: bool = False) -> "Detector":
        """Load a checkpoint written by :func:`detlab.engine.train` (``best.pt``, or ``last.pt`` with its EMA
        weights when it has them); ``device="auto"`` is the GPU when CUDA sees one; ``workers`` and ``half`` as
        in :class:`Detector`.

        ``overrides`` change its config before the model is built, e.g. the inference settings
        ``["model.score_threshold=0.1", "model.yolov3.multi_label=false"]``; one that changes the architecture
        is an error naming the key (the weights would not fit)."""
        loaded = load_detector(path, overrides, use_ema)
        return cls(loaded.model, loaded.class_names, config_to_dict(loaded.config), device, workers, half)

    def close(self) -> None:
        """Stop the preprocessing threads (after the images already given them); predicting afterwards is an
        error. A Detector that is dropped without closing frees its idle threads when it is garbage-collected."""
        self.closed = True
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @torch.inference_mode()
    def predict(self, images, score_threshold: float = SCORE_THRESHOLD, batch_size: int = 8):
        """Detect objects.

        Args:
            images: a path (str / Path; read as training reads it, see :func:`as_image_tensor`), a PIL image,
                an ndarray[H, W, 3] uint8 (RGB), a Tensor[3, H, W] (uint8, or float in [0, 1]), or a list of them.
            score_threshold: keep detections scoring at least this.
            batch_size: images per forward pass; the pool reads batch k + 1 while the model runs batch k.

        Returns:
            per image (a list for a list input, in its order): ``{"boxes": Tensor[K, 4] xyxy original pixels,
            "scores": Tensor[K], "labels": Tensor[K], "class_names": list[str]}``, on the CPU. A bad image of a
            list is the error it is alone, its message starting with its index (``images[3]: ...``).
        """
        _check_count("batch_size", batch_size, 1)
        single = not isinstance(images, (list, tuple))
        results = []
        for batch in self._batches([images] if single else list(images), batch_size, named=not single):
            results += self._detect(batch, score_threshold)
        return results[0] if single else results

    @torch.inference_mode()
    def benchmark(self, images, batch_size: int = 8, warmup: int = 3, runs: int = 20) -> dict:
        """Time the model on ``images`` (a list as :meth:`predict` takes; read once beforehand, so decoding is not
        timed) in batches of ``batch_size``: ``warmup`` untimed passes over all batches, then ``runs`` timed ones.
        A batch is timed from its CPU tensors to its detections on the CPU (what :meth:`predict` does per batch,
        ``torch.cuda.synchronize`` before the clock starts and stops on a GPU).

        Returns:
            ``{"device": str, "half": bool, "batch_size", "batches" (per pass), "runs", "latency_ms_p50",
            "latency_ms_p95" (per batch, over every timed batch), "throughput" (images/s over the timed passes)}``.
        """
        _check_count("batch_size", batch_size, 1)
        _check_count("warmup", warmup, 0)
        _check_count("runs", runs, 1)
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError(f"images: benchmark needs a non-empty list of images, got {type(images).__name__}"
                             + (" of none" if isinstance(images, (list, tuple)) else ""))
        batches = list(self._batches(list(images), batch_size, named=True))
        for _ in range(warmup):
            for batch in batches:
                self._detect(batch, SCORE_THRESHOLD)
        seconds = []
        for _ in range(runs):
            for batch in batches:
                self._synchronize()
                start = time.perf_counter()
                self._detect(batch, SCORE_THRESHOLD)
                self._synchronize()
                seconds.append(time.perf_counter() - start)
        p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95]).tolist()
        return {"device": str(self.device), "half": self.half, "batch_size": batch_size, "batches": len(batches),
                "runs": runs, "latency_ms_p50": p50, "latency_ms_p95": p95,
                "throughput": runs * len(images) / sum(seconds)}

    def export(self, path: str | Path, format: str = "onnx") -> Path:
        """Write the model, postprocess included, to ``path`` as ``format`` ("onnx" or "torchscript") with the class
        names inside; what the file takes (images float32 [B, 3, H, W] in [0, 1]) and returns (boxes, scores,
        labels, batch_index) is in :mod:`detlab.deploy`. The model here is left as it is. Returns the path."""
        from detlab.deploy import export

        return export(self.model, path, format, self.class_names)

    def _batches(self, images: list, batch_size: int, named: bool):
        """Lists of at most ``batch_size`` Tensor[3, H, W] (CPU; pinned for a GPU) of ``images``, in order; batch
        k + 1 is handed to the pool before batch k is yielded, so it is read while the caller runs batch k. An
        error reading an image is raised when its batch is reached, ``images[i]: `` before it when ``named``."""
        if self.closed:
            raise RuntimeError("this Detector is closed (close() or its with block ended); create a new one")
        ahead = []
        try:
            for start in range(0, len(images), batch_size):
                futures = [self._submit(self._read, images[i], i, named)
                           for i in range(start, min(start + batch_size, len(images)))]
                if ahead:
                    yield [future.result() for future in ahead]
                ahead = futures
            if ahead:
                yield [future.result() for future in ahead]
        finally:  # an error, or a caller that stops early: the batch read ahead is not needed
            for future in ahead:
                future.cancel()

    def _submit(self, *call) -> Future:
        """``call`` handed to the pool (or run now without one); a Detector closed meanwhile by another thread is
        the closed Detector's error, not the pool's."""
        if self.pool is None:
            return _run_now(*call)
        try:
            return self.pool.submit(*call)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            if self.closed:
                raise RuntimeError("this Detector was closed (close() or its with block ended) while predicting; "
                                   "create a new one") from None
            raise

    def _read(self, image, index: int, named: bool) -> torch.Tensor:
        """``image`` as a CPU Tensor[3, H, W] (:func:`as_image_tensor`), pinned when the model runs on a GPU so
        that its copy there is asynchronous."""
        try:
            tensor = as_image_tensor(image)
        except (OSError, ValueError, TypeError) as error:
            if named:  # the same error type as for the image alone, which image of the list it is first
                error.args = (f"images[{index}]: {error}",)
            raise
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def _detect(self, batch: list[torch.Tensor], score_threshold: float) -> list[dict]:
        """Detections (on the CPU, scoring at least ``score_threshold``, with class names) of one batch of
        Tensor[3, H, W]."""
        images = [image.to(self.device, non_blocking=True) for image in batch]
        with autocast(self.device, "fp16" if self.half else "off"):
            outputs = self.model(images)
        results = []
        for output in outputs:
            output = {k: v.cpu() for k, v in output.items()}  # one copy per tensor; the filtering on the host
            keep = output["scores"] >= score_threshold
            result = {k: v[keep] for k, v in output.items()}
            result["class_names"] = [self.class_names[i] for i in result["labels"].tolist()]
            results.append(result)
        return results

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _check_count(name: str, value, minimum: int) -> None:
    """A ValueError naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _run_now(function, *args) -> Future:
    """``function(*args)`` run on this thread, as a done Future (the pool's ``submit`` when there is no pool)."""
    future = Future()
    try:
        future.set_result(function(*args))
    except Exception as error:  # handed to the caller by future.result(), as the pool does
        future.set_exception(error)
    return future


def as_image_tensor(image) -> torch.Tensor:
    """A path, PIL image, ndarray[H, W, 3] uint8 or Tensor[3, H, W] -> Tensor[3, H, W] (uint8, or float in
    [0, 1] as given); anything else is a clear error.

    A path is read as training reads it (:func:`detlab.data.images.load_image`: upright by its EXIF orientation,
    16-bit scaled by its value range, alpha dropped); a missing one is a FileNotFoundError, an undecodable one a
    :class:`~detlab.data.records.DataError` (a ValueError) naming it. A PIL image's mode is converted the same way,
    but its EXIF orientation is not applied: the caller holds those pixels and gets boxes in them."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
        return load_image(image)
    if isinstance(image, Image.Image):
        image = to_rgb_array(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"ndarray image must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor image must be [3, H, W], got {tuple(image.shape)}")
        return image
    raise TypeError(f"cannot predict on a {type(image).__name__}: give a path, PIL image, ndarray[H, W, 3] uint8 "
                    f"or Tensor[3, H, W]")
