"""Registers, spills and shared memory of the Triton kernels compiled for the H100 (sm_90a), on a machine
without a GPU: a register-pressure check that costs no device time.

    python tools/sm90_registers.py attention_bwd [D]      # dK/dV and dQ kernels, head dim D (default 128)
    python tools/sm90_registers.py attention_fwd [D]
    python tools/sm90_registers.py attention_bwd_gluon [D,...]  # kernels/attention_bwd_gluon.py, every config
    python tools/sm90_registers.py attention_fwd_gluon [D,...]  # the Gluon forwards, every CONFIGS entry (+ more)
    python tools/sm90_registers.py ffn [ACT,...]          # the fused `tl` GEMMs of kernels/matmul_tl.py
    python tools/sm90_registers.py ffn_gated_gluon        # kernels/matmul_gated_gluon.py, every config
    python tools/sm90_registers.py ffn_bwd_gluon          # kernels/matmul_bwd_gluon_ws.py, every config
    python tools/sm90_registers.py ffn_plain_gluon        # the non-gated forward of matmul_gated_gluon_ws.py

Triton compiles for an explicit target without a driver (a stub takes the driver's place), then the
ptxas bundled with Triton reports the registers and spill bytes of each config in the kernels' tables.
Use the Triton version of the GPU machine (3.6 there): codegen, and so the counts, change between
versions (e.g. `python -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0 torch`). The
counts say where a config spills, not how fast it runs: time the survivors on the GPU.
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

from tools.compile_only import stub_launches, use_compile_only_driver  # noqa: E402

use_compile_only_driver()

import kernels  # noqa: E402,F401
from kernels import attention_bwd, matmul, matmul_gated_gluon as mgg, matmul_persistent as mp  # noqa: E402

attention = sys.modules["kernels.attention"]  # (the package exports a function of the same name)

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def resources(compiled):
    """(registers, spill-store bytes, shared-memory bytes, wgmma serialized, waits injected) of a compiled kernel,
    from ptxas -v.

    ptxas serializes every wgmma of a kernel (info C7514) when it cannot prove that no other instruction
    touches an in-flight wgmma's accumulator: the asynchronous tensor-core work then overlaps nothing. Info
    C7517: it inserted a wgmma wait of its own before an instruction that reads registers it believes a wgmma in
    flight may still write (the overlap written in the kernel is lost there)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        report = subprocess.run([PTXAS, "-arch=sm_90a", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")],
                                capture_output=True, text=True).stderr
    regs = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return regs, spills, compiled.metadata.shared, "C7514" in report, report.count("C7517")


def show(name, config, compiled):
    regs, spills, smem, serialized, injected = resources(compiled)
    flag = ("  <- spills" if spills else "") + ("  <- wgmma serialized" if serialized else "") + \
        (f"  <- {injected} wgmma waits injected" if injected else "")
    print(f"{name:34s} {str(config):22s} regs {regs:3d}  spill bytes {spills:4d}  smem {smem // 1024:3d} KB{flag}",
          flush=True)


def attention_kernels(which, D):
    B, H, T = 2, 16, 1024
    q = torch.empty(B, H, T, D, dtype=torch.bfloat16)
    rows = torch.empty(B, H, T)
    st = q.stride()[:3]
    block_d = triton.next_power_of_2(D)
    meta = dict(HEAD_DIM=D, BLOCK_D=block_d, CAUSAL=True, DOT_PRECISION="tf32")
    key = attention_bwd._head_dim_key(block_d)
    buckets = (T, T, B * H, B * H)
    if which == "attention_fwd":
        for bm, bn, w, s in attention_bwd.FWD_TABLE[key]:
            compiled = attention._attn_fwd_kernel.warmup(
                q, q, q, q, rows, *st * 4, H, H, T, T, 0.1, *buckets, grid=(1,), **meta, USE_TMA=False,
                BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
            show("_attn_fwd_kernel", (bm, bn, w, s), compiled)
        return
    for bm, bn, w, s in attention_bwd.DKDV_TABLE[key]:
        compiled = attention_bwd._attn_bwd_dkdv_kernel.warmup(
            q, q, q, q, rows, rows, q, q, *st * 6, H, H, T, T, T, 0.1, 0.1, *buckets, grid=(1,), **meta,
            GQA=False, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
        show("_attn_bwd_dkdv_kernel", (bm, bn, w, s), compiled)
    for bm, bn, w, s in attention_bwd.DQ_TABLE[key]:
        compiled = attention_bwd._attn_bwd_dq_kernel.warmup(
            q, q, q, q, rows, rows, q, *st * 5, H, H, T, T, T, 0.1, 0.1, *buckets, grid=(1,), **meta,
            BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
        show("_attn_bwd_dq_kernel", (bm, bn, w, s), compiled)


def _recording_launches():
    """A list that every kernel compiled (and launched with CPU tensors) from now on is appended to."""
    from triton.compiler.compiler import CompiledKernel
    seen = []
    stub_launches(lambda kernel_id, args: None)
    init = CompiledKernel._init_handles

    def record(self):
        seen.append(self)
        init(self)
    CompiledKernel._init_handles = record
    return seen


def show_launch(seen, name, config, run):
    """run() (one launch with CPU tensors), then show() the binary it compiled; a config that does not build is
    reported and skipped."""
    seen.clear()
    try:
        run()
    except Exception as e:  # noqa: BLE001 (report the config that does not build, go on)
        print(f"{name} {config}: FAILED {type(e).__name__}: {str(e)[-600:]}", flush=True)
        return
    show(name, config, seen[-1])


def gluon_attention_bwd_kernels(dims):
    """The Gluon backward kernels (kernels/attention_bwd_gluon.py), every config, causal or not, bf16 and fp16:
    launched with CPU tensors, each launch compiles and records its binary."""
    from kernels import attention_bwd_gluon as gluon_bwd
    seen = _recording_launches()
    B, H, H_kv, T = 2, 4, 2, 256
    for D in dims:
        for dtype in (torch.bfloat16, torch.float16):
            q, dout = torch.empty(B, H, T, D, dtype=dtype), torch.empty(B, H, T, D, dtype=dtype)
            k, v, dk, dv = (torch.empty(B, H_kv, T, D, dtype=dtype) for _ in range(4))
            lse2, delta, dq = torch.empty(B, H, T), torch.empty(B, H, T), torch.empty(B, H, T, D, dtype=dtype)
            for causal in (True, False):
                runs = [("dkdv", c, lambda c=c: gluon_bwd.dkdv_gluon(q, k, v, dout, lse2, delta, dk, dv, causal, 0.125,
                                                                    T, c)) for c in gluon_bwd.CONFIGS[D]]
                runs += [("dq", c, lambda c=c: gluon_bwd.dq_gluon(q, k, v, dout, lse2, delta, dq, causal, 0.125, T, c))
                         for c in gluon_bwd.DQ_CONFIGS[D]]
                for name, config, run in runs:
                    show_launch(seen, f"{name} D{D} {str(dtype)[6:]} causal={causal!s:5s}", config, run)


def gluon_attention_fwd_kernels(dims):
    """The Gluon forwards (kernels/attention_gluon.py, _ws, _persistent), every config of CONFIGS and the
    persistent one at the pipelined kernel's other block shapes, causal or not, bf16 and fp16."""
    from kernels import attention_gluon
    seen = _recording_launches()
    B, H, H_kv, T = 2, 4, 2, 512
    for D in dims:
        more = (("persistent", 128, 128),) if D == 128 else ()
        for dtype in (torch.bfloat16, torch.float16):
            q = torch.empty(B, H, T, D, dtype=dtype)
            k, v = torch.empty(B, H_kv, T, D, dtype=dtype), torch.empty(B, H_kv, T, D, dtype=dtype)
            for causal in (True, False):
                for config in attention_gluon.CONFIGS[D] + more:
                    show_launch(seen, f"fwd D{D} {str(dtype)[6:]} causal={causal!s:5s}", config,
                                lambda: attention_gluon.run_config(q, k, v, causal, 0.125, config))


def ffn_kernels(activations):
    M, D = 16384, 768
    for act in activations:
        H = 2048 if matmul.ACT_CODES[act][1] else 3072
        code, gated = matmul.ACT_CODES[act]
        width = 2 * H if gated else H
        x, dy = torch.empty(M, D, dtype=torch.bfloat16), torch.empty(M, D, dtype=torch.bfloat16)
        w_in, w_out = torch.empty(width, D, dtype=torch.bfloat16), torch.empty(D, H, dtype=torch.bfloat16)
        pre, out = torch.empty(M, width, dtype=torch.bfloat16), torch.empty(M, H, dtype=torch.bfloat16)
        bias, dbias = torch.empty(width, dtype=torch.bfloat16), torch.empty(width)
        for c in matmul._configs_of(True, gated):
            blocks = {k: v for k, v in c.kwargs.items() if k != "TMA"}
            config = (*blocks.values(), c.num_warps, c.num_stages, "tma" if c.kwargs["TMA"] else "ptr")
            compiled = matmul._linear_act_fwd_kernel.warmup(
                x, w_in, bias, pre, out, M, H, D, D, 1, D, 1, width, H, M, grid=(1,), ACT=code, GATED=gated,
                HAS_BIAS=True, STORE_PRE=True, PRECISION="tf32", TMA=c.kwargs["TMA"], **blocks,
                num_warps=c.num_warps, num_stages=c.num_stages)
            show(f"_linear_act_fwd_kernel {act}", config, compiled)
        for c in matmul._BWD_CONFIGS:
            blocks = {k: v for k, v in c.kwargs.items() if k != "TMA"}
            config = (*blocks.values(), c.num_warps, c.num_stages, "tma" if c.kwargs["TMA"] else "ptr")
            compiled = matmul._act_bwd_kernel.warmup(
                dy, w_out, pre, pre, pre, dbias, M, H, D, D, 1, H, 1, width, width, 0, M, grid=(1,),
                ACT=matmul.BWD_CODES[act], GATED=gated, FROM_GEMM=True, STORE_ACT=False, HAS_DBIAS=True, PRECISION="tf32",
                TMA=c.kwargs["TMA"], **blocks, num_warps=c.num_warps, num_stages=c.num_stages)
            show(f"_act_bwd_kernel {act}", config, compiled)
        # the persistent kernels (kernels/matmul_persistent.py): the forward (the gated one is opt-in) and
        # the backward GEMM, one program per SM of the H100
        for c in mp._configs_of(mp._fwd_fast, gated):
            config = (*c.kwargs.values(), c.num_warps, c.num_stages)
            compiled = mp._linear_act_fwd_persistent_kernel.warmup(
                x, w_in, bias, pre, out, M, H, D, D, D, width, H, M, grid=(1,), ACT=code, GATED=gated, HAS_BIAS=True,
                STORE_PRE=True, NUM_PROGRAMS=132, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            show(f"persistent fwd {act}", config, compiled)
        for c in mp._BWD_CONFIGS:
            config = (*c.kwargs.values(), c.num_warps, c.num_stages)
            compiled = mp._act_bwd_persistent_kernel.warmup(
                dy, w_out, pre, pre, dbias, M, H, D, D, H, width, width, M, grid=(1,), ACT=matmul.BWD_CODES[act], GATED=gated,
                HAS_DBIAS=True, NUM_PROGRAMS=132, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            show(f"persistent bwd {act}", config, compiled)


def ffn_gated_gluon_kernels():
    """The Gluon gated forward at every config of its table, swiglu and geglu, bf16 and fp16, with and
    without storing the pre-activation (the epilogue's staging tiles differ)."""
    M, K, H = 16384, 768, 2048
    configs = list(dict.fromkeys(c for table in mgg.CONFIGS.values() for c in table))
    for dtype in (torch.bfloat16, torch.float16):
        x, w = torch.empty(M, K, dtype=dtype), torch.empty(2 * H, K, dtype=dtype)
        out, pre = torch.empty(M, H, dtype=dtype), torch.empty(M, 2 * H, dtype=dtype)
        bias = torch.empty(2 * H, dtype=dtype)
        for act in ("swiglu", "geglu"):
            for store_pre in (True, False):
                for config in configs:
                    if config[0] == "ws":
                        ws_gated_kernel(config, dtype, act, store_pre, x, w, out, pre, bias, M, K, H)
                        continue
                    bm, bn, bk, stages, warps = config
                    d = mgg._descriptor
                    o = d(out, (M, H), (bm, bn))
                    pg, pu = (d(pre, (M, H), (bm, bn)), d(pre[:, H:], (M, H), (bm, bn))) if store_pre else (o, o)
                    bufs = mgg.epilogue_buffers((bm, bn, bk, stages, warps), 2, store_pre)
                    compiled = mgg._gated_fwd_kernel.warmup(
                        d(x, (M, K), (bm, bk)), d(w, (H, K), (bn, bk)), d(w[H:], (H, K), (bn, bk)), o, pg, pu, bias,
                        M, H, K, grid=(1,), ACT=mgg.ACT_CODES[act], HAS_BIAS=True, STORE_PRE=store_pre,
                        STAGES=stages, EPI_BUFS=bufs, GROUP=mgg.GROUP_M, num_warps=warps)
                    show(f"gated gluon {act} {str(dtype)[6:]} pre={int(store_pre)}",
                         (bm, bn, bk, stages, warps, f"epi{bufs}"), compiled)


def ws_gated_kernel(config, dtype, act, store_pre, x, w, out, pre, bias, M, K, H):
    """One ("ws", ...) config of the gated forward: kernels/matmul_gated_gluon_ws.py."""
    from kernels import matmul_gated_gluon_ws as ws
    _, bm, bn, bk, stages = config
    d = mgg._descriptor
    o = d(out, (M, H), (bm, bn))
    pg, pu = (d(pre, (M, H), (bm, bn)), d(pre[:, H:], (M, H), (bm, bn))) if store_pre else (o, o)
    bufs = ws.epilogue_buffers(config, 2, store_pre)
    consumer, producer = ws.partition_regs(bm)
    compiled = ws._gated_fwd_ws_kernel.warmup(
        d(x, (M, K), (bm, bk)), d(w, (H, K), (bn, bk)), d(w[H:], (H, K), (bn, bk)), o, pg, pu, bias, M, H, K,
        grid=(1,), ACT=mgg.ACT_CODES[act], HAS_BIAS=True, STORE_PRE=store_pre, STAGES=stages, EPI_BUFS=bufs,
        GROUP=mgg.GROUP_M, CONSUMER_REGS=consumer, PRODUCER_REGS=producer, num_warps=bm // 16, GATED=True)
    show(f"gated gluon ws {act} {str(dtype)[6:]} pre={int(store_pre)}", (*config, f"epi{bufs}"), compiled)


def ffn_plain_gluon_kernels():
    """The non-gated forward on kernels/matmul_gated_gluon_ws.py's kernel (GATED False) at every PLAIN_CONFIGS entry,
    every activation, bf16 and fp16, with and without storing the pre-activation."""
    from kernels import matmul_gated_gluon_ws as ws
    M, K, N = 16384, 768, 3072
    for dtype in (torch.bfloat16, torch.float16):
        x, w, bias = torch.empty(M, K, dtype=dtype), torch.empty(N, K, dtype=dtype), torch.empty(N, dtype=dtype)
        out, pre = torch.empty(M, N, dtype=dtype), torch.empty(M, N, dtype=dtype)
        for act, code in mgg.PLAIN_ACT_CODES.items():
            for store_pre in (True, False):
                for config in ws.PLAIN_CONFIGS:
                    _, bm, bn, bk, stages = config
                    d = mgg._descriptor
                    o = d(out, (M, N), (bm, bn))
                    p = d(pre, (M, N), (bm, bn)) if store_pre else o
                    wd = d(w, (N, K), (bn, bk))
                    bufs = ws.epilogue_buffers(config, 2, store_pre)
                    consumer, producer = ws.partition_regs(bm)
                    compiled = ws._gated_fwd_ws_kernel.warmup(
                        d(x, (M, K), (bm, bk)), wd, wd, o, p, o, bias, M, N, K, grid=(1,), ACT=code, HAS_BIAS=True,
                        STORE_PRE=store_pre, STAGES=stages, EPI_BUFS=bufs, GROUP=mgg.GROUP_M,
                        CONSUMER_REGS=consumer, PRODUCER_REGS=producer, num_warps=bm // 16, GATED=False)
                    show(f"plain gluon ws {act} {str(dtype)[6:]} pre={int(store_pre)}", (*config, f"epi{bufs}"),
                         compiled)


def ffn_bwd_gluon_kernels():
    """The Gluon backward GEMM (kernels/matmul_bwd_gluon_ws.py) at every config, every activation (the gated ones at
    their GATED_CONFIGS), bf16 and fp16, with and without the bias-gradient sums."""
    from kernels import matmul_bwd_gluon_ws as bw
    M, K, N = 16384, 768, 3072
    for dtype in (torch.bfloat16, torch.float16):
        dy, w_out = torch.empty(M, K, dtype=dtype), torch.empty(K, N, dtype=dtype)
        for act in (*bw.ACT_CODES, *bw.GATED_ACT_CODES):
            gated = act in bw.GATED_ACT_CODES
            width = 2 * N if gated else N
            pre, d_pre, dbias = torch.empty(M, width, dtype=dtype), torch.empty(M, width, dtype=dtype), \
                torch.empty(width)
            for has_dbias in (True, False):
                for config in bw.configs_for(act):
                    _, bm, bn, bk, stages = config
                    consumer, producer = bw.partition_regs(bm)
                    box = (bm, bw.SLICE_N)
                    p, d = bw._descriptor(pre, (M, N), box), bw._descriptor(d_pre, (M, N), box)
                    u, du = ((bw._descriptor(pre[:, N:], (M, N), box), bw._descriptor(d_pre[:, N:], (M, N), box))
                             if gated else (p, d))
                    compiled = bw._act_bwd_ws_kernel.warmup(
                        bw._descriptor(dy, (M, K), (bm, bk)), bw._descriptor(w_out, (K, N), (bk, bn)), p, u, d, du,
                        dbias if has_dbias else d_pre, M, N, K, grid=(1,), ACT=bw._ALL_CODES[act],
                        HAS_DBIAS=has_dbias, STAGES=stages, GROUP=mgg.GROUP_M, CONSUMER_REGS=consumer,
                        PRODUCER_REGS=producer, GATED=gated, num_warps=bm // 16)
                    show(f"bwd gluon ws {act} {str(dtype)[6:]} dbias={int(has_dbias)}", config, compiled)


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "attention_bwd"
    print(f"triton {triton.__version__}, target sm_90a (compile only)")
    if which == "attention_bwd_gluon":
        gluon_attention_bwd_kernels([int(d) for d in sys.argv[2].split(",")] if len(sys.argv) > 2 else [64, 128])
    elif which == "attention_fwd_gluon":
        gluon_attention_fwd_kernels([int(d) for d in sys.argv[2].split(",")] if len(sys.argv) > 2 else [64, 128])
    elif which.startswith("attention"):
        attention_kernels(which, int(sys.argv[2]) if len(sys.argv) > 2 else 128)
    elif which == "ffn_gated_gluon":
        ffn_gated_gluon_kernels()
    elif which == "ffn_bwd_gluon":
        ffn_bwd_gluon_kernels()
    elif which == "ffn_plain_gluon":
        ffn_plain_gluon_kernels()
    elif which == "ffn":
        ffn_kernels(sys.argv[2].split(",") if len(sys.argv) > 2 else ["gelu", "relu", "swiglu"])
    else:
        raise SystemExit(f"unknown kernel family {which!r}: attention_bwd, attention_fwd, attention_bwd_gluon, "
                         "attention_fwd_gluon, ffn, ffn_gated_gluon, ffn_bwd_gluon or ffn_plain_gluon")


if __name__ == "__main__":
    main()
