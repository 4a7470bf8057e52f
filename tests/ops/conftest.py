"""The native-ops tests take a ``device`` argument: they run on the CPU, and on CUDA when a GPU
is present (CI compiles the CUDA kernels but has no GPU, so those cases skip there)."""

import pytest
import torch

NO_GPU = "no CUDA GPU: the CUDA kernels are compiled in CI but cannot run here"


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        cuda = pytest.param("cuda", marks=[pytest.mark.cuda,
                                           pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)])
        metafunc.parametrize("device", ["cpu", cuda])
