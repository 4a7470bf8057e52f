"""Detector as a server uses it: the preprocessing pool, batches in order, errors naming the image, close(),
benchmark(), and half precision (a GPU's; on the CPU a clear error)."""

import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.api import Detector
from detlab.data import DataError, SyntheticShapes
from detlab.engine.runtime import DeviceError

EVERYTHING = ["model.score_threshold=0.0"]  # keep every detection: the tiny model scores low
NO_GPU = "no CUDA GPU"


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "best.pt"


def shapes(seed: int, height: int, width: int) -> torch.Tensor:
    """Tensor[3, H, W] uint8 of a synthetic-shapes image."""
    return SyntheticShapes(1, height, width, seed=seed)[0][0]


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    """Seven different images of several sizes, as paths, arrays, PIL images and tensors."""
    folder = tmp_path_factory.mktemp("serving_images")
    images = []
    for seed in range(7):
        image = shapes(seed, 48 + 8 * seed, 90 - 6 * seed)
        array = image.permute(1, 2, 0).numpy()
        if seed % 3 == 0:
            Image.fromarray(array).save(folder / f"{seed}.png")
            images.append(folder / f"{seed}.png")
        else:
            images.append(array if seed % 3 == 1 else Image.fromarray(array) if seed == 2 else image)
    return images


def assert_identical(a: dict, b: dict) -> None:
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(a[key], b[key]), key
    assert a["class_names"] == b["class_names"]


def test_the_pool_gives_the_sequential_detections_in_the_order_given(checkpoint, mixed_images):
    sequential = Detector.from_checkpoint(checkpoint, device="cpu", overrides=EVERYTHING, workers=0)
    with Detector.from_checkpoint(checkpoint, device="cpu", overrides=EVERYTHING, workers=3) as pooled:
        assert pooled.pool is not None and sequential.pool is None
        for batch_size in (1, 3, 8):  # one image a batch; three batches, the last partial; all in one
            want = sequential.predict(mixed_images, score_threshold=0.0, batch_size=batch_size)
            got = pooled.predict(mixed_images, score_threshold=0.0, batch_size=batch_size)
            assert len(got) == len(mixed_images)
            for a, b in zip(got, want):
                assert_identical(a, b)
        # each result is its own image's: the same as predicting that image alone (batching may reorder float sums)
        for image, result in zip(mixed_images, got):
            alone = pooled.predict(image, score_threshold=0.0)
            torch.testing.assert_close(result["boxes"], alone["boxes"])
            torch.testing.assert_close(result["scores"], alone["scores"])
    # the images differ, so a swapped order would have shown
    assert len({tuple(r["scores"][:3].tolist()) for r in got}) == len(mixed_images)


def test_a_bad_image_of_a_list_is_an_error_naming_its_index(checkpoint, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    good = shapes(1, 64, 64)
    with Detector.from_checkpoint(checkpoint, device="cpu", workers=2) as detector:
        # in the first batch, and in a later one (read ahead while the batch before it ran)
        with pytest.raises(DataError, match=r"^images\[1\]: cannot decode image .*broken\.jpg"):
            detector.predict([good, tmp_path / "broken.jpg", good], batch_size=2)
        with pytest.raises(DataError, match=r"^images\[4\]: cannot decode image .*broken\.jpg"):
            detector.predict([good] * 4 + [str(tmp_path / "broken.jpg")], batch_size=2)
        with pytest.raises(FileNotFoundError, match=r"^images\[0\]: .*missing\.jpg does not exist"):
            detector.predict([tmp_path / "missing.jpg", good])
        with pytest.raises(ValueError, match=r"^images\[2\]: ndarray image must be \[H, W, 3\] uint8"):
            detector.predict([good, good, np.zeros((5, 5), np.uint8)])
        with pytest.raises(TypeError, match=r"^images\[1\]: cannot predict on a int"):
            detector.predict([good, 3])
        # a single image keeps its plain message, and the detector still serves after the errors
        with pytest.raises(DataError, match=r"^cannot decode image"):
            detector.predict(tmp_path / "broken.jpg")
        assert len(detector.predict([good, good], batch_size=1)) == 2
        with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
            detector.predict([good], batch_size=0)


def test_close_stops_the_threads_and_later_predictions(checkpoint):
    def pool_threads():
        return {t for t in threading.enumerate() if t.name.startswith("detlab-detector")}

    before = pool_threads()
    with Detector.from_checkpoint(checkpoint, device="cpu", workers=2) as detector:
        detector.predict([shapes(seed, 64, 64) for seed in range(4)], batch_size=2)
        assert pool_threads() - before  # the pool's threads did the reading
    assert not pool_threads() - before
    with pytest.raises(RuntimeError, match="this Detector is closed"):
        detector.predict(shapes(0, 64, 64))
    detector.close()  # twice is harmless


@pytest.mark.parametrize("kwargs, error, message", [
    ({"workers": -1}, ValueError, "workers must be an int >= 0, got -1"),
    ({"workers": 1.5}, ValueError, "workers must be an int >= 0, got 1.5"),
    ({"half": "yes"}, TypeError, "half must be True or False, got 'yes'"),
    ({"half": True}, DeviceError, r"half=True needs a CUDA device, but this Detector runs on cpu"),
])  # fmt: skip
def test_bad_constructor_arguments_are_clear_errors(checkpoint, kwargs, error, message):
    with pytest.raises(error, match=message):
        Detector.from_checkpoint(checkpoint, device="cpu", **kwargs)


def test_one_detector_serves_several_threads_at_once(checkpoint, mixed_images):
    """Threads predicting through one Detector (and its pool) at the same time each get their own images'
    detections, as predicted alone."""
    with Detector.from_checkpoint(checkpoint, device="cpu", overrides=EVERYTHING, workers=2) as detector:
        want = detector.predict(mixed_images, score_threshold=0.0, batch_size=2)
        results, errors = {}, []
        start = threading.Barrier(4)

        def serve(thread: int) -> None:
            try:
                start.wait()
                for _ in range(3):  # the batches of `want`: the same images, bit for bit the same detections
                    results.setdefault(thread, []).append(detector.predict(mixed_images, score_threshold=0.0,
                                                                           batch_size=2))
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors and len(results) == 4
        for rounds in results.values():
            for got in rounds:
                for a, b in zip(got, want, strict=True):
                    assert_identical(a, b)


def test_benchmark_reports_latency_percentiles_and_throughput(checkpoint, tmp_path):
    images = [shapes(seed, 64, 64) for seed in range(5)]
    with Detector.from_checkpoint(checkpoint, device="cpu", workers=2) as detector:
        figures = detector.benchmark(images, batch_size=2, warmup=1, runs=3)
        assert figures["batches"] == 3 and figures["runs"] == 3 and figures["batch_size"] == 2
        assert figures["device"] == "cpu" and figures["half"] is False
        assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p95"]
        assert math.isfinite(figures["throughput"]) and figures["throughput"] > 0
        # throughput counts every image of each timed pass of 3 batches: at least half the batches take p50 or more,
        # so a pass takes on average at least 1.5 * p50
        assert figures["throughput"] <= len(images) / (figures["latency_ms_p50"] / 1000)
        for kwargs, message in [({"batch_size": 0}, "batch_size must be an int >= 1"),
                                ({"runs": 0}, "runs must be an int >= 1"),
                                ({"warmup": -1}, "warmup must be an int >= 0")]:
            with pytest.raises(ValueError, match=message):
                detector.benchmark(images, **kwargs)
        with pytest.raises(ValueError, match="images: benchmark needs a non-empty list of images"):
            detector.benchmark([])
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        with pytest.raises(DataError, match=r"^images\[1\]: cannot decode image"):
            detector.benchmark([images[0], tmp_path / "broken.jpg"])


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_gpu_predictions_match_the_cpu_and_half_stays_close(checkpoint, mixed_images, half):
    cpu = Detector.from_checkpoint(checkpoint, device="cpu", overrides=EVERYTHING, workers=0)
    want = cpu.predict(mixed_images, score_threshold=0.0, batch_size=4)
    with Detector.from_checkpoint(checkpoint, device="cuda", overrides=EVERYTHING, half=half) as gpu:
        got = gpu.predict(mixed_images, score_threshold=0.0, batch_size=4)
        figures = gpu.benchmark(mixed_images, batch_size=4, warmup=1, runs=2)
    assert figures["device"].startswith("cuda") and figures["half"] is half
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p95"]
    for a, b in zip(got, want):
        assert a["boxes"].dtype == torch.float32 and a["boxes"].device.type == "cpu"
        # the best detection of each image: the same box and score within fp16's (or TF32's) precision
        torch.testing.assert_close(a["scores"][:1], b["scores"][:1], atol=2e-2 if half else 2e-3, rtol=0)
        torch.testing.assert_close(a["boxes"][:1], b["boxes"][:1], atol=2.0 if half else 0.5, rtol=0)
