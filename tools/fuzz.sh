#!/usr/bin/env bash
# Runs the differential fuzzer (tests/fuzz/fuzz_ops.c: ctxvars against a
# model of API.md) under libFuzzer with ASan+UBSan.
#   tools/fuzz.sh [seconds]       fuzz for that long (default 60)
#   tools/fuzz.sh --ci            the CI form: 60 s
#   tools/fuzz.sh --merge [secs]  then merge new coverage into the seed corpus
#   tools/fuzz.sh --lsan [secs]   LeakSanitizer after every input that
#                                 allocated more than it freed (5x slower)
# Leaks are caught without --lsan too: the target counts every block the
# library allocates (its own cv_set_allocator) and, every 1024 inputs, after
# cv_reclaim_barrier(), fails if the library still holds more than a few;
# LeakSanitizer runs at exit. Per-input LSan is off by default because the
# library's deferred (RCU) frees make most inputs look unbalanced.
# Builds build-fuzz with clang and CV_BUILD_FUZZ=ON, fuzzes a copy of
# tests/fuzz/corpus (the committed corpus is not touched unless --merge),
# in one process. Fails on any crash, mismatch, leak or timeout; the input is
# left in build-fuzz/fuzz-artifacts/ (replay it with
# CV_FUZZ_TRACE=1 build-fuzz/tests/test_fuzz_replay <file> to see its steps).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=60
merge=0
lsan=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) seconds=60 ;;
    --merge) merge=1 ;;
    --lsan) lsan=1 ;;
    ''|*[!0-9]*) echo "usage: $0 [--ci] [--merge] [--lsan] [seconds]" >&2; exit 2 ;;
    *) seconds=$1 ;;
  esac
  shift
done

"$root/tools/install-deps.sh" cmake make clang libclang-rt-14-dev pkg-config liburcu-dev \
  libcmocka-dev
build="$root/build-fuzz"
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCV_BUILD_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target cv_fuzz test_fuzz_replay

work="$build/fuzz-work"
artifacts="$build/fuzz-artifacts"
rm -rf "$work"
mkdir -p "$work" "$artifacts"
cp "$root"/tests/fuzz/corpus/* "$work/"

echo "=== fuzzing for ${seconds}s (corpus: $(ls "$work" | wc -l) seeds)"
set +e
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$build/tests/cv_fuzz" -max_len=512 -max_total_time="$seconds" -timeout=20 \
  -rss_limit_mb=4096 -detect_leaks=$lsan -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" 2>&1 |
  tee "$build/fuzz.log" |
  grep --line-buffered -E '^#[0-9]+[[:space:]]+(pulse|DONE)|MISMATCH|ERROR|SUMMARY|stat::|Test unit'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] || grep -qE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|MISMATCH|runtime error' "$build/fuzz.log"; then
  echo "FAILED: the fuzzer found a problem (log: $build/fuzz.log, input in $artifacts/)" >&2
  exit 1
fi
echo "fuzzing passed: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$build/fuzz.log" | tail -1)"

if [ "$merge" -eq 1 ]; then
  echo "=== merging new coverage into tests/fuzz/corpus"
  "$build/tests/cv_fuzz" -merge=1 -max_len=512 "$root/tests/fuzz/corpus" "$work" 2>&1 | tail -2
fi
