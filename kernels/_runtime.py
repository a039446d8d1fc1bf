"""Where the Triton kernels can run: on CUDA, or on the CPU through TRITON_INTERPRET=1 (tests)."""
import os

import torch

try:
    import triton  # noqa: F401
    TRITON_IMPORT_ERROR = None
except ImportError as e:  # e.g. macOS, where no triton wheel exists
    TRITON_IMPORT_ERROR = e


def interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_status():
    """(usable, reason): whether the Triton kernels can run on this machine, and why not."""
    if TRITON_IMPORT_ERROR is not None:
        return False, f"triton is not importable ({TRITON_IMPORT_ERROR})"
    if torch.cuda.is_available():
        return True, "CUDA device and triton available"
    if interpreting():
        return True, "TRITON_INTERPRET=1: kernels run in Triton's CPU interpreter"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"


# Where the kernels run, decided once (triton.jit reads TRITON_INTERPRET when a kernel is defined): the hot
# paths compare a tensor's device type with this instead of reading the environment per call.
KERNEL_DEVICE = "cpu" if interpreting() else "cuda"


def check_device(**tensors):
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter."""
    expected = "cpu" if interpreting() else "cuda"  # (the environment read once: about 1 us each)
    for name, t in tensors.items():
        if t is not None and t.device.type != expected:
            where = "CPU tensors under TRITON_INTERPRET=1" if expected == "cpu" else "CUDA tensors"
            raise ValueError(f"{name} is on {t.device}, but the Triton kernels here take {where}")


# triton.cdiv and triton.next_power_of_2 are constexpr functions: called from host code each costs about 2 us of
# CPU here (argument unwrapping in Triton's ConstexprFunction.__call__), 4-5x that on the GPU hosts. The host
# paths use these instead (the same values for the ints they pass).

def cdiv(a, b):
    return -(-a // b)


def next_power_of_2(n):
    return 1 << (n - 1).bit_length() if n > 0 else 0


def tma_scratch(size, alignment, stream):
    """Triton's allocator for the global scratch that in-kernel TMA descriptors need (one per launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")
