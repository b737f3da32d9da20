# The differential fuzzer (tests/fuzz/): ctxvars against a plain-array
# model of API.md.
#
# Always: test_fuzz_replay replays the committed seed corpus through the
# same target with whatever compiler and sanitizer this build uses.
# With CV_BUILD_FUZZ=ON (clang only): the libFuzzer binary cv_fuzz, built
# with ASan+UBSan over its own copy of the library, compiled with coverage
# instrumentation (tools/fuzz.sh runs it).
cv_add_test(test_fuzz_replay test_fuzz_replay.c fuzz/fuzz_ops.c)
target_compile_definitions(test_fuzz_replay PRIVATE
  CV_FUZZ_CORPUS_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus")

if(CV_BUILD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "CV_BUILD_FUZZ needs clang (libFuzzer), not ${CMAKE_C_COMPILER_ID}: "
      "configure with -DCMAKE_C_COMPILER=clang (and install libclang-rt-14-dev)")
  endif()
  if(CV_SANITIZE STREQUAL "thread")
    message(FATAL_ERROR "CV_BUILD_FUZZ uses ASan+UBSan: it cannot be combined with CV_SANITIZE=thread")
  endif()

  # The library's own targets stay as they are (other tests link them); the
  # fuzzer gets a copy of the same sources with coverage instrumentation,
  # so that libFuzzer is guided by the library's branches too.
  get_target_property(cv_fuzz_lib_dir ctxvars_objects SOURCE_DIR)
  get_target_property(cv_fuzz_lib_relative ctxvars_objects SOURCES)
  set(cv_fuzz_lib_sources)
  foreach(src IN LISTS cv_fuzz_lib_relative)
    if(IS_ABSOLUTE "${src}")
      list(APPEND cv_fuzz_lib_sources "${src}")
    else()
      list(APPEND cv_fuzz_lib_sources "${cv_fuzz_lib_dir}/${src}")
    endif()
  endforeach()

  set(cv_fuzz_sanitize -fsanitize=address,undefined -fno-sanitize-recover=all
    -fno-omit-frame-pointer)
  add_library(cv_fuzz_lib STATIC ${cv_fuzz_lib_sources})
  target_include_directories(cv_fuzz_lib PUBLIC ${cv_fuzz_lib_dir}/include ${cv_fuzz_lib_dir})
  target_link_libraries(cv_fuzz_lib PUBLIC PkgConfig::URCU_BP Threads::Threads)
  target_compile_options(cv_fuzz_lib PRIVATE -Wall -Wextra -Werror
    -fsanitize=fuzzer-no-link ${cv_fuzz_sanitize})

  add_executable(cv_fuzz fuzz/fuzz_ops.c)
  target_include_directories(cv_fuzz PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_options(cv_fuzz PRIVATE -Wall -Wextra -Werror -fsanitize=fuzzer ${cv_fuzz_sanitize})
  target_link_options(cv_fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(cv_fuzz PRIVATE cv_fuzz_lib)
endif()
