#!/usr/bin/env bash
# One batched GPU session: `bash tools/gpu_run.sh SECTION...` with sections
#   env tests tests_parallel attention attention_bwd norms ffn ffn_profile ffn_picks ffn_host bench bench_<op>
#   benchgraph_<op>
#   report train
# (bench_attention, bench_norms, bench_ffn, bench_train_step: one JSON each, time limit
# BENCH_<OP>_SECS; report merges every JSON into tables and plots)
# Each section has its own time limit and log; a failing section does not stop the others. Logs,
# bench JSON and plots come back packed in $OUT/results.tgz (the device returns at most 8 files).
# Liger-Kernel is installed from .whl/ when carried there.
set -u
FINAL=${OUT:-out}; OUT=/tmp/gpu_out; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
section() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  # SIGINT first: pytest then still finishes its session and pytest-benchmark writes its JSON.
  timeout -s INT -k 30 "$secs" "$@" > "$OUT/$name.out" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
}
for s in "$@"; do
  case $s in
    env) section env 60 bash -c 'nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"' ;;
    tests) section tests "${TESTS_SECS:-240}" python3 -m pytest ${TESTS_PATHS:-tests} -q --maxfail=10 --durations=15 -p no:cacheprovider ${TESTS_ARGS:-} ;;
    tests_parallel)  # one pytest per path of TESTS_PATHS at once: the GPU tests are compile-bound (CPU)
      for p in ${TESTS_PATHS:-tests}; do
        section "tests-$(basename "$p" .py)" "${TESTS_SECS:-240}" python3 -m pytest "$p" -q --maxfail=10 --durations=15 \
          -p no:cacheprovider ${TESTS_ARGS:-} &
      done
      wait ;;
    attention) section attention "${ATT_SECS:-240}" python3 tools/gpu_attention.py ;;
    attention_bwd) section attention_bwd "${ATTB_SECS:-300}" python3 tools/gpu_attention_bwd.py ;;
    norms) section norms "${NORM_SECS:-180}" python3 tools/gpu_norms.py ;;
    ffn) section ffn "${FFN_SECS:-240}" python3 tools/gpu_ffn.py ;;
    ffn_profile) section ffn_profile "${FFN_PROFILE_SECS:-120}" python3 tools/gpu_ffn_profile.py ;;
    ffn_picks) section ffn_picks "${FFN_PICKS_SECS:-240}" python3 tools/gpu_ffn_pick_stability.py ;;
    ffn_host) section ffn_host "${FFN_HOST_SECS:-90}" python3 tools/gpu_ffn_host.py ;;
    bench) section bench "${BENCH_SECS:-600}" python3 -m pytest bench --benchmark-only -q -p no:cacheprovider --benchmark-json "$OUT/bench.json" ${BENCH_ARGS:-} ;;
    bench_*) name=${s#bench_}
      section "$s" "$(eval echo \${BENCH_${name^^}_SECS:-300})" python3 -m pytest "bench/test_$name.py" --benchmark-only -q \
        -p no:cacheprovider --benchmark-json "$OUT/$s.json" ${BENCH_ARGS:-} ;;
    benchgraph_*) name=${s#benchgraph_}  # the same file timed as GPU time only (--bench-timing graph)
      section "$s" "$(eval echo \${BENCH_${name^^}_SECS:-300})" python3 -m pytest "bench/test_$name.py" --benchmark-only -q \
        -p no:cacheprovider --bench-timing graph --benchmark-json "$OUT/bench_${name}_graph.json" ${BENCH_ARGS:-} ;;
    report) section report 120 bash -c "python3 -m bench.report $OUT/bench*.json --out $OUT/report" ;;
    train) section train "${TRAIN_SECS:-150}" python3 train.py ${TRAIN_ARGS:---max-steps=200} ;;
    *) echo "unknown section $s" ;;
  esac
done
# Only 8 files come back from the device: pack everything into one archive.
tar czf "$FINAL/results.tgz" -C "$OUT" .
cp "$OUT/summary.txt" "$FINAL/"
cat "$OUT/summary.txt"
