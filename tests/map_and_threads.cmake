# Map and thread suites: the HAMT against a model, real threads, the
# inline lookup cache (built twice: inline and with CV_NO_INLINE), fork.
cv_add_test(test_map test_map.c)
# The map's functions (cvi_hamt_*) are internal, local in the static
# library: this suite links the library's objects themselves.
target_link_libraries(test_map PRIVATE ctxvars_objects)
cv_add_test(test_threads test_threads.c)
# The same suite over an allocator that counts live bytes and each thread's
# allocations: exact leak and no-allocation checks without a sanitizer.
cv_add_test(test_threads_counted test_threads.c)
target_compile_definitions(test_threads_counted PRIVATE CV_TEST_COUNTING_ALLOCATOR)
cv_add_test(test_cache test_cache.c)
# The same checks with the header's inline get compiled out.
cv_add_test(test_cache_noinline test_cache.c)
target_compile_definitions(test_cache_noinline PRIVATE CV_NO_INLINE)
cv_add_test(test_fork test_fork.c)
# Spread reference counts: copies of one base context from many threads.
cv_add_test(test_spread test_spread.c)
