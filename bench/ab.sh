#!/usr/bin/env bash
# A/B of two commits on the same machine, on the benchmark rows both have:
# what a library change costs code that does not use it. Example: "with no
# watcher registered, switches cost nothing extra" is the commit before
# watchers existed against the one that added them:
#
#   bench/ab.sh 39704a2 406fc11
#   bench/ab.sh [--rounds N] [--filter REGEX] [--sizes LIST] OLD NEW
#   (--rounds 0: counts only; --sizes: context sizes of the sized rows, default 1)
#
# Builds each commit's own ctxvars_bench (glibc malloc, Release) from
# `git archive` under ${TMPDIR:-/tmp}/ctxvars-ab/<commit>-a64 (the work
# tree and its build directories are not touched), library and harness
# alike with functions and loops aligned to 64 bytes: otherwise where a
# change happens to move unrelated code can shift a sub-nanosecond row by
# 2x, on either side. Then it runs the two binaries
# alternately (ABBA), N rounds (default 5) of three repetitions each, and prints
# for each benchmark the median over rounds of each side's median and
# NEW/OLD. Alternating spreads a busy machine's slow phases over both
# sides; compare the ratio, not the absolute times. First, when valgrind
# is installed, the instructions each side executes per operation
# (bench/ab_ops.c under callgrind): exact, whatever the machine's load.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

rounds=5
sizes=1
filter='^(get_cached|run|enter_exit|switch)/ctxvars$|^(set_reset|copy)/ctxvars/vars:1$'
revs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --filter) filter=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) revs+=("$1"); shift ;;
  esac
done
[ ${#revs[@]} -eq 2 ] || { echo "usage: $0 [--rounds N] [--filter REGEX] [--sizes LIST] OLD NEW" >&2; exit 2; }

work="${TMPDIR:-/tmp}/ctxvars-ab"
align="-falign-functions=64 -falign-loops=64"
bins=() ops=()
for rev in "${revs[@]}"; do
  commit=$(git -C "$root" rev-parse --short "$rev^{commit}")
  src="$work/$commit-a64/src" build="$work/$commit-a64/build"
  if [ ! -x "$build/bench/ctxvars_bench" ]; then
    echo "=== building $commit into $build"
    rm -rf "$src" && mkdir -p "$src" "$build"
    git -C "$root" archive "$commit" | tar -x -C "$src"
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCV_BUILD_TESTS=OFF -DCV_BUILD_BENCH=ON \
      -DCMAKE_C_FLAGS="$align" -DCMAKE_CXX_FLAGS="$align" \
      >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
    cmake --build "$build" --target ctxvars_bench -j2 >"$build/build.log" 2>&1 ||
      { tail -30 "$build/build.log"; exit 1; }
  fi
  bins+=("$build/bench/ctxvars_bench")
  # The instruction counter (bench/ab_ops.c of this tree, old API only),
  # against this commit's static library and header.
  cc -O2 -I"$src/lib/include" "$root/bench/ab_ops.c" "$build/lib/libctxvars.a" \
    $(pkg-config --libs liburcu-bp) -pthread -o "$build/ab_ops"
  ops+=("$build/ab_ops")
done

# Instructions per operation (callgrind, deterministic): (Ir at 2N - Ir at
# N) / N, so start-up cancels out.
if command -v valgrind >/dev/null; then
  echo
  echo "instructions per operation (callgrind; independent of the machine's load)"
  printf "%-16s %10s %10s %9s\n" operation "${revs[0]}" "${revs[1]}" new/old
  n=100000
  ir() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 |
         sed -n 's/.*Collected : \([0-9]*\).*/\1/p'; }
  for mode in run enter_exit set_reset set_reset_unset copy_release get task; do
    per=()
    for side in 0 1; do
      # A mode this side's library lacks (ab_ops exits 3) counts as "-".
      if "${ops[$side]}" $mode 1 2>/dev/null; then
        a=$(ir "${ops[$side]}" $mode $n) b=$(ir "${ops[$side]}" $mode $((2 * n)))
        per+=("$(( (b - a) / n ))")
      else
        per+=(-)
      fi
    done
    ratio=-
    [ "${per[0]}" = - ] || [ "${per[1]}" = - ] ||
      ratio="$(python3 -c "print('%.3f' % (${per[1]} / ${per[0]}))")x"
    printf "%-16s %10s %10s %9s\n" $mode "${per[0]}" "${per[1]}" "$ratio"
  done
else
  echo "valgrind not found: no instruction counts (Debian: valgrind)"
fi

[ "$rounds" -gt 0 ] || exit 0
out="$work/run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  # ABBA: which side runs first alternates, so a trend in the machine's
  # load over the run does not favour one side.
  order="0 1"; [ $((round % 2)) -eq 0 ] && order="1 0"
  for side in $order; do
    echo "=== round $round/$rounds: ${revs[$side]}"
    "${bins[$side]}" --benchmark_filter="$filter" --benchmark_repetitions=3 \
      --benchmark_report_aggregates_only=true --benchmark_min_time=0.1 --cv_sizes="$sizes" \
      --benchmark_out="$out/side$side-round$round.json" --benchmark_out_format=json >/dev/null \
      2>>"$out/side$side.log" || { echo "${revs[$side]} failed:"; tail -20 "$out/side$side.log"; exit 1; }
  done
done

python3 - "$out" "$rounds" "${revs[0]}" "${revs[1]}" <<'EOF'
import json, statistics, sys
out, rounds, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sides = [{}, {}]
for side in (0, 1):
    for r in range(1, rounds + 1):
        with open("%s/side%d-round%d.json" % (out, side, r)) as f:
            for b in json.load(f)["benchmarks"]:
                if b.get("aggregate_name") == "median":
                    sides[side].setdefault(b["run_name"], []).append(b["real_time"])
print("\nmedian over %d alternating rounds of each side's median (ns); raw JSON in %s" % (rounds, out))
print("%-28s %10s %10s %9s  %s" % ("benchmark", old, new, "new/old", "rounds new/old"))
for name in sorted(set(sides[0]) & set(sides[1])):
    a, b = statistics.median(sides[0][name]), statistics.median(sides[1][name])
    per = " ".join("%.2f" % (y / x) for x, y in zip(sides[0][name], sides[1][name]))
    print("%-28s %10.2f %10.2f %8.3fx  %s" % (name, a, b, b / a, per))
EOF
