#!/usr/bin/env bash
# The API reference: HTML from the public headers (lib/include/ctxvars.h and
# ctxvars.hpp) into build-docs/html with doxygen, configured by
# tools/Doxyfile. Installs doxygen if it is missing. Any doxygen warning
# (a malformed documentation comment, an unknown command, a @param naming
# no parameter) fails the command.
#   tools/docs.sh          then open build-docs/html/index.html
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/install-deps.sh" doxygen
cd "$root"
version=$(sed -n 's/^project(ctxvars VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || { echo "no project version in CMakeLists.txt" >&2; exit 1; }
out=build-docs
rm -rf "$out/html"
mkdir -p "$out"
echo "doxygen $(doxygen --version): API reference of ctxvars $version"
if ! CV_VERSION=$version CV_DOCS_OUT=$out doxygen tools/Doxyfile; then
  echo "FAIL: doxygen reported warnings (above)" >&2
  exit 1
fi
echo "API reference: $out/html/index.html"
