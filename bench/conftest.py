"""Options, session-wide measurements and the JSON post-processing of the benchmark suite.

- TRITON_INTERPRET=1 is set here when there is no CUDA device, before any module imports `kernels`.
- `--bench-size small|full`: on CUDA, `small` (the default) is a reduced grid: attention at
  T in {1024, 16384}, norms at N in {768, 4096} (add variants 4096), every FFN but ReLU's second
  shape, the training step. On a fresh H100 machine it took 12.5 minutes (2026-11-27: attention 4.7,
  norms 3.7, FFN 2.9, training step 1.2), most of it compiling the torch.compile / FlexAttention
  peers and autotuning ours; select with `-k` to run less. `full` is every shape of the kernel issues
  and PEERS.md, a few times longer; run it one file at a time and pass all the JSON files to
  bench.report. On the CPU the shapes are tiny whatever is asked, and only correctness runs (with
  --benchmark-disable).
- `--bench-dtype bf16[,fp16,...]`: dtypes to run on CUDA (default bf16; the CPU runs fp32, because
  the interpreter's bf16 `tl.dot` is wrong).
- `--bench-timing events|graph`: `events` (default) is do_bench, CUDA events around each call: where
  the host's Python is slower than the kernels (small norms, fwd+bwd) it times the host. `graph`
  replays the calls from a CUDA graph (do_bench_cudagraph): the kernels' GPU time, what a training
  step gets when its host work hides behind the GPU's. Its groups end in "/graph".
- The card's ceilings are measured once per session (bf16 8192^3 matmul, device copy) and written
  to the JSON's machine_info; each benchmark's ratio to the best peer in its group is written to
  its extra_info, and a summary of ours against the best peer is printed at the end.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench import common  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("slm bench")
    group.addoption("--bench-size", choices=("small", "full"), default="small",
                    help="grid size on CUDA: small (default; ~12 minutes on a fresh H100) or full")
    group.addoption("--bench-dtype", default="bf16",
                    help="comma-separated dtypes to benchmark on CUDA: bf16, fp16, fp32 (default bf16)")
    group.addoption("--bench-timing", choices=tuple(common.TIMINGS), default="events",
                    help="events (default): CUDA events around each call, the host's time included where it "
                         "is the slower side; graph: CUDA-graph replay, the kernels' GPU time only")


def pytest_configure(config):
    common.TIMING = config.getoption("--bench-timing")
    # With --benchmark-disable (or no CUDA) the fixture only gates timing; that is not a mistake.
    config.addinivalue_line("filterwarnings", "ignore:Benchmark fixture was not used")
    if common.ON_CUDA:
        import torch._dynamo
        # Every shape and mode compiles its own graph (dynamic=False); without a larger cache
        # Dynamo would silently fall back to eager after 8 recompilations.
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 4096)
        torch.backends.cuda.matmul.allow_tf32 = False   # fp32 truth must be fp32
        torch.backends.cudnn.allow_tf32 = False


def pytest_report_header(config):
    size = common.bench_size(config)
    where = common.device_name()
    return [f"slm bench: size={size}, dtypes={[common.DTYPE_NAMES[d] for d in common.bench_dtypes(config)]}, "
            f"device={where}, {common.versions()}"]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["slm_bench"] = {"device": common.device_name(), **common.versions(),
                                 "ceilings": common.ceilings(), "bench_size": common.bench_size(config)}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    common.add_peer_ratios(output_json.get("benchmarks", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not common.RECORDS:
        return
    groups = common.add_peer_ratios([{"group": r["group"], "extra_info": r} for r in common.RECORDS])
    tr = terminalreporter
    ceil = common.ceilings()
    tr.write_sep("=", "slm bench: ours vs the best peer (do_bench medians)")
    if ceil:
        tr.write_line(f"ceilings on {common.device_name()}: bf16 matmul {ceil['matmul_tflops']:.0f} TFLOP/s, "
                      f"copy {ceil['copy_gbps']:.0f} GB/s")
    for group, infos in groups.items():
        best = infos[0]["best_peer"]
        for o in (i for i in infos if common.is_ours(i["provider"])):
            if best:
                tr.write_line(f"{group:58s} {o['provider']:12s} {o['median_ms']:8.3f} ms  best peer {best:16s} "
                              f"{o['best_peer_ms']:8.3f} ms  speed-up {o['ratio_to_best_peer']:5.2f}x")
