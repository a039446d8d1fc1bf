"""The benchmark report and the suite's correctness gate, on the CPU with synthetic data."""
import json
import sys
from pathlib import Path

import pytest
import torch

import kernels

# bench/ is a directory of the repository, not an installed package: make it importable however
# pytest was started (`pytest tests` from an installed checkout does not put the root on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import report  # noqa: E402


def _entry(op, mode, shape, provider, ms, x, flops=None, bytes_=None, plot=None):
    group = f"{op}/{mode}/{shape}/bf16"
    info = {"provider": provider, "op": op, "mode": mode, "dtype": "bf16", "group": group,
            "plot": plot or f"{op}/{mode}", "x_name": "T", "x": x, "median_ms": ms, "device": "Test GPU",
            "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"}
    if flops:
        info.update(flops=flops, tflops=flops / (ms * 1e-3) / 1e12, fraction_of_ceiling=0.5)
    if bytes_:
        info.update(bytes=bytes_, gbps=bytes_ / (ms * 1e-3) / 1e9, fraction_of_ceiling=0.25)
    return {"group": group, "name": f"test[{group}-{provider}]", "fullname": f"bench::{group}::{provider}",
            "extra_info": info, "stats": {"median": ms * 1e-3}}


def _synthetic():
    out = []
    for T, scale in ((1024, 1.0), (4096, 3.5)):
        shape = f"B{16384 // T}-H32-T{T}-D64"
        for provider, ms in (("ours", 1.0), ("sdpa-cudnn", 0.8), ("sdpa-flash", 1.2), ("compile", 2.0)):
            out.append(_entry("attention", "fwd", shape, provider, ms * scale, T, flops=5e11 * scale,
                              plot="attention/fwd/D=64"))
    for provider, ms in (("ours", 0.05), ("eager", 0.1), ("liger", 0.08)):
        out.append(_entry("layer_norm", "fwd", "M16384-N768", provider, ms, 768, bytes_=50e6))
    return out


def test_peer_ratios():
    entries = _synthetic()
    groups = report.add_peer_ratios(entries)
    ours = next(i for i in groups["attention/fwd/B16-H32-T1024-D64/bf16"] if i["provider"] == "ours")
    assert ours["best_peer"] == "sdpa-cudnn"
    assert ours["ratio_to_best_peer"] == pytest.approx(0.8)
    ln = next(i for i in groups["layer_norm/fwd/M16384-N768/bf16"] if i["provider"] == "ours")
    assert ln["best_peer"] == "liger" and ln["ratio_to_best_peer"] == pytest.approx(1.6)


def test_a_variant_of_ours_is_never_the_best_peer():
    # "ours-compile" (our kernels in a compiled model) is faster than every peer here: it gets its own
    # ratio to the best real peer, and ours is not compared with it.
    entries = [_entry("train_step", "fwd+bwd+adamw", "B16-T1024", p, ms, 1024, flops=1e13)
               for p, ms in (("ours", 50.0), ("ours-compile", 30.0), ("eager", 55.0), ("compile", 40.0))]
    infos = {i["provider"]: i for i in report.add_peer_ratios(entries)["train_step/fwd+bwd+adamw/B16-T1024/bf16"]}
    assert infos["ours"]["best_peer"] == "compile" and infos["ours"]["ratio_to_best_peer"] == pytest.approx(0.8)
    assert infos["ours-compile"]["ratio_to_best_peer"] == pytest.approx(40 / 30)
    assert report.is_ours("ours-compile") and not report.is_ours("compile")


def test_report_writes_table_and_plots(tmp_path, capsys):
    data = {"machine_info": {"slm_bench": {"device": "Test GPU", "bench_size": "small",
                                           "ceilings": {"matmul_tflops": 800.0, "copy_gbps": 3000.0}}},
            "datetime": "2026-11-27T07:00:00", "benchmarks": _synthetic()}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "RESULTS_table.md").read_text()
    assert text == capsys.readouterr().out.split("wrote ")[0].rstrip("\n") + "\n"
    assert "Test GPU" in text and "800 TFLOP/s" in text
    row = "| attention/fwd/B16-H32-T1024-D64/bf16 | 1.000 | 500 TFLOP/s | sdpa-cudnn | 0.800 | 625 TFLOP/s | 0.80x |"
    assert row in text
    assert "**1.60x**" in text                    # ours beats the best peer: highlighted
    assert "0.80x" in text and "**0.80x**" not in text
    assert "_sdpa-cudnn_ (best peer)" in text and "**ours**" in text
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["attention_fwd_D_64_bf16.png", "layer_norm_fwd_bf16.png"]
    assert all((tmp_path / "out" / p).stat().st_size > 5000 for p in pngs)
    assert "![attention_fwd_D_64_bf16](attention_fwd_D_64_bf16.png)" in text


def test_report_rejects_untimed_json(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [{"group": None, "extra_info": {}}]}))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 1


def test_wrong_provider_fails_the_gate():
    from bench import common
    case = common.Case("layer_norm", "fwd+bwd", (("M", 7), ("N", 33)), torch.float32, "layer_norm/fwd+bwd", "N")
    gen = common.generator(0)
    args = [common.randn((7, 33), gen, torch.float32, shift=0.5), common.randn((33,), gen, torch.float32)]
    grad_outs = [common.randn((7, 33), gen, torch.float32)]
    ref = kernels.reference.layer_norm
    common.check(case, "eager", ref, ref, args, (0, 1), grad_outs)   # the reference passes its own gate
    with pytest.raises(AssertionError, match="output0"):
        common.check(case, "bad", lambda x, w: ref(x, w) * 1.001, ref, args, (0, 1), grad_outs)
    with pytest.raises(AssertionError, match=r"grad\(arg1\)"):   # right output, wrong weight gradient
        common.check(case, "bad", lambda x, w: ref(x, w.detach() + 0 * w), ref, args, (0, 1), grad_outs)


def test_graph_timed_run_kept_apart_from_the_default_one(tmp_path):
    # The same benchmarks timed with --bench-timing graph: their groups end in /graph and they neither
    # replace the default (events) run's entries nor share its sections or ratios.
    def graph(entry):
        e = json.loads(json.dumps(entry))
        e["group"] += "/graph"
        e["extra_info"].update(group=e["group"], plot=e["extra_info"]["plot"] + "/graph", timing_mode="graph",
                               median_ms=e["extra_info"]["median_ms"] / 2 if e["extra_info"]["provider"] == "ours"
                               else e["extra_info"]["median_ms"])
        return e
    paths = []
    for name, entries in (("events", _synthetic()), ("graph", [graph(e) for e in _synthetic()])):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"machine_info": {}, "datetime": "2026-11-27", "benchmarks": entries}))
    entries, _, _ = report.load([str(p) for p in paths])
    assert len(entries) == 2 * len(_synthetic())
    groups = report.add_peer_ratios(entries)
    ln = {g: next(i for i in groups[g] if i["provider"] == "ours")["ratio_to_best_peer"]
          for g in ("layer_norm/fwd/M16384-N768/bf16", "layer_norm/fwd/M16384-N768/bf16/graph")}
    assert ln == pytest.approx({"layer_norm/fwd/M16384-N768/bf16": 1.6, "layer_norm/fwd/M16384-N768/bf16/graph": 3.2})
    text = report.table(entries)
    assert "## layer_norm/fwd/graph" in text and "## layer_norm/fwd\n" in text
