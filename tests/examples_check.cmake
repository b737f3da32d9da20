# Runs one example program of tools/examples and checks its output:
#   cmake -DPROGRAM=<path> -DEXAMPLE=pool_server|uv_server -DREQUESTS=<n> -P examples_check.cmake
# The program must exit 0 and print, for every request req-1 .. req-<n>,
# exactly one line per step with that request's id and user (user i is
# alice, bob, carol, dave in turn), pool_server also the cache refresh's
# line without an id, and nothing else. For uv_server the requests must
# also finish in another order than they were accepted.
foreach(arg PROGRAM EXAMPLE REQUESTS)
  if(NOT DEFINED ${arg})
    message(FATAL_ERROR "examples_check.cmake: -D${arg}=... is required")
  endif()
endforeach()

# CV_EXAMPLE_LAUNCHER (environment) runs the program under a tool:
# tools/valgrind.sh sets it to valgrind and its options.
separate_arguments(launcher UNIX_COMMAND "$ENV{CV_EXAMPLE_LAUNCHER}")
execute_process(COMMAND ${launcher} ${PROGRAM} ${REQUESTS}
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 300)
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "${EXAMPLE} ${REQUESTS} exited with '${rc}'\nstderr:\n${err}\nstdout:\n${out}")
endif()

if(EXAMPLE STREQUAL "pool_server")
  set(steps query_db render_page send_receipt)
  set(extra_lines "\\[-\\] refresh_cache: no request id")
elseif(EXAMPLE STREQUAL "uv_server")
  set(steps accept auth query_db render respond done)
  set(extra_lines "")
else()
  message(FATAL_ERROR "examples_check.cmake: unknown EXAMPLE '${EXAMPLE}'")
endif()

# Each expected line exactly once; with the total line count below, no
# other line can be there.
set(users alice bob carol dave)
set(problems "")
set(expected_count 0)
foreach(i RANGE 1 ${REQUESTS})
  math(EXPR u "(${i} - 1) % 4")
  list(GET users ${u} user)
  foreach(step IN LISTS steps)
    list(APPEND patterns "\\[req-${i}\\] ${step}: user=${user}")
  endforeach()
endforeach()
list(APPEND patterns ${extra_lines})
foreach(pattern IN LISTS patterns)
  string(REGEX MATCHALL "${pattern}\n" found "${out}")
  list(LENGTH found n)
  if(NOT n EQUAL 1)
    string(APPEND problems "  ${n} lines match '${pattern}'\n")
  endif()
  math(EXPR expected_count "${expected_count} + 1")
endforeach()
string(REGEX REPLACE "[^\n]" "" newlines "${out}")
string(LENGTH "${newlines}" line_count)
if(NOT line_count EQUAL expected_count)
  string(APPEND problems "  ${line_count} lines, expected ${expected_count}\n")
endif()

# Interleaving: the ids in the order their requests were accepted, and in
# the order they were done, must differ.
if(EXAMPLE STREQUAL "uv_server")
  string(REGEX MATCHALL "\\[req-[0-9]+\\] accept:" accepted "${out}")
  string(REGEX MATCHALL "\\[req-[0-9]+\\] done:" finished "${out}")
  string(REGEX REPLACE " accept:" "" accepted "${accepted}")
  string(REGEX REPLACE " done:" "" finished "${finished}")
  if(accepted STREQUAL finished)
    string(APPEND problems "  requests finished in the order they were accepted: ${finished}\n")
  endif()
endif()

if(problems)
  message(FATAL_ERROR "${EXAMPLE} output is wrong:\n${problems}stdout:\n${out}")
endif()
list(LENGTH patterns checked)
message(STATUS "${EXAMPLE}: all ${checked} expected lines, each once")
string(STRIP "${err}" err)
if(err)
  message(STATUS "${EXAMPLE} stderr: ${err}")
endif()
