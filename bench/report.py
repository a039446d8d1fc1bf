"""Turn pytest-benchmark JSON into the Markdown tables and PNG plots of bench/RESULTS.md.

    python -m bench.report out/bench.json [more.json ...] [--out bench/]

Reads the numbers the suite recorded in each benchmark's extra_info: `median_ms` (do_bench's
median; CUDA-event medians for the training step), `tflops` or `gbps`, `fraction_of_ceiling`, and
recomputes the ratio to the best peer over all the files given (so a run split over several files
reports the same ratios). pytest-benchmark's own stats are not used. Writes RESULTS_table.md and
one PNG per op / mode / plot line-up (e.g. attention fwd D=64: TFLOP/s against T, a line per
provider) into --out, and prints the table.
"""
import argparse
import json
import re
import sys
from pathlib import Path

OURS = "ours"


def is_ours(provider):
    """Ours, or a variant of ours ("ours-compile": our kernels inside a torch.compile'd model): never a peer."""
    return provider == OURS or provider.startswith(OURS + "-")


def add_peer_ratios(benchmarks):
    """ratio_to_best_peer = best peer's median / this median (> 1: faster than every peer) per group.

    `benchmarks` are pytest-benchmark JSON entries (dicts with "group" and "extra_info"); peers are
    all providers but ours and its variants, the best the one with the smallest median. Returns {group: [extra_info]}.
    """
    groups = {}
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if "median_ms" in info:
            groups.setdefault(b.get("group") or info.get("group"), []).append(info)
    for infos in groups.values():
        peers = [i for i in infos if not is_ours(i["provider"])]
        best = min(peers, key=lambda i: i["median_ms"]) if peers else None
        for i in infos:
            i["best_peer"] = best["provider"] if best else None
            i["best_peer_ms"] = best["median_ms"] if best else None
            i["ratio_to_best_peer"] = best["median_ms"] / i["median_ms"] if best else None
    return groups


def load(paths):
    """(benchmark entries, the first file's machine_info, datetime) of one or more JSON files.

    A benchmark present in several files (same fullname and timing) is taken from the last file given.
    """
    entries, machine, when = {}, {}, None
    for p in paths:
        data = json.loads(Path(p).read_text())
        for b in data.get("benchmarks", []):
            timing = (b.get("extra_info") or {}).get("timing_mode", "events")
            entries[(b.get("fullname") or id(b), timing)] = b
        machine = machine or data.get("machine_info", {})
        when = when or data.get("datetime")
    return list(entries.values()), machine, when


def rate(info):
    """(value, unit) of the throughput a benchmark is judged by."""
    if info.get("tflops") is not None:
        return info["tflops"], "TFLOP/s"
    if info.get("gbps") is not None:
        return info["gbps"], "GB/s"
    return None, ""


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def header(machine, when, infos):
    first = infos[0] if infos else {}
    slm = machine.get("slm_bench", {})
    ceil = slm.get("ceilings") or {}
    lines = [f"Device: {slm.get('device', first.get('device', '?'))}; torch {first.get('torch', '?')}, "
             f"Triton {first.get('triton', '?')}, CUDA {first.get('cuda', '?')}; run {when or '?'}; "
             f"grid: {slm.get('bench_size', '?')}."]
    if ceil:
        lines.append(f"Measured ceilings: bf16 matmul 8192^3 {ceil['matmul_tflops']:.0f} TFLOP/s, device copy "
                     f"{ceil['copy_gbps']:.0f} GB/s (read + write).")
    lines.append("Times are medians of triton.testing.do_bench (CUDA events, L2 flushed, inputs rotated); "
                 "groups ending in /graph: of do_bench_cudagraph (CUDA-graph replay, GPU time only, no L2 flush); "
                 "'vs best peer' = best peer's time / this time (> 1: faster than every peer).")
    return lines


def table(entries, machine=None, when=None, images=()):
    """The Markdown report: ours against the best peer, every provider per group, then the plots."""
    groups = add_peer_ratios(entries)
    infos = [i for g in groups.values() for i in g]
    out = ["# Benchmark results", ""] + header(machine or {}, when, infos) + [""]
    out += ["## Ours against the best peer", "",
            "| group | ours ms | ours rate | best peer | peer ms | peer rate | vs best peer |",
            "|---|---|---|---|---|---|---|"]
    for group, items in groups.items():
        best = next((i for i in items if i["provider"] == items[0]["best_peer"]), None)
        for ours in (i for i in items if is_ours(i["provider"])):
            if best is None:
                continue
            (ov, unit), (bv, _) = rate(ours), rate(best)
            speed = ours["ratio_to_best_peer"]
            mark = "**" if speed >= 1 else ""
            label = group if ours["provider"] == OURS else f"{group} ({ours['provider']})"
            out.append(f"| {label} | {ours['median_ms']:.3f} | {_fmt(ov, '.0f')} {unit} | {best['provider']} | "
                       f"{best['median_ms']:.3f} | {_fmt(bv, '.0f')} {unit} | {mark}{speed:.2f}x{mark} |")
    sections = {}
    for group, items in groups.items():
        graph = "/graph" if group.endswith("/graph") else ""  # --bench-timing graph: its own sections
        sections.setdefault("/".join(group.split("/")[:2]) + graph, []).append((group, items))
    for section, members in sections.items():
        out += ["", f"## {section}", "",
                "| shape | provider | median ms | rate | % of ceiling | vs best peer | notes |",
                "|---|---|---|---|---|---|---|"]
        for group, items in members:
            shape = "/".join(group.removesuffix("/graph").split("/")[2:])
            for i in sorted(items, key=lambda i: i["median_ms"]):
                value, unit = rate(i)
                frac = i.get("fraction_of_ceiling")
                name = i["provider"]
                if is_ours(name):
                    name = f"**{name}**"
                elif name == i["best_peer"]:
                    name = f"_{name}_ (best peer)"
                notes = []
                if i.get("implementation") == "torch":
                    notes.append("ours is still the PyTorch reference")
                if "tokens_per_s" in i:
                    notes.append(f"{i['tokens_per_s']:,.0f} tokens/s, MFU {i.get('mfu') or 0:.1%}, "
                                 f"peak {i.get('peak_memory_gb', 0):.1f} GB")
                out.append(f"| {shape} | {name} | {i['median_ms']:.3f} | {_fmt(value, '.1f')} {unit} | "
                           f"{_fmt(frac and 100 * frac, '.0f')} | {_fmt(i['ratio_to_best_peer'], '.2f')} | "
                           f"{'; '.join(notes)} |")
    if images:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in images]
    return "\n".join(out) + "\n"


def plots(entries, out_dir):
    """One PNG per plot key and dtype: rate against the case's x (T or width), a line per provider."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    add_peer_ratios(entries)
    figures = {}
    for b in entries:
        i = b.get("extra_info") or {}
        if "median_ms" not in i or rate(i)[0] is None:
            continue
        figures.setdefault((i["plot"], i.get("dtype", "")), []).append(i)
    written = []
    for (plot, dtype), infos in figures.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        unit = rate(infos[0])[1]
        x_name = infos[0].get("x_name", "x")
        by_provider = {}
        for i in infos:
            by_provider.setdefault(i["provider"], []).append((i["x"], rate(i)[0]))
        if len({x for pts in by_provider.values() for x, _ in pts}) == 1:   # one shape: bars
            names = sorted(by_provider)
            ax.bar(names, [by_provider[n][0][1] for n in names],
                   color=["tab:red" if is_ours(n) else "tab:blue" for n in names])
            ax.tick_params(axis="x", rotation=30)
        else:
            for name, pts in sorted(by_provider.items()):
                pts.sort()
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name,
                        linewidth=2.5 if is_ours(name) else 1.2, color="black" if name == OURS else None)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({x for pts in by_provider.values() for x, _ in pts}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel(x_name)
            ax.legend(fontsize=8)
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{plot} {dtype}: {unit} ({infos[0].get('device', '')})", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / (re.sub(r"[^A-Za-z0-9]+", "_", f"{plot}_{dtype}").strip("_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json file(s)")
    parser.add_argument("--out", default="bench", help="directory for RESULTS_table.md and the PNGs")
    args = parser.parse_args(argv)
    entries, machine, when = load(args.json)
    if not any("median_ms" in (b.get("extra_info") or {}) for b in entries):
        print("no timed benchmarks in the JSON (was it run with --benchmark-only on CUDA?)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = plots(entries, out)
    text = table(entries, machine, when, images)
    (out / "RESULTS_table.md").write_text(text)
    print(text)
    for path in images:
        print(f"wrote {path}")
    print(f"wrote {out / 'RESULTS_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
