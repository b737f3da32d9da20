#!/usr/bin/env bash
# The shared library's ABI surface: its soname and file name follow the
# versioning rule of lib/CMakeLists.txt, and every dynamic symbol it
# defines is public API: starts with cv_ and is declared CV_EXPORT in a
# public header. The static library puts only cv_ names in the global
# namespace of a program that links it.
#   check_symbols.sh <libctxvars.so.X.Y.Z> <expected soname> <include dir> <libctxvars.a>
set -euo pipefail
lib=$1 soname=$2 include_dir=$3 archive=$4
status=0
fail() { echo "FAIL: $*"; status=1; }

actual_soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
echo "soname: ${actual_soname:-<none>}"
[ "$actual_soname" = "$soname" ] || fail "soname is '${actual_soname:-<none>}', expected '$soname'"
# The linker name and the soname link sit next to the real file.
dir=$(dirname "$lib")
for link in libctxvars.so "$soname"; do
  [ "$(readlink -f "$dir/$link")" = "$(readlink -f "$lib")" ] || fail "$dir/$link does not resolve to $lib"
done

mapfile -t symbols < <(nm -D --defined-only "$lib" | awk '{print $NF}' | sort -u)
echo "dynamic symbols defined: ${#symbols[@]}"
[ ${#symbols[@]} -gt 0 ] || fail "nm -D found no defined symbols"
offenders=()
for s in "${symbols[@]}"; do
  [[ $s == cv_* ]] || offenders+=("$s")
done
if [ ${#offenders[@]} -gt 0 ]; then
  fail "exported symbols without the cv_ prefix (give them hidden visibility or a cv_ name):"
  printf '  %s\n' "${offenders[@]}"
fi

# What the public headers declare CV_EXPORT: the last cv_ name before the
# parameter list, or on the line for the TLS variable.
mapfile -t declared < <(cat "$include_dir"/*.h "$include_dir"/*.hpp 2>/dev/null |
  grep -E '^[[:space:]]*CV_EXPORT[[:space:]]' | sed 's/(.*//' |
  awk '{ name = ""; for (i = 1; i <= NF; i++) if ($i ~ /^\**cv_[A-Za-z0-9_]+/) { name = $i; sub(/^\**/, "", name); sub(/[^A-Za-z0-9_].*/, "", name) } if (name != "") print name }' |
  sort -u)
echo "declared CV_EXPORT in $include_dir: ${#declared[@]}"
undeclared=$(comm -23 <(printf '%s\n' "${symbols[@]}") <(printf '%s\n' "${declared[@]}"))
if [ -n "$undeclared" ]; then
  fail "exported but declared CV_EXPORT in no public header:"
  sed 's/^/  /' <<<"$undeclared"
fi
# Not a failure: the declaration may land before its implementation, and
# then the program that calls it fails to link, which its own test shows.
missing=$(comm -13 <(printf '%s\n' "${symbols[@]}") <(printf '%s\n' "${declared[@]}"))
if [ -n "$missing" ]; then
  echo "NOTE: declared CV_EXPORT but not defined by $(basename "$lib"):"
  sed 's/^/  /' <<<"$missing"
fi

# The inline cv_get reads this thread-local variable directly.
readelf --dyn-syms -W "$lib" | awk '$NF == "cv_private_lookup_state" && $4 == "TLS" && $7 != "UND" {found = 1} END {exit !found}' ||
  fail "cv_private_lookup_state is not an exported TLS symbol"

mapfile -t globals < <(nm -g --defined-only "$archive" | awk 'NF >= 3 {print $NF}' | sort -u)
echo "global symbols defined by $(basename "$archive"): ${#globals[@]}"
[ ${#globals[@]} -gt 0 ] || fail "nm -g found no defined symbols in $archive"
for s in "${globals[@]}"; do
  [[ $s == cv_* ]] || fail "the static library defines the global symbol $s (hidden symbols must be local there)"
done

[ $status -eq 0 ] && echo "OK"
exit $status
