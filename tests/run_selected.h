/*
 * Runs a suite's tests, or the ones the environment selects:
 * CV_TEST_FILTER and CV_TEST_SKIP hold comma-separated globs over test
 * names, to replay one test or to step around a known failure. Include
 * after <cmocka.h>, in a file that asks for POSIX (strtok_r, fnmatch).
 */
#ifndef CV_TESTS_RUN_SELECTED_H
#define CV_TESTS_RUN_SELECTED_H

#include <fnmatch.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline bool cv_test_matches_any(const char *patterns, const char *name)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", patterns);
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (fnmatch(p, name, 0) == 0)
            return true;
    }
    return false;
}

static inline int cv_test_run_selected(const char *group, struct CMUnitTest *tests, size_t n)
{
    const char *only = getenv("CV_TEST_FILTER"), *skip = getenv("CV_TEST_SKIP");
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if ((only && !cv_test_matches_any(only, tests[i].name)) ||
            (skip && cv_test_matches_any(skip, tests[i].name)))
            continue;
        tests[kept++] = tests[i];
    }
    return _cmocka_run_group_tests(group, tests, kept, NULL, NULL);
}

#endif
