#!/usr/bin/env bash
# The main job: ctxvars against __thread, pthread keys, CPython's
# contextvars and a naive hand-written context, with glibc malloc and with
# jemalloc, from a fresh machine.
#
#   tools/bench.sh           full run (a few minutes on 2 cores)
#   tools/bench.sh --quick   smoke run for CI (under a minute, small sizes,
#                            one repetition: the numbers are rough)
#
# Installs what is missing (Debian packages, as root or through sudo),
# builds Release into build-bench/ (library and harness with functions and
# loops aligned to 64 bytes: unaligned, where a loop happened to land moved
# rows under 10 ns by up to 2x between builds, and the glibc and jemalloc
# executables of one run disagreed on run by 14%), runs every benchmark
# program for both allocators, then tools/bench_report.py prints the
# tables and the
# DESIGN.md targets and draws the plot. Results go to bench-results/
# (bench-results/quick/ for --quick): raw JSON, report.txt, bench.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

mode=full
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

"$root/tools/install-deps.sh" cmake make gcc g++ pkg-config python3 liburcu-dev libjemalloc-dev \
  libbenchmark-dev python3-dev gnuplot-nox

build="$root/build-bench"
echo "=== building Release into $build"
mkdir -p "$build"
align="-falign-functions=64 -falign-loops=64"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCV_BUILD_TESTS=OFF -DCV_BUILD_BENCH=ON \
  -DCMAKE_C_FLAGS="$align" -DCMAKE_CXX_FLAGS="$align" \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
grep -E "^-- bench:" "$build/configure.log" || true
cmake --build "$build" -j"$(nproc)" >"$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }

if [ "$mode" = quick ]; then
  out="$root/bench-results/quick"
  # One repetition, tiny measuring time, small contexts: checks that every
  # benchmark still runs, not how fast it is.
  gbench=(--benchmark_repetitions=1 --benchmark_min_time=0.002 --cv_sizes=1,100,1000
          --cv_latency_samples=20000 --cv_pool_batch=512 --cv_tsc_calibration=0.02)
  mem_vars=10000
  rss=(--pairs 1e6 --shared-pairs 1e5 --copies 1e5 --max-seconds 2 --shared-max-seconds 1)
  rss_pairs=1e6
else
  out="$root/bench-results"
  # Three repetitions (five for the multi-core ones), medians reported
  # (the report reads the median aggregate of each benchmark).
  gbench=(--benchmark_repetitions=3 --benchmark_report_aggregates_only=true
          --benchmark_min_time=0.1 --cv_mt_repetitions=5)
  mem_vars=100000
  # 10^8 set/reset pairs as DESIGN.md asks. The observed-context phase grows
  # memory while reclamation lags, so it gets a time budget of its own, and
  # runs past the 1 s baseline (see bench/rss_flat.c).
  rss=(--pairs 1e8 --shared-pairs 5e7 --copies 1e7 --max-seconds 20 --shared-max-seconds 5)
  rss_pairs=1e8
fi
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log "$out/bench.png" "$out/report.txt"

bin="$build/bench"
for alloc in glibc jemalloc; do
  suffix=""; [ "$alloc" = jemalloc ] && suffix="_jemalloc"
  if [ ! -x "$bin/ctxvars_bench$suffix" ]; then
    echo "=== $alloc: not built (see the configure messages above), skipped"
    continue
  fi
  echo "=== $alloc: google-benchmark run ($mode) -> $out/$alloc.json"
  start=$SECONDS
  "$bin/ctxvars_bench$suffix" "${gbench[@]}" --benchmark_format=json \
    --benchmark_out="$out/$alloc.json" --benchmark_out_format=json >"$out/$alloc.stdout.log" \
    2>"$out/$alloc.log" || { echo "ctxvars_bench$suffix failed:"; tail -20 "$out/$alloc.log"; exit 1; }
  echo "    $((SECONDS - start)) s"
  echo "=== $alloc: bytes per variable ($mem_vars variables)"
  "$bin/mem_per_var$suffix" --vars "$mem_vars" --json "$out/mem_$alloc.json" | sed 's/^/    /'
  echo "=== $alloc: resident memory over long runs"
  "$bin/rss_flat$suffix" "${rss[@]}" --json "$out/rss_$alloc.json" | sed 's/^/    /'
done

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain -- lib 2>/dev/null)" ]; then commit="$commit+dirty(lib)"; fi
cat >"$out/meta.json" <<EOF
{"mode": "$mode", "date": "$(date -u +%Y-%m-%dT%H:%MZ)", "commit": "$commit",
 "command": "tools/bench.sh$([ "$mode" = quick ] && echo ' --quick')", "rss_pairs": "$rss_pairs"}
EOF

# The system Python (stdlib only), not whatever a version manager put first
# on PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
echo
"$py" "$root/tools/bench_report.py" "$out"
