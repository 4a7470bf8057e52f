"""Compile detlab's C++/CUDA ops on first use and cache the library.

The library is built with ``torch.utils.cpp_extension.load`` (ninja) into
``$DETLAB_CACHE_DIR/ops/<key>/`` (default ``~/.cache/detlab``). ``<key>`` hashes the sources,
the torch version and the build options, so changing any of them builds a new library instead
of loading a stale one. Ahead of time: ``python -m detlab.ops --build``.

Environment:
    DETLAB_BUILD_CUDA      "1": compile the CUDA kernels even without a visible GPU (CI uses
                           this to check that they compile); "0": never; unset: when a GPU is
                           visible and a CUDA toolkit is found.
    TORCH_CUDA_ARCH_LIST   GPU architectures to compile for (torch's variable, e.g. "9.0").
    CUDA_HOME              CUDA toolkit; /usr/local/cuda when unset and that folder exists.
    CXX                    C++ compiler (default: c++).
    DETLAB_CACHE_DIR       where builds are cached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

LIBRARY_NAME = "detlab_ops"
SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("ops.cpp", "nms_cpu.cpp", "roi_align_cpu.cpp", "coco_json.cpp")
CUDA_SOURCES = ("nms_cuda.cu", "roi_align_cuda.cu")
CXX_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")  # contract off: same rounding as torchvision
LD_FLAGS = ("-fopenmp",)  # at::parallel_for runs serially unless the extension itself is built with OpenMP
CUDA_FLAGS = ("-O3", "-lineinfo")
FALLBACK_HINT = "To use torchvision's ops instead, set DETLAB_OPS=torchvision."


class NativeOpsBuildError(RuntimeError):
    """The native ops could not be compiled; the message says what is missing."""


@dataclass(frozen=True)
class BuildConfig:
    with_cuda: bool
    cuda_note: str  # why the CUDA kernels are, or are not, compiled
    cuda_arch_list: str  # TORCH_CUDA_ARCH_LIST, "" when unset


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "detlab"
    return Path(os.environ.get("DETLAB_CACHE_DIR", default)) / "ops"


def _default_cuda_home() -> None:
    # torch guesses CUDA_HOME from the location of nvcc; with nvcc in /usr/local/bin that guess
    # is /usr/local, where cudart is not, and linking fails.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and Path("/usr/local/cuda").is_dir():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _cpp_extension():
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" warning: a
    CUDA toolkit without a GPU is the normal case for a CPU build or for CI's CUDA compile check."""
    import logging

    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_logger.setLevel(level)
    return cpp_extension


def _cuda_home() -> Path | None:
    _default_cuda_home()
    cpp_extension = _cpp_extension()

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = home  # the module read the environment when it was imported
    return Path(home) if home else None


def build_config() -> BuildConfig:
    _default_cuda_home()  # before anything imports torch.utils.cpp_extension, which reads it once
    requested = os.environ.get("DETLAB_BUILD_CUDA", "").strip()
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if requested not in ("", "0", "1"):
        raise ValueError(f"DETLAB_BUILD_CUDA must be 0, 1 or unset, got {requested!r}")
    if requested == "0":
        return BuildConfig(False, "not compiled: DETLAB_BUILD_CUDA=0", arch)
    if torch.version.cuda is None:
        note = "not compiled: this torch build has no CUDA support"
        if requested == "1":
            raise NativeOpsBuildError(f"DETLAB_BUILD_CUDA=1 but {note} (torch {torch.__version__}).")
        return BuildConfig(False, note, arch)
    home = _cuda_home()
    has_nvcc = home is not None and (home / "bin" / "nvcc").exists()
    if requested == "1":
        if not has_nvcc:
            raise NativeOpsBuildError(
                f"DETLAB_BUILD_CUDA=1 but no CUDA toolkit was found (CUDA_HOME={home}; nvcc not in "
                f"$CUDA_HOME/bin). Install the CUDA toolkit matching torch's CUDA {torch.version.cuda} "
                f"and set CUDA_HOME. {FALLBACK_HINT}"
            )
        return BuildConfig(True, "compiled (DETLAB_BUILD_CUDA=1)", arch)
    if not torch.cuda.is_available():
        return BuildConfig(False, "not compiled: no CUDA GPU visible (DETLAB_BUILD_CUDA=1 forces it)", arch)
    if not has_nvcc:
        return BuildConfig(
            False,
            f"not compiled: a GPU is visible but no CUDA toolkit was found (CUDA_HOME={home}); "
            f"install one and set CUDA_HOME, then rebuild",
            arch,
        )
    return BuildConfig(True, "compiled", arch)


def source_files(config: BuildConfig) -> list[Path]:
    names = CPU_SOURCES + (CUDA_SOURCES if config.with_cuda else ())
    return [SOURCE_DIR / name for name in names]


def build_key(config: BuildConfig) -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (torch.__version__, str(torch.version.cuda), str(config.with_cuda), config.cuda_arch_list,
                 " ".join(CXX_FLAGS), " ".join(CUDA_FLAGS), " ".join(LD_FLAGS), os.environ.get("CXX", "")):
        digest.update(part.encode() + b"\0")
    variant = "cuda" if config.with_cuda else "cpu"
    return f"torch{torch.__version__.split('+')[0]}-{variant}-{digest.hexdigest()[:16]}"


def library_path(config: BuildConfig) -> Path:
    return cache_dir() / build_key(config) / f"{LIBRARY_NAME}.so"


def _check_toolchain(config: BuildConfig) -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise NativeOpsBuildError(
            f"Cannot compile detlab's native ops: no C++ compiler found (looked for {compiler!r}; "
            f"install g++ or set CXX). {FALLBACK_HINT}"
        )
    try:  # the ninja wheel's binary is not on PATH unless its virtualenv is activated
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    cpp_extension = _cpp_extension()
    if not cpp_extension.is_ninja_available():
        raise NativeOpsBuildError(f"Cannot compile detlab's native ops: ninja not found (pip install ninja). {FALLBACK_HINT}")
    headers = [Path(p) / "torch" / "library.h" for p in cpp_extension.include_paths()]
    if not any(h.exists() for h in headers):
        raise NativeOpsBuildError(
            f"Cannot compile detlab's native ops: torch's C++ headers are missing (looked for torch/library.h "
            f"under {cpp_extension.include_paths()}). Reinstall torch from a wheel. {FALLBACK_HINT}"
        )


def build(config: BuildConfig) -> Path:
    """Return the path of the compiled library, compiling it if it is not cached."""
    path = library_path(config)
    if path.exists():
        return path
    _check_toolchain(config)
    cpp_extension = _cpp_extension()

    path.parent.mkdir(parents=True, exist_ok=True)
    what = "CPU + CUDA" + (f" (arch {config.cuda_arch_list})" if config.cuda_arch_list else "") if config.with_cuda else "CPU"
    print(f"detlab: compiling native ops ({what}) for torch {torch.__version__} into {path.parent} "
          f"- first use only, takes a few minutes", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(p) for p in source_files(config)],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=list(CUDA_FLAGS),
            extra_ldflags=list(LD_FLAGS),
            build_directory=str(path.parent),
            with_cuda=config.with_cuda,
            is_python_module=False,
            is_standalone=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ValueError) as error:
        log = str(error).strip().splitlines()
        raise NativeOpsBuildError(
            "Compiling detlab's native ops failed (build folder: {}). Last lines of the build log:\n{}\n{}".format(
                path.parent, "\n".join(log[-40:]), FALLBACK_HINT
            )
        ) from error
    print(f"detlab: native ops compiled in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return path
