#!/usr/bin/env bash
# Runs every ctest suite under valgrind's memcheck, on a plain Debug build
# (no sanitizer: valgrind and ASan/TSan do not mix). A suite fails on any
# memcheck error or on a definite or indirect leak; "possibly lost" blocks
# are not errors (liburcu's call_rcu thread is never joined), and the known
# benign ones are suppressed in tests/valgrind.supp. Reports pass/fail per
# suite, keeps each log, and exits 1 if any suite failed.
#   tools/valgrind.sh                 every suite
#   tools/valgrind.sh REGEX           the suites whose name matches (ctest -R)
#   BUILD_DIR=/path tools/valgrind.sh build elsewhere (default build-valgrind)
# Long suites get smaller workloads under valgrind through their own knobs:
# CV_STRESS_SECONDS (default here 2) and CV_THREAD_EXIT_COUNT (default here
# 500); set them to override. VALGRIND_TIMEOUT (seconds, default 900)
# bounds each suite.
# Suites that fork (VALGRIND_FORKING, a regex, default ^test_fork$) count
# memory errors but not leaks: a forked child inherits blocks that only the
# parent's other threads point to, and its exit-time leak check reports
# them as lost, turning the child's exit status into a failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-valgrind}
filter=${1:-}
"$root/tools/install-deps.sh" cmake make gcc g++ pkg-config liburcu-dev libcmocka-dev valgrind \
  python3

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCV_SANITIZE= >/dev/null
cmake --build "$build" -j2

export CV_STRESS_SECONDS=${CV_STRESS_SECONDS:-2}
export CV_THREAD_EXIT_COUNT=${CV_THREAD_EXIT_COUNT:-500}
logs=$build/valgrind-logs
mkdir -p "$logs"

# One line per suite: name, working directory, environment and command,
# separated by \x1f (not a tab: read would merge the empty fields that a tab
# separates), the last two as shell words, from ctest's own description
# of its tests.
list=$(cd "$build" && ctest --show-only=json-v1 ${filter:+-R "$filter"} | python3 -c '
import json, shlex, sys
for test in json.load(sys.stdin)["tests"]:
    if "command" not in test:
        continue
    props = {p["name"]: p["value"] for p in test.get("properties", [])}
    env = props.get("ENVIRONMENT", [])
    if isinstance(env, str):
        env = [env]
    print("\x1f".join([test["name"], props.get("WORKING_DIRECTORY", "."), shlex.join(env),
                     shlex.join(test["command"])]))
')
if [ -z "$list" ]; then
  echo "no suites${filter:+ match '$filter'}" >&2
  exit 1
fi

valgrind_args=(
  --error-exitcode=1
  --leak-check=full
  --show-leak-kinds=definite,indirect
  --suppressions="$root/tests/valgrind.supp"
  --fair-sched=yes # spinning readers would otherwise starve the writer
  --child-silent-after-fork=yes
  --num-callers=30
)

passed=() failed=()
while IFS=$'\x1f' read -r name workdir env command; do
  eval "argv=($command)"
  eval "envs=($env)"
  leak_kinds=definite,indirect
  [[ $name =~ ${VALGRIND_FORKING:-^test_fork$} ]] && leak_kinds=none
  # The examples' tests run their program from a checking script: valgrind
  # goes around the program (tests/examples_check.cmake), not the script.
  # The package tests run compilers and CMake, not the library's code.
  [[ $name == package_* ]] && continue
  wrap=(valgrind "${valgrind_args[@]}" --errors-for-leak-kinds=$leak_kinds)
  launcher=()
  if [[ $name == example_* ]]; then
    launcher=(CV_EXAMPLE_LAUNCHER="${wrap[*]}")
    wrap=()
  fi
  log=$logs/$name.log
  start=$(date +%s)
  set +e
  (
    cd "$workdir"
    exec env "${envs[@]}" "${launcher[@]}" timeout "${VALGRIND_TIMEOUT:-900}" \
      "${wrap[@]}" "${argv[@]}"
  ) >"$log" 2>&1
  status=$?
  set -e
  seconds=$(($(date +%s) - start))
  if [ $status -eq 0 ]; then
    passed+=("$name")
    printf 'PASS  %-32s %4d s\n' "$name" "$seconds"
  else
    failed+=("$name")
    why="exit $status"
    [ $status -eq 124 ] && why="timed out"
    grep -q "ERROR SUMMARY: [1-9]" "$log" && why="$why, $(grep -o 'ERROR SUMMARY: [0-9]* errors' "$log" | tail -1)"
    grep -q "definitely lost: [1-9]" "$log" && why="$why, $(grep -o 'definitely lost: [0-9,]* bytes' "$log" | tail -1)"
    printf 'FAIL  %-32s %4d s  (%s; log: %s)\n' "$name" "$seconds" "$why" "$log"
  fi
done <<<"$list"

echo "valgrind: ${#passed[@]} passed, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
