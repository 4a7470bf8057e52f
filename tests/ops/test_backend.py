"""Backend selection, the build's error messages, and the ops' integration with torch
(schemas, fake kernels for torch.compile, autograd registration)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

from detlab import ops
from detlab.ops import _build


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_backend_reports_the_compiled_library():
    active = ops.backend()
    assert active.name == "native" and active.cpu_kernels
    assert active.library and os.path.exists(active.library)
    assert active.cuda_kernels == _build.build_config().with_cuda
    text = str(active)
    assert "detlab native: CPU kernels" in text and "CUDA kernels:" in text


def test_info_command_prints_the_backend():
    result = run_python("import runpy, sys; sys.argv = ['detlab.ops', '--info']; runpy.run_module('detlab.ops', run_name='__main__')")
    assert result.returncode == 0, result.stderr
    assert "backend:      detlab native" in result.stdout


def test_torchvision_fallback_only_on_request_and_announced_once():
    result = run_python("""
        import torch
        from detlab import ops
        boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10]])
        print(ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist())
        print(ops.nms(boxes, torch.tensor([0.8, 0.9]), 0.5).tolist())
        print(ops.backend().name)
    """, DETLAB_OPS="torchvision")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[0]", "[1]", "torchvision"]
    assert result.stderr.count("DETLAB_OPS=torchvision") == 1


def test_unknown_backend_choice_is_rejected():
    result = run_python("import torch; from detlab import ops; ops.backend()", DETLAB_OPS="fast")
    assert result.returncode != 0
    assert "DETLAB_OPS must be one of ('native', 'torchvision'), got 'fast'" in result.stderr


def test_missing_compiler_says_what_is_missing_and_how_to_fall_back(tmp_path):
    result = run_python("import torch; from detlab import ops; ops.backend()",
                        DETLAB_CACHE_DIR=str(tmp_path), CXX="/nonexistent/g++", DETLAB_BUILD_CUDA="0")
    assert result.returncode != 0
    assert "no C++ compiler found (looked for '/nonexistent/g++'" in result.stderr
    assert "set DETLAB_OPS=torchvision" in result.stderr
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith(
        "detlab.ops._build.NativeOpsBuildError")


def test_compile_error_shows_the_log_tail(tmp_path, monkeypatch):
    broken = tmp_path / "csrc"
    broken.mkdir()
    (broken / "nms_cpu.cpp").write_text("#error deliberately broken\n")
    monkeypatch.setattr(_build, "SOURCE_DIR", broken)
    monkeypatch.setattr(_build, "CPU_SOURCES", ("nms_cpu.cpp",))
    monkeypatch.setenv("DETLAB_CACHE_DIR", str(tmp_path / "cache"))
    config = _build.BuildConfig(with_cuda=False, cuda_note="off", cuda_arch_list="")
    with pytest.raises(_build.NativeOpsBuildError, match="deliberately broken") as error:
        _build.build(config)
    assert "DETLAB_OPS=torchvision" in str(error.value)


def test_build_key_changes_with_sources_and_torch(tmp_path, monkeypatch):
    config = _build.BuildConfig(with_cuda=False, cuda_note="off", cuda_arch_list="")
    key = _build.build_key(config)
    assert key == _build.build_key(config)
    sources = tmp_path / "csrc"
    sources.mkdir()
    for source in _build.SOURCE_DIR.iterdir():
        (sources / source.name).write_text(source.read_text())
    monkeypatch.setattr(_build, "SOURCE_DIR", sources)
    assert _build.build_key(config) == key
    (sources / "nms_cpu.cpp").write_text((sources / "nms_cpu.cpp").read_text() + "\n// edited\n")
    assert _build.build_key(config) != key
    monkeypatch.setattr(_build, "SOURCE_DIR", _build.SOURCE_DIR)
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert _build.build_key(config) != key
    assert _build.build_key(_build.BuildConfig(True, "on", "9.0")) != key


def test_bad_build_cuda_value(monkeypatch):
    monkeypatch.setenv("DETLAB_BUILD_CUDA", "yes")
    with pytest.raises(ValueError, match="DETLAB_BUILD_CUDA must be 0, 1 or unset, got 'yes'"):
        _build.build_config()


def sample_args():
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(30, 4, generator=generator) * 50
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.rand(30, generator=generator)
    idxs = torch.randint(0, 3, (30,), generator=generator)
    features = [torch.randn(2, 3, 16, 16, generator=generator, requires_grad=True),
                torch.randn(2, 3, 8, 8, generator=generator, requires_grad=True)]
    rois = torch.cat([torch.randint(0, 2, (5, 1), generator=generator).float(), boxes[:5]], dim=1)
    levels = torch.tensor([0, 1, 1, 0, 1])
    return boxes, scores, idxs, features, rois, levels


def test_opcheck_schemas_fake_kernels_and_autograd():
    boxes, scores, idxs, features, rois, levels = sample_args()
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.detlab.roi_align.default, (features[0], rois, 0.5, 3, 2, 2, True),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.detlab.multiscale_roi_align.default,
                          (features, rois, levels, [0.5, 0.25], 3, 2, 2, False), test_utils=checks)
    torch.library.opcheck(torch.ops.detlab.nms.default, (boxes, scores, 0.5), test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.detlab.batched_nms.default, (boxes, scores, idxs, 0.5),
                          test_utils=("test_schema",))


def test_torch_compile_traces_through_the_ops():
    boxes, scores, idxs, features, rois, _ = sample_args()

    def detect(feature, rois, boxes, scores, idxs):
        pooled = ops.roi_align(feature, rois, 3, 0.5, 2, True)
        return pooled.mean(dim=(2, 3)), ops.batched_nms(boxes, scores, idxs, 0.5)

    compiled = torch.compile(detect, backend="aot_eager", fullgraph=False)
    pooled, kept = compiled(features[0], rois, boxes, scores, idxs)
    expected_pooled, expected_kept = detect(features[0], rois, boxes, scores, idxs)
    torch.testing.assert_close(pooled, expected_pooled)
    assert torch.equal(kept, expected_kept)
    pooled.sum().backward()
    assert features[0].grad is not None and features[0].grad.abs().sum() > 0


def test_other_devices_get_a_clear_error():
    boxes = torch.zeros(3, 4, device="meta")
    with pytest.raises(RuntimeError, match="run on CPU and CUDA tensors, got a meta tensor.*DETLAB_OPS=torchvision"):
        ops.nms(boxes, torch.zeros(3, device="meta"), 0.5)
