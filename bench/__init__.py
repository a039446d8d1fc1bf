"""The benchmark suite: every op against its peers, checked before it is timed.

    pytest bench --benchmark-only --benchmark-json out/bench.json   # CUDA: time everything
    pytest bench --benchmark-disable -q                             # CPU CI: correctness only
    python -m bench.report out/bench.json --out bench/              # Markdown table + PNG plots
"""
