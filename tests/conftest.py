"""Run the Triton kernels in Triton's CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton compiles anything, so it is set here, before any test
module imports `kernels`.
"""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh random inputs per case, reproducible per test id (crc32: hash() is salted per process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test shapes are tiny: intra-op threads only spin on a shared 2-core CI machine (the model
    # tests ran up to 100x slower under load with the default thread count).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
