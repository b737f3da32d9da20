#!/usr/bin/env bash
# The test command: installs what is missing, then builds and runs the
# whole cmocka suite three times: a normal build with -Werror, an
# ASan+UBSan build and a TSan build. Any failure or sanitizer report fails.
#   tools/test.sh            all three
#   tools/test.sh normal     one of: normal address thread
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/install-deps.sh" cmake make gcc g++ clang pkg-config liburcu-dev libcmocka-dev \
  libclang-rt-14-dev libuv1-dev
builds=("$@")
[ ${#builds[@]} -eq 0 ] && builds=(normal address thread)
for build in "${builds[@]}"; do
  case "$build" in
    normal) dir=build-test; flags=(-DCMAKE_BUILD_TYPE=Debug) ;;
    address) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCV_SANITIZE=address) ;;
    thread) dir=build-tsan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCV_SANITIZE=thread) ;;
    *) echo "unknown build '$build' (normal, address, thread)" >&2; exit 2 ;;
  esac
  echo "=== $build build ($dir)"
  cmake -S "$root" -B "$root/$dir" "${flags[@]}" >/dev/null
  cmake --build "$root/$dir" -j2
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp" \
    ctest --test-dir "$root/$dir" --output-on-failure -j2
done
