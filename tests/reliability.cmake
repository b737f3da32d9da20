# Reliability suites: allocation-failure injection, concurrency stress,
# thread exit. Stress and thread-exit counts scale with arguments and
# environment variables (see each file's top comment); ctest runs the
# short defaults.
cv_add_test(test_alloc_fail test_alloc_fail.c)
cv_add_test(test_stress test_stress.c)
cv_add_test(test_thread_exit test_thread_exit.c)
# The same threads with a counting allocator: live bytes must come back
# exactly, where RSS is coarse.
add_test(NAME test_thread_exit_exact COMMAND test_thread_exit --exact)
set_tests_properties(test_thread_exit_exact PROPERTIES TIMEOUT 300)

# Not a test: tools/soak.sh runs it for minutes and reads its output.
add_executable(cv_soak ${PROJECT_SOURCE_DIR}/tools/soak.c)
target_link_libraries(cv_soak PRIVATE ctxvars_static Threads::Threads)
target_compile_options(cv_soak PRIVATE -Wall -Wextra -Werror)
