"""Triton without a GPU: a stand-in driver that lets `kernel.warmup(...)` and `kernel[grid](...)` compile
for the H100 (sm_90a) on any machine. Call `use_compile_only_driver()` before `kernels` is imported.

With `stub_launches()` too, launches compile and then record what they would hand Triton's launcher
(tools/fast_launch_check.py); nothing runs.
"""
import os

from triton.backends.compiler import GPUTarget
from triton.runtime import driver


class CompileOnlyDriver:
    """What JITFunction asks of the driver before it compiles or launches; nothing touches a device."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def use_compile_only_driver():
    os.environ.pop("TRITON_INTERPRET", None)
    driver.set_active(CompileOnlyDriver())


def stub_launches(record):
    """Every compiled kernel's launcher becomes `record(binary hash, launcher arguments)`."""
    from triton.compiler.compiler import CompiledKernel

    def init_handles(self):
        if getattr(self, "_stubbed", False):
            return
        self._stubbed = True
        self.function = id(self)
        self._run = lambda *args, _hash=self.hash: record(_hash, args)
    CompiledKernel._init_handles = init_handles
    CompiledKernel.launch_metadata = lambda self, *args: None
