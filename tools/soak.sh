#!/usr/bin/env bash
# Soak test: builds cv_soak (tools/soak.c) in a RelWithDebInfo build and
# runs set/reset, copy/release and cross-thread traffic for the given time,
# printing the resident set every second and a verdict: flat after the
# warm-up, or growth. Exit status 0 only for flat.
#   tools/soak.sh [seconds] [--count] [--hot]   default 20 s (see tools/soak.c)
#   BUILD_DIR=/path tools/soak.sh   build elsewhere (default build-soak)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-20}
[ $# -eq 0 ] && set -- "$seconds"
build=${BUILD_DIR:-$root/build-soak}
"$root/tools/install-deps.sh" cmake make gcc pkg-config liburcu-dev libcmocka-dev
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCV_SANITIZE= >/dev/null
cmake --build "$build" -j2 --target cv_soak >/dev/null
echo "=== soak: ${seconds} s ($build/tests/cv_soak)"
exec "$build/tests/cv_soak" "$@"
