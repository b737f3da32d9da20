#!/usr/bin/env python3
"""Writes the seed corpus of the differential fuzzer (tests/fuzz/corpus).

Each seed is a scenario of API.md written with the encoders below, which
mirror the operation encoding documented at the top of fuzz_ops.c. The
seeds are also the regression test test_fuzz_replay, so each one is named
after what it exercises. Files named gen-* are this script's; others in the
directory (minimized fuzzer finds) are left alone.

    tests/fuzz/make_corpus.py [corpus-dir]
"""
import os
import sys

# Selectors: contexts 0-3 slot, 4 NULL, 5 current; variables 0-5 slot,
# 6 NULL; tokens 0-3 slot, 4 NULL.
CNULL, CUR = 4, 5
VNULL = 6
TNULL = 4
# Forced hashes of VAR_NEW (index into fuzz_ops.c's forced_hash table).
H0, H_BIT31, H_BIT30, H_LEVEL1, H_LEVEL0, H_TOP2 = range(6)


def SET(v, t, value):
    return [0, v + 7 * t, value]


def RESET(v, t):
    return [1, v + 7 * t]


def DISCARD(t):
    return [2, t]


def TOKEN(t):
    return [3, t]


def GET(v, fallback=9):
    return [4, v, fallback]


def NEW(s):
    return [5, s]


def COPY_CUR(s):
    return [6, s]


def COPY(s, src):
    return [7, s + 4 * src]


def DUP(s, src):
    return [8, s + 4 * src]


def RET_CUR(s):
    return [9, s]


def RELEASE(s):
    return [10, s]


def ENTER(c):
    return [11, c]


def EXIT(c):
    return [12, c]


def RUN(c, *body, null_fn=False):
    """cv_context_run(c) over the operations in body (at most 15)."""
    assert len(body) <= 15
    out = [13, c, len(body) | (0xF0 if null_fn else 0)]
    for op in body:
        out += op
    return out


def MAP(c, v):
    return [14, c, v]


def LEN(c):
    return [15, c]


def ITER(c):
    return [16, c]


def EQUAL(x, y):
    return [17, x + 6 * y]


def IT_START(i, c):
    return [18, i + 2 * c]


def IT_STEP(i, n=1):
    return [19, i + 2 * (n - 1)]


def IT_END(i):
    return [20, i]


def VAR_NEW(s, default=None, hooks=False, hash=None):
    """hash: None for the library's own, else an index of forced_hash."""
    b = (1 if default is not None else 0) | (2 if hooks else 0)
    b |= 0 if hash is None else (hash + 2) << 2
    return [21, s + 6 * (default or 0), b]


def VAR_REL(s):
    return [22, s]


def FAULT(k):
    """Fail allocation number k (1-8) of the next allocating operation."""
    return [23, k - 1]


def CHECK():
    return [24]


def seq(*ops):
    out = []
    for op in ops:
        out += op
    return bytes(out)


SEEDS = {}


def seed(name, *ops):
    data = seq(*ops)
    assert len(data) <= 512, name
    SEEDS[name] = data


# --- variables: set, get, defaults, reset --------------------------------
seed("set-get-reset",
     SET(0, 0, 5), GET(0), SET(0, 1, 6), GET(0), RESET(0, 1), GET(0), RESET(0, 0),
     GET(0), TOKEN(0), TOKEN(1), LEN(CUR))
seed("null-is-a-value",
     SET(0, 0, 0), GET(0), MAP(CUR, 0), LEN(CUR), SET(0, 1, 4), RESET(0, 1), GET(0),
     RESET(0, 0), GET(0), MAP(CUR, 0))
seed("defaults",
     GET(1), GET(3), GET(5), SET(1, 0, 2), GET(1, 11), SET(3, 1, 9), RESET(1, 0), GET(1),
     RESET(3, 1), GET(3, 12), MAP(CUR, 1), LEN(CUR))
seed("get-null-arguments",
     GET(VNULL, 3), SET(VNULL, 0, 2), TOKEN(0), RESET(VNULL, 0), RESET(0, TNULL),
     MAP(CNULL, 0), MAP(CUR, VNULL), LEN(CNULL), ITER(CNULL), EQUAL(CNULL, CUR),
     TOKEN(TNULL), DISCARD(TNULL), ENTER(CNULL), EXIT(CNULL), RUN(CNULL, SET(0, 0, 1)))

# --- tokens ---------------------------------------------------------------
seed("token-used",
     SET(0, 0, 1), RESET(0, 0), RESET(0, 0), TOKEN(0), SET(2, 1, 3), DISCARD(1),
     RESET(2, 1), TOKEN(1), DISCARD(1))
seed("token-other-var",
     SET(0, 0, 1), RESET(1, 0), RESET(2, 0), TOKEN(0), RESET(0, 0), GET(0))
seed("token-other-context",
     SET(0, 0, 1), NEW(0), ENTER(0), RESET(0, 0), SET(0, 1, 2), EXIT(0), RESET(0, 1),
     RESET(0, 0), ENTER(0), RESET(0, 1), EXIT(0), MAP(0, 0))
seed("token-check-order",
     # used beats var, var beats context
     SET(0, 0, 1), RESET(0, 0), NEW(0), ENTER(0), RESET(1, 0), EXIT(0),
     SET(0, 1, 2), ENTER(0), RESET(1, 1), RESET(0, 1), EXIT(0), RESET(0, 1))
seed("reset-any-order",
     SET(0, 0, 1), SET(0, 1, 2), SET(0, 2, 3), RESET(0, 0), GET(0), RESET(0, 2), GET(0),
     RESET(0, 1), GET(0), LEN(CUR), SET(1, 3, 4), SET(0, 0, 5), RESET(1, 3), RESET(0, 0))
seed("token-dead-context",
     NEW(0), ENTER(0), SET(0, 0, 4), EXIT(0), RELEASE(0), NEW(1), ENTER(1), RESET(0, 0),
     EXIT(1), RESET(0, 0), TOKEN(0), DISCARD(0))
seed("token-recreated-var",
     SET(0, 0, 1), VAR_REL(0), VAR_NEW(0), RESET(0, 0), TOKEN(0), ITER(CUR), LEN(CUR),
     SET(0, 1, 2), RESET(0, 1), DISCARD(0), ITER(CUR))
seed("token-slot-reuse",
     SET(4, 0, 1), SET(4, 0, 2), SET(5, 0, 3), TOKEN(0), RESET(5, 0), SET(4, 1, 4),
     SET(5, 2, 5), SET(4, 3, 6), RESET(4, 3), RESET(4, 1), RESET(5, 2), GET(4), GET(5))

# --- contexts: copy, enter, exit, run -------------------------------------
seed("copy-isolation",
     SET(0, TNULL, 1), COPY_CUR(0), ENTER(0), SET(0, TNULL, 2), GET(0), EXIT(0),
     GET(0), MAP(0, 0), LEN(0), EQUAL(0, CUR), COPY(1, 0), EQUAL(0, 1), ITER(1))
seed("run-sets-land-in-context",
     NEW(0), RUN(0, SET(0, 0, 3), SET(1, 1, 4), GET(0), LEN(CUR)), MAP(0, 0), MAP(0, 1),
     GET(0), LEN(0), RESET(0, 0), RUN(0, RESET(0, 0), RESET(1, 1)), LEN(0))
seed("run-leaves-entered",
     NEW(0), NEW(1), RUN(0, ENTER(1), SET(0, 0, 2)), GET(0), MAP(1, 0), ENTER(1),
     EXIT(1), RUN(1, NEW(2), ENTER(2), ENTER(0)), LEN(CUR))
seed("enter-busy",
     NEW(0), ENTER(0), ENTER(0), ENTER(CUR), DUP(1, 0), ENTER(1), RUN(1, SET(0, 0, 1)),
     EXIT(1), EXIT(0), ENTER(1), EXIT(CUR))
seed("exit-not-current",
     EXIT(CUR), NEW(0), NEW(1), ENTER(0), ENTER(1), EXIT(0), EXIT(1), EXIT(CUR),
     EXIT(CUR), RUN(0, EXIT(CUR), EXIT(0)))
seed("exit-below-run",
     NEW(0), ENTER(0), RUN(CNULL), NEW(1), RUN(1, EXIT(0), EXIT(1), EXIT(CUR), ENTER(0),
                                               NEW(2), ENTER(2), EXIT(CUR), EXIT(1)),
     EXIT(0))
seed("run-refused",
     NEW(0), RUN(0, SET(0, 0, 1), null_fn=True), RUN(CNULL, SET(0, 0, 1)),
     ENTER(0), RUN(0, SET(0, 1, 2)), EXIT(0), RUN(CUR, SET(0, 2, 3)), LEN(0))
seed("run-nested-deep",
     NEW(0), NEW(1), NEW(2), NEW(3),
     RUN(0, SET(0, TNULL, 1),
         RUN(1, SET(0, TNULL, 2),
             RUN(2, SET(0, TNULL, 3),
                 RUN(3, SET(0, 0, 4), GET(0), RUN(0, SET(1, TNULL, 5)), ENTER(1), ENTER(CUR),
                     ITER(CUR), EQUAL(CUR, 2), MAP(1, 0), RESET(0, 0), GET(0)),
                 GET(0)),
             GET(0))),
     CHECK())
seed("enter-many",
     *[op for i in range(12) for op in (NEW(i % 4), ENTER(i % 4), SET(0, TNULL, i % 16))],
     GET(0), LEN(CUR),
     *[EXIT(CUR) for _ in range(12)], GET(0), CHECK())
seed("release-while-entered",
     NEW(0), ENTER(0), SET(0, 0, 2), RELEASE(0), GET(0), EXIT(CUR), GET(0), RESET(0, 0),
     NEW(1), ENTER(1), RET_CUR(2), RELEASE(1), EXIT(2), ENTER(2), EXIT(CUR), RELEASE(2))
seed("retain-current-and-dup",
     RET_CUR(0), DUP(1, 0), ENTER(0), EXIT(1), SET(0, TNULL, 3), MAP(0, 0), MAP(1, 0),
     EQUAL(0, 1), RELEASE(0), LEN(1), DUP(1, 1), DUP(2, CUR), RELEASE(1), EQUAL(2, CUR))
seed("copy-current-in-run",
     NEW(0), SET(1, TNULL, 8),
     RUN(0, SET(0, TNULL, 1), COPY_CUR(1), SET(0, TNULL, 2), COPY(2, CUR), RET_CUR(3)),
     MAP(1, 0), MAP(2, 0), MAP(1, 1), EQUAL(0, 2), EQUAL(0, 3), CHECK())

# --- the map: collisions, deep paths, many variables -----------------------
seed("collision-node",
     SET(2, 0, 1), SET(3, 1, 2), GET(2), GET(3), MAP(CUR, 2), RESET(2, 0), GET(3),
     SET(2, 2, 4), RESET(3, 1), GET(2), RESET(2, 2), LEN(CUR), ITER(CUR))
seed("collision-three-ways",
     VAR_NEW(0, hash=H0), VAR_NEW(1, default=6, hash=H0), SET(0, 0, 1), SET(1, 1, 2),
     SET(2, 2, 3), SET(3, 3, 4), COPY_CUR(0), RESET(1, 1), RESET(2, 2), ITER(CUR),
     ITER(0), EQUAL(0, CUR), RESET(0, 0), RESET(3, 3), LEN(CUR))
seed("deep-paths",
     VAR_NEW(0, hash=H_BIT30), VAR_NEW(1, hash=H_TOP2), SET(2, TNULL, 1), SET(4, TNULL, 2),
     SET(0, TNULL, 3), SET(1, TNULL, 4), COPY_CUR(0), ITER(CUR), SET(4, 0, 5), MAP(0, 4),
     RESET(4, 0), EQUAL(0, CUR), VAR_NEW(5, hash=H_LEVEL1), VAR_NEW(3, hash=H_LEVEL0),
     SET(5, TNULL, 6), SET(3, TNULL, 7), ITER(CUR), CHECK())
seed("many-variables",
     *[op for i in range(30) for op in (VAR_NEW(i % 6, hash=(None if i % 3 else i % 6)),
                                        SET(i % 6, TNULL, i % 16))],
     LEN(CUR), COPY_CUR(0), ITER(CUR), EQUAL(0, CUR), CHECK())
seed("seventy-live-variables",
     # more live variables than one lookup cache block holds (64 slots)
     *[op for i in range(70) for op in (VAR_NEW(i % 6), SET(i % 6, TNULL, i % 16))],
     GET(0), GET(5), LEN(CUR), COPY_CUR(0), EQUAL(0, CUR), ITER(0))
seed("released-variables-stay",
     SET(0, TNULL, 1), SET(4, 0, 2), VAR_REL(0), VAR_REL(4), LEN(CUR), ITER(CUR),
     COPY_CUR(0), VAR_NEW(0), VAR_NEW(4, hooks=True), SET(0, TNULL, 3), SET(4, 1, 4),
     ITER(CUR), EQUAL(0, CUR), DISCARD(0), CHECK())
seed("remove-to-empty",
     SET(0, 0, 1), SET(2, 1, 2), SET(4, 2, 3), RESET(4, 2), RESET(0, 0), RESET(2, 1),
     LEN(CUR), NEW(0), EQUAL(0, CUR), ITER(CUR))

# --- mapping reads, equality, iteration ------------------------------------
seed("foreign-reads-then-writes",
     NEW(0), MAP(0, 0), LEN(0), ENTER(0), SET(0, 0, 1), SET(1, 1, 2), MAP(0, 0), EXIT(0),
     MAP(0, 0), ITER(0), ENTER(0), RESET(0, 0), EXIT(0), ITER(0), EQUAL(0, CUR))
seed("in-place-then-shared",
     *[SET(i % 6, TNULL, i) for i in range(12)], COPY_CUR(0),
     *[SET(i % 6, TNULL, 15 - i) for i in range(6)], EQUAL(0, CUR), ITER(0), ITER(CUR),
     COPY(1, 0), ENTER(1), SET(0, TNULL, 0), EXIT(1), EQUAL(0, 1), CHECK())
seed("path-copy-many",
     # c1 read from outside first: every later set copies paths (no in place)
     NEW(0), LEN(0),
     RUN(0, *[op for i in range(5) for op in (VAR_NEW(i % 3 + 3), SET(i % 3 + 3, TNULL, i))]),
     RUN(0, *[SET(v, v % 4, 9) for v in range(6)], *[RESET(v, v % 4) for v in (3, 1, 0, 2)]),
     RUN(0, *[SET(v, TNULL, 10 + v) for v in range(6)], ITER(CUR)),
     ITER(0), EQUAL(0, CUR), COPY(1, 0), EQUAL(0, 1), CHECK())
seed("path-copy-collisions",
     NEW(0), MAP(0, 2),
     RUN(0, VAR_NEW(0, hash=H0), VAR_NEW(1, hash=H_BIT31), SET(0, 0, 1), SET(1, 1, 2),
         SET(2, 2, 3), SET(3, 3, 4), SET(4, TNULL, 5), SET(5, TNULL, 6), COPY_CUR(1),
         RESET(2, 2), RESET(0, 0), RESET(1, 1), RESET(3, 3), ITER(CUR), ITER(1)),
     EQUAL(0, 1), CHECK())
seed("path-copy-deep-removals",
     NEW(0), ITER(0),
     RUN(0, VAR_NEW(0, hash=H_BIT30), VAR_NEW(1, hash=H_TOP2), VAR_NEW(5, hash=H_LEVEL1),
         SET(0, 0, 1), SET(1, 1, 2), SET(2, 2, 3), SET(4, 3, 4), SET(5, TNULL, 5),
         IT_START(0, CUR), RESET(4, 3), RESET(2, 2), RESET(0, 0), RESET(1, 1), IT_STEP(0, 4),
         IT_STEP(0, 4)),
     ITER(0), CHECK())
seed("path-copy-replace-values",
     NEW(0), EQUAL(0, CUR),
     RUN(0, *[SET(v, TNULL, 1) for v in range(6)], *[SET(v, TNULL, 2) for v in range(6)],
         SET(0, TNULL, 2), SET(2, TNULL, 0)),
     RUN(0, *[SET(v, v % 4, 3) for v in (5, 4, 3, 2)], *[RESET(v, v % 4) for v in (2, 3, 4, 5)]),
     CHECK())
seed("copy-mode-lowers-after-quiet-updates",
     # a foreign read raises copying mode; 64 quiet updates lower it again;
     # the copy taken meanwhile must keep its values through later updates
     NEW(0), LEN(0), ENTER(0), SET(0, TNULL, 1), SET(2, TNULL, 2), EXIT(0), COPY(1, 0),
     ENTER(0), *[SET(i % 6, TNULL, i % 16) for i in range(68)], IT_START(0, CUR),
     SET(3, TNULL, 15), SET(4, 0, 14), EXIT(0), EQUAL(0, 1), ITER(1), MAP(1, 0), COPY(2, 0),
     ENTER(0), RESET(4, 0), SET(0, TNULL, 0), EXIT(0), IT_STEP(0, 4), IT_STEP(0, 4), ITER(2),
     CHECK())
seed("equality",
     NEW(0), NEW(1), EQUAL(0, 1), RUN(0, SET(0, TNULL, 1)), EQUAL(0, 1),
     RUN(1, SET(0, TNULL, 1)), EQUAL(0, 1), RUN(1, SET(0, TNULL, 0)), EQUAL(0, 1),
     RUN(0, SET(0, TNULL, 0), SET(1, TNULL, 1)), EQUAL(0, 1), EQUAL(0, 0), EQUAL(CUR, CUR))
seed("iterator-snapshot",
     SET(0, TNULL, 1), SET(2, TNULL, 2), IT_START(0, CUR), SET(0, TNULL, 3),
     SET(4, TNULL, 4), IT_STEP(0), RESET(VNULL, 0), SET(3, TNULL, 5), IT_STEP(0, 4),
     IT_STEP(0), IT_END(0), ITER(CUR))
seed("iterators-two",
     NEW(0), RUN(0, SET(0, TNULL, 1), SET(5, TNULL, 2)), IT_START(0, 0), IT_START(1, CUR),
     ENTER(0), SET(0, 0, 7), IT_STEP(0, 2), RESET(0, 0), SET(3, TNULL, 8), EXIT(0),
     IT_STEP(1, 4), RELEASE(0), IT_STEP(0, 4), IT_START(0, CNULL), IT_STEP(0, 2))
seed("iterator-outlives",
     NEW(0), RUN(0, SET(4, TNULL, 3), SET(0, TNULL, 4)), IT_START(1, 0), RELEASE(0),
     VAR_REL(4), VAR_REL(0), IT_STEP(1, 2), IT_STEP(1, 2))

# --- hooks -----------------------------------------------------------------
seed("hooks-values",
     SET(4, 0, 1), SET(4, 1, 2), SET(5, 2, 0), COPY_CUR(0), SET(4, TNULL, 3), RESET(4, 1),
     DISCARD(0), RESET(5, 2), CHECK(), RELEASE(0), CHECK())
seed("hooks-tokens-outlive-var",
     SET(4, 0, 5), SET(4, 1, 6), VAR_REL(4), TOKEN(0), TOKEN(1), VAR_NEW(4, hooks=True),
     SET(4, 2, 7), CHECK(), DISCARD(1), DISCARD(0), RESET(4, 2), CHECK())

# --- allocation failures ---------------------------------------------------
seed("fault-set",
     FAULT(1), SET(0, 0, 1), TOKEN(0), GET(0), FAULT(1), SET(4, 1, 2), TOKEN(1),
     SET(0, 2, 3), FAULT(2), SET(2, 3, 4), FAULT(1), RESET(0, 2), RESET(0, 2), CHECK())
seed("fault-contexts",
     FAULT(1), NEW(0), FAULT(1), COPY_CUR(1), FAULT(1), COPY(2, CUR), NEW(0), FAULT(1),
     ENTER(0), FAULT(1), RUN(0, SET(0, TNULL, 1)), FAULT(2), RUN(0, SET(0, TNULL, 2)),
     LEN(0), FAULT(1), VAR_NEW(0), FAULT(2), VAR_NEW(0), FAULT(3), VAR_NEW(1), CHECK())
seed("fault-shared-paths",
     SET(2, TNULL, 1), SET(3, TNULL, 2), SET(4, TNULL, 3), COPY_CUR(0),
     FAULT(1), SET(3, 0, 4), FAULT(2), SET(3, 0, 5), FAULT(3), SET(4, 1, 6),
     MAP(0, 3), FAULT(1), RESET(3, 0), FAULT(1), RESET(4, 1), EQUAL(0, CUR), CHECK())
seed("fault-enter-deep",
     # the thread's stack (base, root, 6 entered) is full at 8 the first time
     *[op for i in range(6) for op in (NEW(i % 4), ENTER(i % 4))], NEW(0), FAULT(1),
     ENTER(0), ENTER(0), SET(0, TNULL, 1), NEW(1), ENTER(1), *[EXIT(CUR) for _ in range(9)])

# Every allocation of an update in turn, on maps that are shared (a copy
# holds the root, so sets copy paths) and on maps owned alone (in place).
SHAPES = {
    "flat": (SET(0, TNULL, 1), SET(1, TNULL, 2), SET(5, TNULL, 3)),
    "collision": (SET(2, TNULL, 1), SET(3, TNULL, 2)),
    "deep": (SET(2, TNULL, 1), SET(4, TNULL, 2), SET(0, TNULL, 3)),
}
for shape, setup in SHAPES.items():
    for shared in (True, False):
        ops = list(setup)
        for k in range(1, 7):
            if shared:
                ops.append(COPY_CUR(k % 2))
            ops += [FAULT(k), SET(k % 6, k % 4, k), FAULT(k), RESET(k % 6, k % 4)]
        ops.append(CHECK())
        seed(f"fault-sweep-{shape}-{'shared' if shared else 'owned'}", *ops)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.startswith("gen-") and name[4:] not in SEEDS:
            os.remove(os.path.join(out, name))
    for name, data in SEEDS.items():
        with open(os.path.join(out, "gen-" + name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
