# The installed package: exported symbols, soname, consumers through find_package and pkg-config.
# Both tests are shell scripts under tests/package (bash, readelf and nm
# from binutils).

# The soname (libctxvars.so.<CV_SOVERSION>, see lib/CMakeLists.txt) and the
# dynamic symbol table of the shared library: only cv_ names, each declared
# CV_EXPORT in a public header. The static library's global symbols: only
# cv_ names too.
add_test(NAME package_symbols
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/package/check_symbols.sh
    $<TARGET_FILE:ctxvars> libctxvars.so.${CV_SOVERSION} ${PROJECT_SOURCE_DIR}/lib/include
    $<TARGET_FILE:ctxvars_static>)

# `cmake --install` of this build tree into a prefix under the build
# directory, then tests/package/consumer built against it through
# find_package and pkg-config, and run. The consumer uses this build's
# compilers and the flags the whole build compiles and links with: in the
# ASan+UBSan and TSan builds those are the sanitizer options, which a
# program linking the sanitized library needs too (its runtime lives in the
# executable). The only thing sanitizer builds skip is the fully static
# (`cc -static`) link: sanitizer runtimes cannot be linked statically.
get_property(cv_package_cflags DIRECTORY PROPERTY COMPILE_OPTIONS)
get_property(cv_package_ldflags DIRECTORY PROPERTY LINK_OPTIONS)
list(JOIN cv_package_cflags " " cv_package_cflags)
list(JOIN cv_package_ldflags " " cv_package_ldflags)
set(cv_package_env
  CV_BUILD_DIR=${PROJECT_BINARY_DIR}
  CV_WORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/package-work
  CV_CONSUMER_DIR=${CMAKE_CURRENT_SOURCE_DIR}/package/consumer
  CV_HEADER_DIR=${PROJECT_SOURCE_DIR}/lib/include
  CV_CMAKE=${CMAKE_COMMAND}
  CV_PKG_CONFIG=${PKG_CONFIG_EXECUTABLE}
  CV_CC=${CMAKE_C_COMPILER}
  CV_CXX=${CMAKE_CXX_COMPILER}
  CV_BUILD_TYPE=${CMAKE_BUILD_TYPE}
  CV_LIBDIR=${CMAKE_INSTALL_LIBDIR}
  CV_INCLUDEDIR=${CMAKE_INSTALL_INCLUDEDIR}
  CV_VERSION=${PROJECT_VERSION}
  CV_SOVERSION=${CV_SOVERSION}
  CV_SANITIZE=${CV_SANITIZE}
  CV_CFLAGS=${cv_package_cflags}
  CV_LDFLAGS=${cv_package_ldflags})
add_test(NAME package_consumers
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/package/check_package.sh)
set_tests_properties(package_consumers PROPERTIES TIMEOUT 300 ENVIRONMENT "${cv_package_env}")

# The shared library loaded with dlopen() by a program that does not link
# it, with a thread that started before the dlopen().
add_executable(test_dlopen test_dlopen.c)
target_link_libraries(test_dlopen PRIVATE PkgConfig::CMOCKA Threads::Threads ${CMAKE_DL_LIBS})
target_include_directories(test_dlopen PRIVATE ${PROJECT_SOURCE_DIR}/lib/include)
target_compile_options(test_dlopen PRIVATE -Wall -Wextra -Werror)
add_dependencies(test_dlopen ctxvars)
add_test(NAME test_dlopen COMMAND test_dlopen $<TARGET_FILE:ctxvars>)
set_tests_properties(test_dlopen PROPERTIES TIMEOUT 60)
