# The C++ header (ctxvars.hpp) and its suite. -pedantic on top of the
# suites' warnings: the header must build cleanly in strict C++17.
cv_add_test(test_cpp test_cpp.cc)
target_compile_options(test_cpp PRIVATE -pedantic)
