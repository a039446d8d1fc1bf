"""The FFN backward's db_out = dy.sum(0) (sixteenth session's profile: 33 us for a 16384 x 768 bf16 dy, 25 MB read at
0.76 TB/s, 4% of the gelu 768 fwd+bwd step) against other ways to the same column sums, on a CUDA GPU:

    PYTHONPATH=. python tools/gpu_column_sum.py      # log also in $OUT/column_sum.log when OUT is set

Per shape (16384 rows x 768 / 2048 / 3072 columns, bf16 and fp16) one line per way: us (triton.testing.do_bench
median, L2 flushed), GB/s of dy read against the 3.0 TB/s copy ceiling, launches on the host, and the error against
float64 relative to the largest sum, beside torch's own:
  sum(0)     dy.sum(0), what kernels/ffn.py ran until the seventeenth session (one reduction kernel)
  mv         torch.mv(dy.t(), ones): cuBLAS's matrix-vector product, fp32 accumulation (ones cached: one launch);
             the fastest here on the H100 (19.7 against 36.4 us at 768 wide), so kernels/ffn.py's _column_sums
  mm         torch.mm(ones_row, dy): the same as a (1, M) x (M, D) GEMM
  fold       dy.view(M / F, F * D).sum(0, fp32) then the F partial rows summed: wide rows for torch's reduction
             (three launches with the cast)
  atomics    a Triton kernel summing a block of rows per program into fp32 atomics (a memset and one launch; the
             result in fp32, which the autograd engine casts to the bias's dtype, as it does for db_in)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from tools.tool_log import ToolLog  # noqa: E402

log = ToolLog("column_sum.log")
M = 16384
WIDTHS = (768, 2048, 3072)


@triton.jit
def _column_sum_atomic_kernel(X, Out, n_rows, n_cols, stride, ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    first = tl.program_id(1) * ROWS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(first, first + ROWS, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        acc += tl.load(X + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(Out + cols, tl.sum(acc, axis=0), mask=cols < n_cols, sem="relaxed")


def atomics(dy, rows=256, block_m=32, block_n=128):
    out = torch.zeros(dy.shape[1], device=dy.device, dtype=torch.float32)
    grid = (triton.cdiv(dy.shape[1], block_n), triton.cdiv(dy.shape[0], rows))
    _column_sum_atomic_kernel[grid](dy, out, dy.shape[0], dy.shape[1], dy.stride(0), rows, block_m, block_n,
                                    num_warps=4)
    return out


def ways(dy):
    ones = torch.ones(dy.shape[0], device=dy.device, dtype=dy.dtype)
    ones_row = ones.view(1, -1)
    fold = 8
    return {
        "sum(0)": (lambda: dy.sum(0), 1),
        "mv": (lambda: torch.mv(dy.t(), ones), 1),
        "mm": (lambda: torch.mm(ones_row, dy).view(-1), 1),
        "fold": (lambda: dy.view(-1, fold * dy.shape[1]).sum(0, dtype=torch.float32)
                 .view(fold, -1).sum(0).to(dy.dtype), 3),
        "atomics": (lambda: atomics(dy), 2),
    }


def main():
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, M = {M}")
    for dtype in (torch.bfloat16, torch.float16):
        for D in WIDTHS:
            dy = torch.randn(M, D, device="cuda", dtype=dtype)
            truth = dy.double().sum(0)
            scale = truth.abs().max().item()
            for name, (fn, launches) in ways(dy).items():
                try:
                    err = (fn().double() - truth).abs().max().item() / scale
                    us = do_bench(fn, warmup=25, rep=200) * 1e3
                except Exception as e:  # noqa: BLE001 (one way's failure must not end the run)
                    log(f"{str(dtype)[6:]} {M} x {D} {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
                    continue
                gbs = M * D * dy.element_size() / us / 1e3
                log(f"{str(dtype)[6:]:8s} {M} x {D:5d} {name:8s} {us:7.1f} us {gbs:6.0f} GB/s ({gbs / 30:3.0f}%) "
                    f"{launches} launch{'es' if launches > 1 else ''}, max error / max |sum| {err:.1e}")


if __name__ == "__main__":
    log.run(main)
