"""The `tl` GEMM kernels with the FFN's bias and activation fused into the epilogue (kernels/matmul.py launches
them, autotuned or with a fixed config, and says when the persistent and Gluon kernels run instead).

  _linear_act_fwd_kernel   pre = x @ w.T + b, out = act(pre) (gated: f(gate) * up from two accumulators over
                           the same x tile); pre written only with STORE_PRE
  _act_bwd_kernel          d_pre = (dy @ w_out, or a given d_act) * act'(pre) in the GEMM's epilogue; optionally
                           act(pre) re-formed (STORE_ACT) and d_pre's column sums added into an fp32 bias
                           gradient with atomics (HAS_DBIAS)

Rounding: in 16-bit dtypes the epilogues round where eager PyTorch's chain of ops stores a tensor:
  forward   pre (then act(pre) in fp32; gated: f(gate) rounded before the product with up);
  backward  d_act = dy @ w_out (PyTorch's mm output), gated also f(gate) and d_f = d_act * up (the
            products' outputs), then d_pre once; the bias sums add the rounded d_pre values.
So results equal eager PyTorch's up to the GEMMs' fp32 summation order. Without this, the backward
kept d_act in fp32 (fewer roundings, not less error at the max): at M=1 the max error of d_pre and
dW_in = d_pre^T x is the last rounding of a handful of the largest |d_pre| (half an ulp), and
PyTorch's extra rounding of d_act moved those products to the other side often enough to fail the
2x rule by chance (fp16 relu2 dW_in, seen on an H200 on 2026-11-27).
fp32 operands: tl.dot with input_precision="ieee" (no TF32, as PyTorch's fp32 matmul by default).
Two load paths for the main loop, chosen per launch (USE_TMA, from the config's TMA and the operands):
- TMA tensor descriptors (tl.make_tensor_descriptor; 16-bit operands with 16-byte-aligned base and
  leading stride and a unit last stride): edges and the K tail are zero-filled by the hardware;
- plain pointers (any strides, fp32 too): tile rows and columns past the edge read wrapped-around
  indices and are masked on store; K is masked only when it is not a multiple of BLOCK_K.
The epilogue stores through masked pointers either way. Tiles are visited in grouped (swizzled) order, 8 row-tiles
per group, so consecutive programs share B columns in L2.
"""
import triton
import triton.language as tl

from ._activations import activation, activation_and_grad
from .matmul_persistent import grouped_tile


@triton.jit
def _mainloop(A, B, M, N, K, offs_m, offs_n, up_offset, stride_am, stride_ak, stride_bk, stride_bn,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GATED: tl.constexpr,
              EVEN_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc[m, n] = sum_k A[m, k] B[k, n] (and acc_up with B's columns shifted by up_offset), fp32."""
    # Wrap edge rows/columns around instead of masking every load; the store masks them out.
    rm = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    rn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = A + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = B + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if GATED:
            if EVEN_K:
                b_up = tl.load(b_ptrs + up_offset)
            else:
                b_up = tl.load(b_ptrs + up_offset, mask=rk[:, None] < k_left, other=0.0)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc, acc_up


@triton.jit
def _mainloop_tma(A, B, M, N, K, b_rows, start_m, start_n, up_rows, stride_am, stride_bk, stride_bn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GATED: tl.constexpr,
                  B_ROWS_N: tl.constexpr, PRECISION: tl.constexpr):
    """_mainloop through TMA tensor descriptors: edges and the K tail read as zeros, no masks.

    B_ROWS_N: B[k, n] is a weight W[n, k] (b_rows rows of K contiguous values, gated: gate rows then
    up rows starting at up_rows); else B is a (K, N) row-major matrix.
    """
    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
    if B_ROWS_N:
        b_desc = tl.make_tensor_descriptor(B, shape=[b_rows, K], strides=[stride_bn, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[stride_bk, 1], block_shape=[BLOCK_K, BLOCK_N])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([start_m, k * BLOCK_K])
        if B_ROWS_N:
            b = b_desc.load([start_n, k * BLOCK_K]).T
        else:
            b = b_desc.load([k * BLOCK_K, start_n])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if GATED:
            b_up = b_desc.load([up_rows + start_n, k * BLOCK_K]).T
            acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
    return acc, acc_up


def _tma_ok(*pairs):
    """TMA needs 16-bit data here, 16-byte aligned bases and leading strides, a contiguous last dim."""
    for t, (lead, last) in pairs:
        size = t.element_size()
        if size != 2 or t.data_ptr() % 16 or last != 1 or (lead * size) % 16:
            return False
    return True


# The heuristics' flags for the autotuned launches; _launch computes the same for the direct ones.
def _fwd_tma(args):
    return args["TMA"] and _tma_ok((args["X"], (args["stride_xm"], args["stride_xk"])),
                                   (args["W"], (args["stride_wn"], args["stride_wk"])))


def _bwd_tma(args):
    return args["TMA"] and args["FROM_GEMM"] and _tma_ok((args["G"], (args["stride_gm"], args["stride_gk"])),
                                                         (args["W"], (args["stride_wk"], args["stride_wn"])))


@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0, "USE_TMA": _fwd_tma})
@triton.jit(do_not_specialize=["M", "M_BUCKET"])  # one binary for every row count
def _linear_act_fwd_kernel(X, W, Bias, Pre, Out, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                           stride_pm, stride_om, M_BUCKET,
                           ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                           STORE_PRE: tl.constexpr, PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           TMA: tl.constexpr, EVEN_K: tl.constexpr, USE_TMA: tl.constexpr):
    # N is the output width (H when gated; W then has 2N rows, the up rows starting at row N).
    start_m, start_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, 8)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    w_rows = N
    if GATED:
        w_rows = 2 * N
    if USE_TMA:
        acc, acc_up = _mainloop_tma(X, W, M, N, K, w_rows, start_m, start_n, N, stride_xm,
                                    stride_wk, stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, GATED, True, PRECISION)
    else:
        acc, acc_up = _mainloop(X, W, M, N, K, offs_m, offs_n, N * stride_wn, stride_xm, stride_xk,
                                stride_wk, stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, GATED, EVEN_K, PRECISION)
    mask_n = offs_n < N
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(Bias + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & mask_n[None, :]
    # Rounded where PyTorch's chain stores a tensor in the input dtype (pre, and act(gate) when gated),
    # so the output is eager PyTorch's up to the GEMM's summation order (a no-op in fp32).
    pre = acc.to(Out.dtype.element_ty)
    if STORE_PRE:
        pre_ptrs = Pre + offs_m[:, None] * stride_pm + offs_n[None, :]
        tl.store(pre_ptrs, pre, mask=mask)
        if GATED:
            tl.store(pre_ptrs + N, acc_up.to(Pre.dtype.element_ty), mask=mask)
    out = activation(pre.to(tl.float32), ACT)
    if GATED:
        out = out.to(Out.dtype.element_ty).to(tl.float32) * acc_up.to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + offs_m[:, None] * stride_om + offs_n[None, :], out.to(Out.dtype.element_ty), mask=mask)


@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0, "USE_TMA": _bwd_tma})
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _act_bwd_kernel(G, W, Pre, DPre, Act, DBias, M, N, K, stride_gm, stride_gk, stride_wk, stride_wn,
                    stride_pm, stride_dm, stride_am, M_BUCKET,
                    ACT: tl.constexpr, GATED: tl.constexpr, FROM_GEMM: tl.constexpr,
                    STORE_ACT: tl.constexpr, HAS_DBIAS: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    TMA: tl.constexpr, EVEN_K: tl.constexpr, USE_TMA: tl.constexpr, EPI_FIRST: tl.constexpr):
    # N is the hidden width H; Pre and DPre are (M, 2N) when gated (gate columns, then up columns).
    start_m, start_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, 8)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask = (offs_m[:, None] < M) & mask_n[None, :]
    pre_ptrs = Pre + offs_m[:, None] * stride_pm + offs_n[None, :]
    if EPI_FIRST:
        # The epilogue's pre-activation tiles requested before the main loop: their latency hides
        # behind the GEMM instead of following it (costs their registers through the loop).
        h_early = tl.load(pre_ptrs, mask=mask, other=0.0)
        if GATED:
            up_early = tl.load(pre_ptrs + N, mask=mask, other=0.0)
    if USE_TMA:
        # d_act = dy @ w_out: G is dy (M, K), W[k, n] is w_out (K, N).
        d_act, _unused = _mainloop_tma(G, W, M, N, K, K, start_m, start_n, 0, stride_gm, stride_wk, stride_wn,
                                       BLOCK_M, BLOCK_N, BLOCK_K, False, False, PRECISION)
    elif FROM_GEMM:
        d_act, _unused = _mainloop(G, W, M, N, K, offs_m, offs_n, 0, stride_gm, stride_gk, stride_wk,
                                   stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, False, EVEN_K, PRECISION)
    else:
        # d_act given: G is (M, N) with column stride stride_gk.
        d_act = tl.load(G + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gk, mask=mask,
                        other=0.0).to(tl.float32)
    d_ptrs = DPre + offs_m[:, None] * stride_dm + offs_n[None, :]
    if EPI_FIRST:
        h = h_early.to(tl.float32)
    else:
        h = tl.load(pre_ptrs, mask=mask, other=0.0).to(tl.float32)
    f, df = activation_and_grad(h, ACT)
    # PyTorch's rounding points (no-ops in fp32): its hidden gradient dy @ w_out is stored in the input
    # dtype, then each elementwise backward op rounds its result (see the module docstring).
    d_act = d_act.to(DPre.dtype.element_ty).to(tl.float32)
    if GATED:
        if EPI_FIRST:
            up = up_early.to(tl.float32)
        else:
            up = tl.load(pre_ptrs + N, mask=mask, other=0.0).to(tl.float32)
        f = f.to(DPre.dtype.element_ty).to(tl.float32)
        d_f = (d_act * up).to(DPre.dtype.element_ty).to(tl.float32)
        d_h = (d_f * df).to(DPre.dtype.element_ty)
        d_up = (d_act * f).to(DPre.dtype.element_ty)
        tl.store(d_ptrs, d_h, mask=mask)
        tl.store(d_ptrs + N, d_up, mask=mask)
        if STORE_ACT:
            tl.store(Act + offs_m[:, None] * stride_am + offs_n[None, :], (f * up).to(Act.dtype.element_ty),
                     mask=mask)
        if HAS_DBIAS:
            # Sums of the stored (rounded) d_pre, as PyTorch's d_pre.sum(0). Relaxed: nothing here reads them
            # back, and the default acq_rel puts a GPU-wide memory barrier and an L1 invalidation before each
            # atomic (MEMBAR.ALL.GPU, CCTL.IVALL in the SASS) where relaxed is a fire-and-forget REDG.
            tl.atomic_add(DBias + offs_n, tl.sum(tl.where(mask, d_h.to(tl.float32), 0.0), axis=0), mask=mask_n,
                          sem="relaxed")
            tl.atomic_add(DBias + N + offs_n, tl.sum(tl.where(mask, d_up.to(tl.float32), 0.0), axis=0),
                          mask=mask_n, sem="relaxed")
    else:
        d_h = (d_act * df).to(DPre.dtype.element_ty)
        tl.store(d_ptrs, d_h, mask=mask)
        if STORE_ACT:
            tl.store(Act + offs_m[:, None] * stride_am + offs_n[None, :], f.to(Act.dtype.element_ty), mask=mask)
        if HAS_DBIAS:
            tl.atomic_add(DBias + offs_n, tl.sum(tl.where(mask, d_h.to(tl.float32), 0.0), axis=0), mask=mask_n,
                          sem="relaxed")
