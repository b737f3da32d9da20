/*
 * Replays the committed seed corpus of the differential fuzzer through its
 * target (tests/fuzz/fuzz_ops.c), so that every build, with any compiler
 * and sanitizer, runs the corpus as a regression test. A mismatch between
 * the library and the model aborts inside the target with a description
 * of the step on stderr.
 *
 *   test_fuzz_replay [dir-or-file ...]   default: CV_FUZZ_CORPUS_DIR
 *
 * CV_FUZZ_TRACE=1 prints the decoded operations of every input.
 */
#define _POSIX_C_SOURCE 200809L
#include "fuzz/fuzz_ops.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#ifndef CV_FUZZ_CORPUS_DIR
#error "CV_FUZZ_CORPUS_DIR must name the seed corpus directory"
#endif

/* The corpus holds a few dozen files; fewer means it went missing. */
#define MIN_CORPUS_FILES 20

static int arg_count;
static char **args;

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size >= 0);
    rewind(f);
    /* Exactly the input's size, so that ASan catches a read past its end. */
    uint8_t *data = malloc(size ? (size_t)size : 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    print_message("replay %s (%ld bytes)\n", path, size);
    assert_int_equal(LLVMFuzzerTestOneInput(data, (size_t)size), 0);
    free(data);
    /* Every value reference and block the input made is released. */
    cv_fuzz_settle_and_check();
}

/* Replays a file, or every regular file of a directory in name order. */
static size_t replay_path(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    if (!S_ISDIR(st.st_mode)) {
        replay_file(path);
        return 1;
    }
    DIR *dir = opendir(path);
    assert_non_null(dir);
    char **names = NULL;
    size_t count = 0, capacity = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 64;
            names = realloc(names, capacity * sizeof(*names));
            assert_non_null(names);
        }
        size_t len = strlen(path) + strlen(entry->d_name) + 2;
        names[count] = malloc(len);
        assert_non_null(names[count]);
        snprintf(names[count], len, "%s/%s", path, entry->d_name);
        count++;
    }
    closedir(dir);
    qsort(names, count, sizeof(*names), compare_names);
    size_t replayed = 0;
    for (size_t i = 0; i < count; i++) {
        struct stat file;
        if (stat(names[i], &file) == 0 && S_ISREG(file.st_mode)) {
            replay_file(names[i]);
            replayed++;
        }
        free(names[i]);
    }
    free(names);
    return replayed;
}

static void test_replay_corpus(void **unused)
{
    (void)unused;
    if (arg_count > 0) {
        for (int i = 0; i < arg_count; i++)
            replay_path(args[i]);
        return;
    }
    size_t replayed = replay_path(CV_FUZZ_CORPUS_DIR);
    print_message("replayed %zu corpus files from %s\n", replayed, CV_FUZZ_CORPUS_DIR);
    assert_true(replayed >= MIN_CORPUS_FILES);
}

/* Inputs the corpus may not hold: empty, one byte of every opcode, and
 * every opcode with all operand bytes 0xff. */
static void test_edge_inputs(void **unused)
{
    (void)unused;
    if (arg_count > 0)
        return; /* replaying what the command line named, nothing else */
    assert_int_equal(LLVMFuzzerTestOneInput((const uint8_t *)"", 0), 0);
    for (int op = 0; op < 256; op++) {
        uint8_t one = (uint8_t)op;
        assert_int_equal(LLVMFuzzerTestOneInput(&one, 1), 0);
        uint8_t high[4] = {(uint8_t)op, 0xff, 0xff, 0xff};
        assert_int_equal(LLVMFuzzerTestOneInput(high, sizeof(high)), 0);
    }
    cv_fuzz_settle_and_check();
}

int main(int argc, char **argv)
{
    arg_count = argc - 1;
    args = argv + 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_corpus),
        cmocka_unit_test(test_edge_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
