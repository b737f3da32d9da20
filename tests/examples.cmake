# The example programs under tools/examples, built, run and checked.
# Each test runs its program through tests/examples_check.cmake, which
# checks the exit status and every expected log line.
pkg_check_modules(LIBUV IMPORTED_TARGET libuv)
if(NOT LIBUV_FOUND)
  message(FATAL_ERROR "libuv not found: install the Debian package 'libuv1-dev'")
endif()

# The examples use only the public API, so they link the shared library,
# as an application would.
function(cv_add_example name requests)
  add_executable(${name} ${PROJECT_SOURCE_DIR}/tools/examples/${name}.c)
  target_link_libraries(${name} PRIVATE ctxvars Threads::Threads ${ARGN})
  target_compile_options(${name} PRIVATE -Wall -Wextra -Werror)
  add_test(NAME example_${name}
    COMMAND ${CMAKE_COMMAND} -DPROGRAM=$<TARGET_FILE:${name}> -DEXAMPLE=${name}
            -DREQUESTS=${requests} -P ${CMAKE_CURRENT_SOURCE_DIR}/examples_check.cmake)
  set_tests_properties(example_${name} PROPERTIES TIMEOUT 60)
endfunction()

cv_add_example(pool_server 40)
cv_add_example(uv_server 16 PkgConfig::LIBUV)
