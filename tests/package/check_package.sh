#!/usr/bin/env bash
# The installed package, used the way a consumer uses it: installs the
# build tree to a prefix, moves that prefix elsewhere (the package must be
# relocatable), then builds tests/package/consumer against it through
# find_package(ctxvars) (shared and static targets, and the C++ header when
# the source tree has one) and through pkg-config (shared, and --static),
# and runs every program, comparing its output with the expected line.
# Configured by tests/package.cmake through the environment:
#   CV_BUILD_DIR CV_WORK_DIR CV_CONSUMER_DIR CV_HEADER_DIR CV_CMAKE
#   CV_PKG_CONFIG CV_CC CV_CXX CV_BUILD_TYPE CV_LIBDIR CV_INCLUDEDIR
#   CV_VERSION CV_SOVERSION CV_SANITIZE CV_CFLAGS CV_LDFLAGS
set -euo pipefail
for v in CV_BUILD_DIR CV_WORK_DIR CV_CONSUMER_DIR CV_HEADER_DIR CV_CMAKE CV_PKG_CONFIG CV_CC CV_CXX \
  CV_LIBDIR CV_INCLUDEDIR CV_VERSION CV_SOVERSION; do
  [ -n "${!v:-}" ] || { echo "FAIL: $v is not set" >&2; exit 2; }
done
read -r -a cflags <<<"${CV_CFLAGS:-}"
read -r -a ldflags <<<"${CV_LDFLAGS:-}"

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
# Runs a program and compares its single line of output.
expected="ctxvars $CV_VERSION: before=none set=req-42 run=req-42 ctx=inner thread=req-42 reset=none ok"
run_consumer() {
  local prog=$1 out
  out=$("$prog") || fail "$(basename "$prog") exited with status $?"
  [ "$out" = "$expected" ] || fail "$(basename "$prog") printed '$out', expected '$expected'"
  echo "$(basename "$prog"): $out"
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
expect_shared() { needed "$1" | grep -qxF "libctxvars.so.$CV_SOVERSION" || fail "$1 does not need libctxvars.so.$CV_SOVERSION: $(needed "$1" | xargs)"; }
expect_static() { ! needed "$1" | grep -q '^libctxvars' || fail "$1 needs the shared library: $(needed "$1" | xargs)"; }

# A DESTDIR from the caller would divert the install below.
unset DESTDIR
work=$CV_WORK_DIR
rm -rf "$work"
mkdir -p "$work"
stage=$work/stage/prefix
prefix=$work/moved/prefix

step "cmake --install $CV_BUILD_DIR --prefix <stage>, then moved to $prefix"
"$CV_CMAKE" --install "$CV_BUILD_DIR" --prefix "$stage" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "cmake --install failed"; }
mkdir -p "$(dirname "$prefix")"
mv "$stage" "$prefix"
if grep -rlF "$stage" "$prefix"; then
  fail "the installed files above hard-code the install prefix"
fi
libdir=$prefix/$CV_LIBDIR
incdir=$prefix/$CV_INCLUDEDIR
for f in "$libdir/libctxvars.so.$CV_VERSION" "$libdir/libctxvars.so.$CV_SOVERSION" "$libdir/libctxvars.so" \
  "$libdir/libctxvars.a" "$libdir/pkgconfig/ctxvars.pc" "$libdir/cmake/ctxvars/ctxvarsConfig.cmake" \
  "$libdir/cmake/ctxvars/ctxvarsConfigVersion.cmake" "$libdir/cmake/ctxvars/ctxvarsTargets.cmake"; do
  [ -e "$f" ] || fail "not installed: ${f#"$prefix"/}"
done
# Every public header is installed, unchanged.
shopt -s nullglob
headers=("$CV_HEADER_DIR"/*.h "$CV_HEADER_DIR"/*.hpp)
[ ${#headers[@]} -gt 0 ] || fail "no headers in $CV_HEADER_DIR"
for h in "${headers[@]}"; do
  cmp -s "$h" "$incdir/$(basename "$h")" || fail "header not installed (or differs): $(basename "$h")"
done
echo "installed headers: $(cd "$incdir" && ls | xargs)"
soname=$(readelf -d "$libdir/libctxvars.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libctxvars.so.$CV_SOVERSION" ] || fail "installed soname '$soname', expected libctxvars.so.$CV_SOVERSION"
echo "installed soname: $soname"

step "find_package(ctxvars $CV_VERSION) in tests/package/consumer"
cxx=OFF
if [ -e "$incdir/ctxvars.hpp" ]; then
  cxx=ON
else
  echo "no ctxvars.hpp among the public headers: C++ consumer not built"
fi
cbuild=$work/cmake-consumer
"$CV_CMAKE" -S "$CV_CONSUMER_DIR" -B "$cbuild" \
  -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE="${CV_BUILD_TYPE:-}" \
  -DCMAKE_C_COMPILER="$CV_CC" -DCMAKE_CXX_COMPILER="$CV_CXX" \
  -DCMAKE_C_FLAGS="${cflags[*]}" -DCMAKE_CXX_FLAGS="${cflags[*]}" \
  -DCMAKE_EXE_LINKER_FLAGS="${ldflags[*]}" \
  -DCONSUMER_EXPECT_VERSION="$CV_VERSION" -DCONSUMER_CXX=$cxx >"$work/consumer-configure.log" 2>&1 ||
  { cat "$work/consumer-configure.log"; fail "configuring the consumer failed"; }
grep -F -- "-- ctxvars " "$work/consumer-configure.log" || true
found=$(sed -n 's/^ctxvars_DIR:PATH=//p' "$cbuild/CMakeCache.txt")
[ "$found" = "$libdir/cmake/ctxvars" ] || fail "find_package used '$found', not the installed $libdir/cmake/ctxvars"
"$CV_CMAKE" --build "$cbuild" >"$work/consumer-build.log" 2>&1 ||
  { cat "$work/consumer-build.log"; fail "building the consumer failed"; }
expect_shared "$cbuild/consumer_shared"
expect_static "$cbuild/consumer_static"
run_consumer "$cbuild/consumer_shared"
run_consumer "$cbuild/consumer_static"
if [ $cxx = ON ]; then
  expect_shared "$cbuild/consumer_cxx"
  run_consumer "$cbuild/consumer_cxx"
fi

step "find_package version rule (SameMinorVersion)"
"$CV_CMAKE" -DVERSION_FILE="$libdir/cmake/ctxvars/ctxvarsConfigVersion.cmake" -DVERSION="$CV_VERSION" \
  -P "$(dirname "$0")/version_rule.cmake" || fail "ctxvarsConfigVersion.cmake does not follow the rule"

step "pkg-config ($CV_PKG_CONFIG)"
export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pc() { "$CV_PKG_CONFIG" "$@" ctxvars; }
[ "$(pc --modversion)" = "$CV_VERSION" ] || fail "pkg-config --modversion: $(pc --modversion)"
[ "$(cd "$(pc --variable=libdir)" && pwd -P)" = "$(cd "$libdir" && pwd -P)" ] ||
  fail "pkg-config libdir $(pc --variable=libdir) is not $libdir"
read -r -a pc_cflags <<<"$(pc --cflags)"
read -r -a pc_libs <<<"$(pc --libs)"
read -r -a pc_static_libs <<<"$(pc --static --libs)"
echo "--cflags --libs: ${pc_cflags[*]} ${pc_libs[*]}"
echo "--static --libs: ${pc_static_libs[*]}"
src=$CV_CONSUMER_DIR/consumer.c
std=(-std=c11 -Wall -Wextra -Werror)
"$CV_CC" "${cflags[@]}" "${std[@]}" -o "$work/pc_shared" "$src" "${pc_cflags[@]}" "${pc_libs[@]}" \
  -Wl,-rpath,"$(pc --variable=libdir)" "${ldflags[@]}"
expect_shared "$work/pc_shared"
run_consumer "$work/pc_shared"
# The package and its dependencies from their archives, the C library (and
# a sanitizer's runtime) shared: --static adds Libs.private and the
# Requires.private packages' libraries.
"$CV_CC" "${cflags[@]}" "${std[@]}" -o "$work/pc_static" "$src" "${pc_cflags[@]}" \
  -Wl,-Bstatic "${pc_static_libs[@]}" -Wl,-Bdynamic "${ldflags[@]}"
expect_static "$work/pc_static"
run_consumer "$work/pc_static"
# Fully static, with `cc -static`. Sanitizer runtimes cannot be linked into
# a fully static program, so sanitizer builds stop at the form above.
if [ -z "${CV_SANITIZE:-}" ]; then
  "$CV_CC" -static "${std[@]}" -o "$work/pc_fully_static" "$src" "${pc_cflags[@]}" "${pc_static_libs[@]}"
  [ -z "$(needed "$work/pc_fully_static")" ] || fail "pc_fully_static has shared dependencies"
  run_consumer "$work/pc_fully_static"
else
  echo "fully static (cc -static) link skipped: the $CV_SANITIZE sanitizer runtime cannot be linked statically"
fi

rm -rf "$work"
echo "OK"
