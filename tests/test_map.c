/*
 * The persistent map behind contexts, checked against a plain model.
 *
 * Part one drives the HAMT of lib/hamt.h directly, with keys whose hashes
 * the test chooses, so that every node kind, every depth and every collapse
 * rule is reached on purpose; its ops count references so that a leak or a
 * double release of a key or value shows up even without a sanitizer.
 * Part two goes through the public mapping API: random operations against a
 * model, 100,000 variables, forced collisions (cv_testing_set_var_hash),
 * equality and copies.
 *
 * The seed comes from CV_TEST_SEED when set, so that a failure found by a
 * random run can be replayed.
 */
#define _GNU_SOURCE /* strtok_r in -std=c11 */
#include <ctxvars.h>

#include "context.h"
#include "hamt.h"
#include "testing.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "run_selected.h"

#define GROUP_NAME "test_map"
#define VAL(x) ((void *)(uintptr_t)(x))

/* ------------------------------------------------------------- random */

static uint64_t rng_state;

static void rng_seed(const char *test)
{
    const char *env = getenv("CV_TEST_SEED");
    rng_state = env ? strtoull(env, NULL, 0) : 0x2545f4914f6cdd1dull;
    if (!rng_state)
        rng_state = 1;
    print_message("%s: seed 0x%llx\n", test, (unsigned long long)rng_state);
}

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static uint32_t rnd_below(uint32_t n)
{
    return (uint32_t)(rnd() >> 33) % n;
}

static void shuffle(int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rnd_below((uint32_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ===================================================== part one: the HAMT */

struct hkey {
    uint32_t hash;
    int refs;
};

struct hval {
    int refs;
};

/* Releases of something that held no reference: counted, never allowed. */
static int hamt_bad_releases;

static uint32_t hk_hash(const void *key)
{
    return ((const struct hkey *)key)->hash;
}

static void hv_retain(void *key, void *value)
{
    (void)key;
    ((struct hval *)value)->refs++;
}

static void hv_release(void *key, void *value)
{
    (void)key;
    if (((struct hval *)value)->refs-- <= 0)
        hamt_bad_releases++;
}

static void hk_retain(void *key, void *value)
{
    ((struct hkey *)key)->refs++;
    hv_retain(key, value);
}

static void hk_release(void *key, void *value)
{
    if (((struct hkey *)key)->refs-- <= 0)
        hamt_bad_releases++;
    hv_release(key, value);
}

static void h_drop(cvi_hamt_node *node);

static const cvi_hamt_ops hops = {hk_hash, hk_retain, hk_release, hv_retain, hv_release, h_drop};

/* No readers here, so a node whose last reference goes is freed at once. */
static void h_drop(cvi_hamt_node *node)
{
    if (cvi_hamt_release(node))
        cvi_hamt_destroy(node, &hops);
}

#define HK 64
#define HV 24

static struct hkey hkeys[HK];
static struct hval hvals[HV];

struct hmodel {
    bool has[HK];
    struct hval *val[HK];
};

/* Hash families that reach every shape: full collisions, hashes equal in
 * their low 30, 25, 10 and 5 bits, and unrelated ones. */
static void hkeys_init(void)
{
    memset(hkeys, 0, sizeof(hkeys));
    memset(hvals, 0, sizeof(hvals));
    for (int i = 0; i < HK; i++) {
        uint32_t r = (uint32_t)rnd();
        uint32_t h;
        if (i < 8)
            h = 0x9e3779b9u;
        else if (i < 16)
            h = (0x12345678u & 0x3fffffffu) | ((uint32_t)(i % 4) << 30);
        else if (i < 24)
            h = (0x00abcdefu & 0x01ffffffu) | (r & ~0x01ffffffu);
        else if (i < 32)
            h = 0x2a5u | (r & ~0x3ffu);
        else if (i < 40)
            h = 0x11u | (r & ~0x1fu);
        else
            h = r;
        hkeys[i].hash = h;
    }
}

static int key_index(const void *key)
{
    const struct hkey *k = key;
    return k >= hkeys && k < hkeys + HK ? (int)(k - hkeys) : -1;
}

/* Depth of each key's node in the trie (-1: absent), read off the walk. */
static void hamt_depths(const cvi_hamt_node *root, int depth[HK])
{
    for (int i = 0; i < HK; i++)
        depth[i] = -1;
    cvi_hamt_iter it;
    void *key, *value;
    cvi_hamt_iter_init(&it, root);
    while (cvi_hamt_iter_next(&it, &key, &value)) {
        int i = key_index(key);
        assert_true(i >= 0);
        depth[i] = it.depth;
    }
}

static void hamt_verify(const cvi_hamt_node *root, const struct hmodel *m)
{
    size_t expected = 0;
    for (int i = 0; i < HK; i++) {
        void *value = NULL;
        bool found = cvi_hamt_find(root, &hkeys[i], hkeys[i].hash, &value);
        assert_int_equal(found, m->has[i]);
        if (found)
            assert_ptr_equal(value, m->val[i]);
        expected += m->has[i];
    }
    assert_int_equal(cvi_hamt_count(root), expected);

    bool seen[HK] = {false};
    size_t walked = 0;
    cvi_hamt_iter it;
    void *key, *value;
    cvi_hamt_iter_init(&it, root);
    while (cvi_hamt_iter_next(&it, &key, &value)) {
        int i = key_index(key);
        assert_true(i >= 0);
        assert_false(seen[i]);
        seen[i] = true;
        assert_true(m->has[i]);
        assert_ptr_equal(value, m->val[i]);
        walked++;
    }
    assert_int_equal(walked, expected);
}

static cvi_hamt_node *hamt_build(const struct hmodel *m)
{
    int order[HK];
    for (int i = 0; i < HK; i++)
        order[i] = i;
    shuffle(order, HK);
    cvi_hamt_node *root = NULL;
    for (int n = 0; n < HK; n++) {
        int i = order[n];
        if (!m->has[i])
            continue;
        cvi_hamt_node *next;
        void *old;
        bool had;
        assert_true(
            cvi_hamt_assoc(root, &hkeys[i], hkeys[i].hash, m->val[i], &hops, &next, &old, &had));
        assert_false(had);
        h_drop(root);
        root = next;
    }
    return root;
}

/* The structure under the model: every node's key count (which
 * cv_context_len trusts) matches the keys below it, and no node but the
 * root holds fewer than two keys (deletions collapse lone pairs into their
 * parent). */
static void hamt_verify_structure(const cvi_hamt_node *root)
{
    enum { MAX_NODES = HK * 9 };
    const cvi_hamt_node *nodes[MAX_NODES];
    size_t below[MAX_NODES];
    int n_nodes = 0;
    cvi_hamt_iter it;
    void *key, *value;
    cvi_hamt_iter_init(&it, root);
    while (cvi_hamt_iter_next(&it, &key, &value)) {
        for (int d = 0; d <= it.depth; d++) {
            const cvi_hamt_node *node = it.nodes[d];
            int n = 0;
            while (n < n_nodes && nodes[n] != node)
                n++;
            if (n == n_nodes) {
                assert_true(n_nodes < MAX_NODES);
                nodes[n_nodes] = node;
                below[n_nodes++] = 0;
            }
            below[n]++;
            if (d > 0)
                assert_true(cvi_hamt_count(node) >= 2);
        }
    }
    for (int n = 0; n < n_nodes; n++)
        assert_int_equal(cvi_hamt_count(nodes[n]), below[n]);
}

static bool hash_shared(const struct hmodel *m, int i)
{
    for (int j = 0; j < HK; j++) {
        if (j != i && m->has[j] && hkeys[j].hash == hkeys[i].hash)
            return true;
    }
    return false;
}

/* Deletion collapses lone pairs, so a key with a hash of its own sits at
 * the depth where a map built afresh from the same keys puts it, whatever
 * the history. Keys sharing a full hash live in a collision node, which
 * (as in CPython's hamt.c) is not pulled back up when the key that pushed
 * it down leaves: they may sit deeper, never shallower. */
static void hamt_verify_canonical(const cvi_hamt_node *root, const struct hmodel *m)
{
    hamt_verify_structure(root);
    cvi_hamt_node *fresh = hamt_build(m);
    hamt_verify_structure(fresh);
    int got[HK], want[HK];
    hamt_depths(root, got);
    hamt_depths(fresh, want);
    for (int i = 0; i < HK; i++) {
        bool ok = hash_shared(m, i) ? got[i] >= want[i] : got[i] == want[i];
        if (!ok)
            fail_msg("key %d at depth %d, a fresh map has it at %d", i, got[i], want[i]);
    }
    assert_true(cvi_hamt_equal(root, fresh, &hops));
    assert_true(cvi_hamt_equal(fresh, root, &hops));
    h_drop(fresh);
}

#define HSNAPS 6

static void test_hamt_random_against_model(void **state)
{
    (void)state;
    rng_seed("hamt_random");
    hkeys_init();
    hamt_bad_releases = 0;

    cvi_hamt_node *cur = NULL;
    struct hmodel m = {0};
    cvi_hamt_node *snap[HSNAPS] = {NULL};
    struct hmodel snap_model[HSNAPS];
    memset(snap_model, 0, sizeof(snap_model));

    for (int step = 0; step < 20000; step++) {
        int k = (int)rnd_below(HK);
        unsigned op = rnd_below(100);
        bool in_place = rnd() & 1;
        if (op < 40) {
            struct hval *v = &hvals[rnd_below(HV)];
            void *old = VAL(1);
            bool had = !m.has[k];
            if (in_place) {
                assert_true(
                    cvi_hamt_assoc_in_place(&cur, &hkeys[k], hkeys[k].hash, v, &hops, &old, &had));
            } else {
                cvi_hamt_node *next;
                assert_true(
                    cvi_hamt_assoc(cur, &hkeys[k], hkeys[k].hash, v, &hops, &next, &old, &had));
                h_drop(cur);
                cur = next;
            }
            assert_int_equal(had, m.has[k]);
            if (had)
                assert_ptr_equal(old, m.val[k]);
            m.has[k] = true;
            m.val[k] = v;
        } else if (op < 80) {
            if (in_place) {
                assert_true(cvi_hamt_without_in_place(&cur, &hkeys[k], hkeys[k].hash, &hops));
            } else {
                cvi_hamt_node *next;
                assert_true(cvi_hamt_without(cur, &hkeys[k], hkeys[k].hash, &hops, &next));
                if (!m.has[k])
                    assert_ptr_equal(next, cur); /* nothing to remove: the same map */
                h_drop(cur);
                cur = next;
            }
            m.has[k] = false;
            m.val[k] = NULL;
        } else if (op < 92) {
            /* A kept version forces the next updates of shared nodes to copy
             * their path, and must itself never change. */
            int s = (int)rnd_below(HSNAPS);
            h_drop(snap[s]);
            if (cur)
                cvi_hamt_retain(cur);
            snap[s] = cur;
            snap_model[s] = m;
        } else {
            int s = (int)rnd_below(HSNAPS);
            h_drop(snap[s]);
            snap[s] = NULL;
            memset(&snap_model[s], 0, sizeof(snap_model[s]));
        }

        hamt_verify(cur, &m);
        if (step % 16 == 0) {
            for (int s = 0; s < HSNAPS; s++)
                hamt_verify(snap[s], &snap_model[s]);
        }
        if (step % 64 == 0)
            hamt_verify_canonical(cur, &m);
        if (cur == NULL)
            assert_int_equal(cvi_hamt_count(cur), 0);
    }

    /* Empty the map key by key, checking that it shrinks back to NULL. */
    for (int k = 0; k < HK; k++) {
        assert_true(cvi_hamt_without_in_place(&cur, &hkeys[k], hkeys[k].hash, &hops));
        m.has[k] = false;
        hamt_verify(cur, &m);
    }
    assert_null(cur);

    for (int s = 0; s < HSNAPS; s++) {
        hamt_verify(snap[s], &snap_model[s]);
        h_drop(snap[s]);
    }
    for (int i = 0; i < HK; i++)
        assert_int_equal(hkeys[i].refs, 0);
    for (int i = 0; i < HV; i++)
        assert_int_equal(hvals[i].refs, 0);
    assert_int_equal(hamt_bad_releases, 0);
}

static cvi_hamt_node *h_assoc(cvi_hamt_node *root, struct hkey *k, struct hval *v)
{
    cvi_hamt_node *next;
    void *old;
    bool had;
    assert_true(cvi_hamt_assoc(root, k, k->hash, v, &hops, &next, &old, &had));
    h_drop(root);
    return next;
}

static cvi_hamt_node *h_without(cvi_hamt_node *root, struct hkey *k, bool in_place)
{
    if (in_place) {
        assert_true(cvi_hamt_without_in_place(&root, k, k->hash, &hops));
        return root;
    }
    cvi_hamt_node *next;
    assert_true(cvi_hamt_without(root, k, k->hash, &hops, &next));
    h_drop(root);
    return next;
}

static int h_depth(const cvi_hamt_node *root, const struct hkey *k)
{
    cvi_hamt_iter it;
    void *key, *value;
    cvi_hamt_iter_init(&it, root);
    while (cvi_hamt_iter_next(&it, &key, &value)) {
        if (key == k)
            return it.depth;
    }
    return -1;
}

/* Where keys land for each length of shared hash prefix, and how the trie
 * collapses back when the keys that deepened it leave. */
static void test_hamt_depths_and_collapse(void **state)
{
    (void)state;
    hamt_bad_releases = 0;
    static struct hkey k[4];
    static struct hval v;
    memset(&v, 0, sizeof(v));
    const unsigned prefixes[] = {5, 10, 25, 30};
    for (int in_place = 0; in_place < 2; in_place++) {
        for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
            unsigned bits = prefixes[p];
            memset(k, 0, sizeof(k));
            k[0].hash = 0x5a5a5a5au;
            k[1].hash = k[0].hash ^ (1u << bits); /* first differs at bit `bits` */
            cvi_hamt_node *root = h_assoc(NULL, &k[0], &v);
            root = h_assoc(root, &k[1], &v);
            assert_int_equal(h_depth(root, &k[0]), bits / 5);
            assert_int_equal(h_depth(root, &k[1]), bits / 5);
            assert_int_equal(cvi_hamt_count(root), 2);
            root = h_without(root, &k[1], in_place);
            assert_int_equal(h_depth(root, &k[0]), 0);
            assert_int_equal(h_depth(root, &k[1]), -1);
            root = h_without(root, &k[0], in_place);
            assert_null(root);
        }

        /* Two keys with one full hash share a collision node right below
         * the root; a third key equal in the low 30 bits pushes that node
         * down to the last level; removing it brings the node back up, and
         * removing one of the pair leaves a lone pair in the root. */
        memset(k, 0, sizeof(k));
        k[0].hash = k[1].hash = 0x0badf00du;
        k[2].hash = k[0].hash ^ (1u << 30);
        cvi_hamt_node *root = h_assoc(NULL, &k[0], &v);
        root = h_assoc(root, &k[1], &v);
        assert_int_equal(h_depth(root, &k[0]), 1);
        assert_int_equal(h_depth(root, &k[1]), 1);
        root = h_assoc(root, &k[2], &v);
        assert_int_equal(h_depth(root, &k[0]), 7);
        assert_int_equal(h_depth(root, &k[1]), 7);
        assert_int_equal(h_depth(root, &k[2]), 6);
        void *found;
        for (int i = 0; i < 3; i++) {
            assert_true(cvi_hamt_find(root, &k[i], k[i].hash, &found));
            assert_ptr_equal(found, &v);
        }
        /* Same hash, different key: not found. */
        assert_false(cvi_hamt_find(root, &k[3], k[0].hash, &found));
        /* The pair stays in its collision node (see hamt_verify_canonical). */
        root = h_without(root, &k[2], in_place);
        hamt_verify_structure(root);
        assert_true(h_depth(root, &k[0]) >= 1);
        assert_int_equal(h_depth(root, &k[1]), h_depth(root, &k[0]));
        assert_int_equal(cvi_hamt_count(root), 2);
        root = h_without(root, &k[0], in_place);
        assert_int_equal(h_depth(root, &k[1]), 0);
        assert_int_equal(cvi_hamt_count(root), 1);
        root = h_without(root, &k[1], in_place);
        assert_null(root);
    }
    for (int i = 0; i < 4; i++)
        assert_int_equal(k[i].refs, 0);
    assert_int_equal(v.refs, 0);
    assert_int_equal(hamt_bad_releases, 0);
}

/* ============================================ part two: the public API */

#define PV 40
#define PSLOTS 4
#define PTOK 12
#define PSNAPS 3

static cv_var_t *pvars[PV];

struct pmodel {
    bool has[PV];
    void *val[PV];
};

struct ptoken {
    cv_token_t tok;
    int var;
    bool had_old;
    void *old;
};

struct pslot {
    cv_context_t *ctx;
    struct pmodel m;
    struct ptoken toks[PTOK];
    int ntoks;
};

static int pvar_index(const cv_var_t *var)
{
    for (int i = 0; i < PV; i++) {
        if (pvars[i] == var)
            return i;
    }
    return -1;
}

struct set_op {
    cv_var_t *var;
    void *value;
    cv_token_t *token;
    cv_status_t status;
};

static void run_set(void *arg)
{
    struct set_op *op = arg;
    op->status = cv_set(op->var, op->value, op->token);
}

struct reset_op {
    cv_var_t *var;
    cv_token_t *token;
    cv_status_t status;
};

static void run_reset(void *arg)
{
    struct reset_op *op = arg;
    op->status = cv_reset(op->var, op->token);
}

/* Sets through cv_context_run or through enter/exit, which reach the map
 * by different paths (a borrowed reference against the stack's own). */
static void ctx_set(cv_context_t *ctx, cv_var_t *var, void *value, cv_token_t *token, bool via_run)
{
    struct set_op op = {var, value, token, CV_EINVAL};
    if (via_run) {
        assert_int_equal(cv_context_run(ctx, run_set, &op), CV_OK);
    } else {
        assert_int_equal(cv_context_enter(ctx), CV_OK);
        run_set(&op);
        assert_int_equal(cv_context_exit(ctx), CV_OK);
    }
    assert_int_equal(op.status, CV_OK);
}

static void ctx_reset(cv_context_t *ctx, cv_var_t *var, cv_token_t *token, cv_status_t expect)
{
    struct reset_op op = {var, token, CV_EINVAL};
    assert_int_equal(cv_context_run(ctx, run_reset, &op), CV_OK);
    assert_int_equal(op.status, expect);
}

static bool pmodel_equal(const struct pmodel *a, const struct pmodel *b)
{
    for (int i = 0; i < PV; i++) {
        if (a->has[i] != b->has[i] || (a->has[i] && a->val[i] != b->val[i]))
            return false;
    }
    return true;
}

/* Everything the mapping API can say about ctx, against the model. When the
 * caller has ctx entered, cv_get must agree too. */
static void pverify(cv_context_t *ctx, const struct pmodel *m, bool entered)
{
    size_t expected = 0;
    for (int i = 0; i < PV; i++) {
        void *value = VAL(0xbad);
        cv_status_t st = cv_context_get(ctx, pvars[i], &value);
        assert_int_equal(st, m->has[i] ? CV_OK : CV_ENOVALUE);
        if (m->has[i])
            assert_ptr_equal(value, m->val[i]);
        else
            assert_ptr_equal(value, VAL(0xbad));
        assert_int_equal(cv_context_contains(ctx, pvars[i]), m->has[i]);
        if (entered) {
            value = VAL(0xbad);
            assert_int_equal(cv_get(pvars[i], &value), m->has[i] ? CV_OK : CV_ENOVALUE);
            if (m->has[i])
                assert_ptr_equal(value, m->val[i]);
        }
        expected += m->has[i];
    }
    assert_int_equal(cv_context_len(ctx), expected);

    bool seen[PV] = {false};
    size_t walked = 0;
    cv_context_iter_t it;
    cv_var_t *var;
    void *value;
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, &var, &value)) {
        int i = pvar_index(var);
        assert_true(i >= 0);
        assert_false(seen[i]);
        seen[i] = true;
        assert_true(m->has[i]);
        assert_ptr_equal(value, m->val[i]);
        walked++;
    }
    assert_false(cv_context_iter_next(&it, &var, &value)); /* stays at its end */
    cv_context_iter_fini(&it);
    assert_int_equal(walked, expected);
}

static void pslot_clear_tokens(struct pslot *s)
{
    for (int t = 0; t < s->ntoks; t++)
        cv_token_discard(&s->toks[t].tok);
    s->ntoks = 0;
}

/* Slots below this are only ever read by entering them, so their contexts
 * never see a foreign reader and the owner keeps updating in place; the
 * others are read from outside, which switches them to path copying. */
#define OWNED_SLOTS 2

static void test_public_random_against_model(void **state)
{
    (void)state;
    rng_seed("public_random");
    for (int i = 0; i < PV; i++) {
        char name[16];
        snprintf(name, sizeof(name), "p%d", i);
        pvars[i] = cv_var_new(name, NULL);
        assert_non_null(pvars[i]);
    }
    /* Collisions and deep paths, set before any context holds the vars. */
    for (int i = 0; i < 4; i++)
        cv_testing_set_var_hash(pvars[i], 0xfeedbeefu);
    cv_testing_set_var_hash(pvars[4], 0x00c0ffeeu);
    cv_testing_set_var_hash(pvars[5], 0x00c0ffeeu ^ (1u << 25));
    cv_testing_set_var_hash(pvars[6], 0x3c0ffee0u);
    cv_testing_set_var_hash(pvars[7], 0x3c0ffee0u ^ (1u << 31));
    cv_testing_set_var_hash(pvars[8], 0x3c0ffee0u ^ (1u << 30));

    struct pslot *slots = calloc(PSLOTS, sizeof(*slots));
    assert_non_null(slots);
    for (int s = 0; s < PSLOTS; s++)
        slots[s].ctx = cv_context_new();
    cv_context_t *snaps[PSNAPS] = {NULL};
    struct pmodel snap_model[PSNAPS];
    memset(snap_model, 0, sizeof(snap_model));
    uintptr_t next_value = 1;

    for (int step = 0; step < 4000; step++) {
        int si = (int)rnd_below(PSLOTS);
        struct pslot *s = &slots[si];
        unsigned op = rnd_below(100);
        if (op < 45) {
            int v = (int)rnd_below(PV);
            /* NULL is an ordinary value and must be told apart from absence. */
            void *value = rnd_below(10) == 0 ? NULL : VAL(next_value++);
            struct ptoken *pt = s->ntoks < PTOK && (rnd() & 1) ? &s->toks[s->ntoks] : NULL;
            if (pt) {
                pt->var = v;
                pt->had_old = s->m.has[v];
                pt->old = s->m.val[v];
                s->ntoks++;
            }
            ctx_set(s->ctx, pvars[v], value, pt ? &pt->tok : NULL, rnd() & 1);
            s->m.has[v] = true;
            s->m.val[v] = value;
        } else if (op < 70) {
            if (!s->ntoks)
                continue;
            int t = (int)rnd_below((uint32_t)s->ntoks);
            struct ptoken *pt = &s->toks[t];
            ctx_reset(s->ctx, pvars[pt->var], &pt->tok, CV_OK);
            ctx_reset(s->ctx, pvars[pt->var], &pt->tok, CV_ETOKEN_USED);
            s->m.has[pt->var] = pt->had_old;
            s->m.val[pt->var] = pt->had_old ? pt->old : NULL;
            s->toks[t] = s->toks[--s->ntoks];
        } else if (op < 80) {
            int di = (int)rnd_below(PSLOTS);
            if (di == si)
                continue;
            struct pslot *d = &slots[di];
            pslot_clear_tokens(d);
            cv_context_release(d->ctx);
            if (si < OWNED_SLOTS) {
                assert_int_equal(cv_context_enter(s->ctx), CV_OK);
                d->ctx = cv_copy_context();
                assert_int_equal(cv_context_exit(s->ctx), CV_OK);
            } else {
                d->ctx = cv_context_copy(s->ctx);
            }
            assert_non_null(d->ctx);
            d->m = s->m;
        } else if (op < 84) {
            pslot_clear_tokens(s);
            cv_context_release(s->ctx);
            s->ctx = cv_context_new();
            memset(&s->m, 0, sizeof(s->m));
        } else if (op < 92) {
            int n = (int)rnd_below(PSNAPS);
            cv_context_release(snaps[n]);
            if (si < OWNED_SLOTS) {
                assert_int_equal(cv_context_enter(s->ctx), CV_OK);
                snaps[n] = cv_copy_context();
                assert_int_equal(cv_context_exit(s->ctx), CV_OK);
            } else {
                snaps[n] = cv_context_copy(s->ctx);
            }
            snap_model[n] = s->m;
        } else {
            /* An iterator walks the state of its init, whatever follows. */
            struct pmodel before = s->m;
            cv_context_iter_t it;
            bool entered = si < OWNED_SLOTS;
            if (entered)
                assert_int_equal(cv_context_enter(s->ctx), CV_OK);
            cv_context_iter_init(&it, s->ctx);
            for (int n = 0; n < 3; n++) {
                int v = (int)rnd_below(PV);
                void *value = VAL(next_value++);
                if (entered)
                    assert_int_equal(cv_set(pvars[v], value, NULL), CV_OK);
                else
                    ctx_set(s->ctx, pvars[v], value, NULL, true);
                s->m.has[v] = true;
                s->m.val[v] = value;
            }
            if (entered)
                assert_int_equal(cv_context_exit(s->ctx), CV_OK);
            bool seen[PV] = {false};
            cv_var_t *var;
            void *value;
            while (cv_context_iter_next(&it, &var, &value)) {
                int i = pvar_index(var);
                assert_true(i >= 0 && !seen[i] && before.has[i]);
                assert_ptr_equal(value, before.val[i]);
                seen[i] = true;
            }
            cv_context_iter_fini(&it);
            for (int i = 0; i < PV; i++)
                assert_int_equal(seen[i], before.has[i]);
        }

        for (int t = 0; t < PSLOTS; t++) {
            if (t < OWNED_SLOTS) {
                assert_int_equal(cv_context_enter(slots[t].ctx), CV_OK);
                pverify(slots[t].ctx, &slots[t].m, true);
                /* The owner compares itself with a context read from outside. */
                int other = OWNED_SLOTS + (int)rnd_below(PSLOTS - OWNED_SLOTS);
                assert_int_equal(cv_context_equal(slots[t].ctx, slots[other].ctx),
                                 pmodel_equal(&slots[t].m, &slots[other].m));
                assert_int_equal(cv_context_exit(slots[t].ctx), CV_OK);
            } else {
                pverify(slots[t].ctx, &slots[t].m, false);
            }
        }
        for (int n = 0; n < PSNAPS; n++) {
            if (snaps[n])
                pverify(snaps[n], &snap_model[n], false);
        }
        for (int a = OWNED_SLOTS; a < PSLOTS; a++) {
            for (int n = 0; n < PSNAPS; n++) {
                if (snaps[n])
                    assert_int_equal(cv_context_equal(slots[a].ctx, snaps[n]),
                                     pmodel_equal(&slots[a].m, &snap_model[n]));
            }
        }
    }

    for (int s = 0; s < PSLOTS; s++) {
        pslot_clear_tokens(&slots[s]);
        cv_context_release(slots[s].ctx);
    }
    for (int n = 0; n < PSNAPS; n++)
        cv_context_release(snaps[n]);
    free(slots);
    for (int i = 0; i < PV; i++)
        cv_var_release(pvars[i]);
    cv_reclaim_barrier();
}

/* --------------------------------------------------- 100,000 variables */

#define BIG 100000

struct big_state {
    cv_var_t **vars;
    cv_token_t *tokens;
    int *order;
};

static int big_var_index(const cv_var_t *var)
{
    const char *name = cv_var_name(var);
    if (!name || name[0] != 'b')
        return -1;
    return atoi(name + 1);
}

static void test_hundred_thousand_variables(void **state)
{
    (void)state;
    rng_seed("hundred_thousand");
    struct big_state b;
    b.vars = malloc(BIG * sizeof(*b.vars));
    b.tokens = malloc(BIG * sizeof(*b.tokens));
    b.order = malloc(BIG * sizeof(*b.order));
    assert_true(b.vars && b.tokens && b.order);
    for (int i = 0; i < BIG; i++) {
        char name[16];
        snprintf(name, sizeof(name), "b%d", i);
        b.vars[i] = cv_var_new(name, NULL);
        assert_non_null(b.vars[i]);
        b.order[i] = i;
    }

    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    for (int i = 0; i < BIG; i++)
        assert_int_equal(cv_set(b.vars[i], VAL(i + 1), &b.tokens[i]), CV_OK);
    assert_int_equal(cv_context_len(ctx), BIG);
    for (int i = 0; i < BIG; i++) {
        void *value = NULL;
        assert_int_equal(cv_get(b.vars[i], &value), CV_OK);
        assert_ptr_equal(value, VAL(i + 1));
    }
    assert_int_equal(cv_context_exit(ctx), CV_OK);

    /* From outside too: the path that announces a foreign reader. */
    for (int i = 0; i < BIG; i++) {
        void *value = NULL;
        assert_int_equal(cv_context_get(ctx, b.vars[i], &value), CV_OK);
        assert_ptr_equal(value, VAL(i + 1));
    }
    unsigned char *seen = calloc(BIG, 1);
    assert_non_null(seen);
    size_t walked = 0;
    cv_context_iter_t it;
    cv_var_t *var;
    void *value;
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, &var, &value)) {
        int i = big_var_index(var);
        assert_true(i >= 0 && i < BIG);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        assert_ptr_equal(value, VAL(i + 1));
        walked++;
    }
    cv_context_iter_fini(&it);
    assert_int_equal(walked, BIG);
    free(seen);

    /* O(1) copy: the copy starts on the very same root, and a set in it
     * copies a path without disturbing the original. */
    cv_context_t *copy = cv_context_copy(ctx);
    assert_non_null(copy);
    cvi_hamt_node *original_root = cvi_context_owned_root(ctx);
    assert_ptr_equal(cvi_context_owned_root(copy), original_root);
    assert_true(cv_context_equal(ctx, copy));
    ctx_set(copy, b.vars[7], VAL(0xdead), NULL, true);
    assert_ptr_equal(cvi_context_owned_root(ctx), original_root);
    assert_ptr_not_equal(cvi_context_owned_root(copy), original_root);
    assert_false(cv_context_equal(ctx, copy));
    assert_int_equal(cv_context_get(ctx, b.vars[7], &value), CV_OK);
    assert_ptr_equal(value, VAL(8));
    assert_int_equal(cv_context_get(copy, b.vars[7], &value), CV_OK);
    assert_ptr_equal(value, VAL(0xdead));
    assert_int_equal(cv_context_len(copy), BIG);
    ctx_set(copy, b.vars[7], VAL(8), NULL, false);
    assert_true(cv_context_equal(ctx, copy));

    /* One extra variable in the copy: lengths and equality diverge. */
    cv_var_t *extra = cv_var_new("extra", NULL);
    ctx_set(copy, extra, NULL, NULL, false);
    assert_int_equal(cv_context_len(copy), BIG + 1);
    assert_int_equal(cv_context_len(ctx), BIG);
    assert_false(cv_context_equal(ctx, copy));
    assert_false(cv_context_contains(ctx, extra));

    /* Undo every set in random order: back to empty, equal to a new
     * context, while the copy keeps all of it. */
    shuffle(b.order, BIG);
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    for (int n = 0; n < BIG; n++) {
        int i = b.order[n];
        assert_int_equal(cv_reset(b.vars[i], &b.tokens[i]), CV_OK);
        if (n % 9973 == 0) {
            assert_int_equal(cv_context_len(ctx), (size_t)(BIG - n - 1));
            assert_false(cv_context_contains(ctx, b.vars[i]));
        }
    }
    assert_int_equal(cv_context_len(ctx), 0);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_t *empty = cv_context_new();
    assert_true(cv_context_equal(ctx, empty));
    cv_context_iter_init(&it, ctx);
    assert_false(cv_context_iter_next(&it, &var, &value));
    cv_context_iter_fini(&it);
    assert_int_equal(cv_context_len(copy), BIG + 1);
    for (int i = 0; i < BIG; i += 997) {
        assert_int_equal(cv_context_get(copy, b.vars[i], &value), CV_OK);
        assert_ptr_equal(value, VAL(i + 1));
    }

    cv_context_release(empty);
    cv_context_release(copy);
    cv_context_release(ctx);
    cv_var_release(extra);
    for (int i = 0; i < BIG; i++)
        cv_var_release(b.vars[i]);
    free(b.vars);
    free(b.tokens);
    free(b.order);
    cv_reclaim_barrier();
}

/* ----------------------------------------------------- forced collisions */

#define CN 6

struct collision_case {
    const char *name;
    uint32_t hashes[CN];
};

static void check_collision_case(const struct collision_case *c)
{
    cv_var_t *vars[CN];
    for (int i = 0; i < CN; i++) {
        vars[i] = cv_var_new(c->name, NULL);
        assert_non_null(vars[i]);
        cv_testing_set_var_hash(vars[i], c->hashes[i]);
    }
    /* A plain variable alongside, so the collisions sit below a real root. */
    cv_var_t *plain = cv_var_new("plain", NULL);

    for (int round = 0; round < 8; round++) {
        int order[CN];
        for (int i = 0; i < CN; i++)
            order[i] = i;
        shuffle(order, CN);
        cv_context_t *ctx = cv_context_new();
        assert_int_equal(cv_context_enter(ctx), CV_OK);
        assert_int_equal(cv_set(plain, VAL(99), NULL), CV_OK);
        cv_token_t tok[CN];
        for (int n = 0; n < CN; n++) {
            int i = order[n];
            assert_int_equal(cv_set(vars[i], VAL(100 + i), &tok[i]), CV_OK);
            /* Everything inserted so far is still there; the rest is not. */
            for (int m = 0; m < CN; m++) {
                bool in = false;
                for (int q = 0; q <= n; q++)
                    in |= order[q] == m;
                void *value = NULL;
                assert_int_equal(cv_context_get(ctx, vars[m], &value), in ? CV_OK : CV_ENOVALUE);
                if (in)
                    assert_ptr_equal(value, VAL(100 + m));
            }
            assert_int_equal(cv_context_len(ctx), (size_t)n + 2);
        }
        /* Overwrite inside the collision node. */
        assert_int_equal(cv_set(vars[order[0]], VAL(7), NULL), CV_OK);
        void *value;
        assert_int_equal(cv_get(vars[order[0]], &value), CV_OK);
        assert_ptr_equal(value, VAL(7));
        assert_int_equal(cv_set(vars[order[0]], VAL(100 + order[0]), NULL), CV_OK);

        /* A copy shares the collision node; changing it in the copy leaves
         * the original alone. */
        cv_context_t *copy = cv_copy_context();
        assert_int_equal(cv_context_exit(ctx), CV_OK);
        ctx_set(copy, vars[order[1]], VAL(1234), NULL, true);
        assert_int_equal(cv_context_get(ctx, vars[order[1]], &value), CV_OK);
        assert_ptr_equal(value, VAL(100 + order[1]));
        assert_int_equal(cv_context_get(copy, vars[order[1]], &value), CV_OK);
        assert_ptr_equal(value, VAL(1234));
        cv_context_release(copy);

        size_t walked = 0;
        cv_context_iter_t it;
        cv_var_t *var;
        cv_context_iter_init(&it, ctx);
        while (cv_context_iter_next(&it, &var, &value))
            walked++;
        cv_context_iter_fini(&it);
        assert_int_equal(walked, CN + 1);

        /* Remove in another random order, down to the plain variable. */
        shuffle(order, CN);
        for (int n = 0; n < CN; n++) {
            ctx_reset(ctx, vars[order[n]], &tok[order[n]], CV_OK);
            for (int m = 0; m < CN; m++) {
                bool gone = false;
                for (int q = 0; q <= n; q++)
                    gone |= order[q] == m;
                assert_int_equal(cv_context_contains(ctx, vars[m]), !gone);
            }
            assert_int_equal(cv_context_len(ctx), (size_t)(CN - n));
        }
        cv_context_t *only_plain = cv_context_new();
        ctx_set(only_plain, plain, VAL(99), NULL, false);
        assert_true(cv_context_equal(ctx, only_plain));
        cv_context_release(only_plain);
        cv_context_release(ctx);
    }
    for (int i = 0; i < CN; i++)
        cv_var_release(vars[i]);
    cv_var_release(plain);
}

static void test_forced_collisions(void **state)
{
    (void)state;
    rng_seed("collisions");
    const uint32_t h = 0x6b8b4567u;
    const struct collision_case cases[] = {
        {"same", {h, h, h, h, h, h}},
        /* Equal in the low 5, 10, 25 bits, different above. */
        {"low5", {h, h ^ (1u << 5), h ^ (1u << 6), h ^ (1u << 9), h ^ (3u << 20), h ^ (1u << 31)}},
        {"low10",
         {h, h ^ (1u << 10), h ^ (1u << 14), h ^ (1u << 15), h ^ (1u << 29), h ^ (5u << 16)}},
        {"low25",
         {h, h ^ (1u << 25), h ^ (1u << 26), h ^ (1u << 30), h ^ (1u << 31), h ^ (3u << 25)}},
        /* Mixed: a collision group and its neighbours at the last levels. */
        {"mixed", {h, h, h ^ (1u << 30), h ^ (1u << 31), h ^ (1u << 30), h ^ (1u << 25)}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_collision_case(&cases[i]);
    cv_reclaim_barrier();
}

/* ------------------------------------------------------------- equality */

#define EQN 200

static cv_context_t *build_ctx(cv_var_t **vars, const int *order, int n, uintptr_t base)
{
    cv_context_t *ctx = cv_context_new();
    for (int k = 0; k < n; k++)
        ctx_set(ctx, vars[order[k]], VAL(base + (uintptr_t)order[k]), NULL, k & 1);
    return ctx;
}

static void test_equality(void **state)
{
    (void)state;
    rng_seed("equality");
    cv_var_t *vars[EQN + 2];
    for (int i = 0; i < EQN + 2; i++)
        vars[i] = cv_var_new("eq", NULL);
    /* Collision nodes keep their pairs in insertion order: equality must
     * not care. */
    for (int i = 0; i < 10; i++)
        cv_testing_set_var_hash(vars[i], 0x13579bdfu);
    for (int i = 10; i < 20; i++)
        cv_testing_set_var_hash(vars[i], 0x02468aceu ^ ((uint32_t)i << 25));

    int asc[EQN], desc[EQN], rnd_order[EQN];
    for (int i = 0; i < EQN; i++) {
        asc[i] = i;
        desc[i] = EQN - 1 - i;
        rnd_order[i] = i;
    }
    shuffle(rnd_order, EQN);
    cv_context_t *a = build_ctx(vars, asc, EQN, 1000);
    cv_context_t *b = build_ctx(vars, desc, EQN, 1000);
    /* c gets there by a detour: wrong values first, strays set and undone. */
    cv_context_t *c = cv_context_new();
    for (int k = 0; k < EQN; k++) {
        int i = rnd_order[k];
        cv_token_t stray;
        ctx_set(c, vars[i], VAL(5), NULL, false);
        ctx_set(c, vars[EQN], VAL(6), &stray, true);
        ctx_set(c, vars[i], VAL(1000 + (uintptr_t)i), NULL, true);
        ctx_reset(c, vars[EQN], &stray, CV_OK);
    }
    assert_true(cv_context_equal(a, a));
    assert_true(cv_context_equal(a, b));
    assert_true(cv_context_equal(b, a));
    assert_true(cv_context_equal(b, c));
    assert_true(cv_context_equal(a, c));

    /* One value differs, in a plain slot and in a collision node. */
    const int probe[] = {3, 15, 150};
    for (size_t p = 0; p < sizeof(probe) / sizeof(probe[0]); p++) {
        int i = probe[p];
        cv_context_t *d = cv_context_copy(a);
        ctx_set(d, vars[i], VAL(1), NULL, true);
        assert_false(cv_context_equal(a, d));
        assert_false(cv_context_equal(d, a));
        ctx_set(d, vars[i], NULL, NULL, true);
        assert_false(cv_context_equal(a, d));
        ctx_set(d, vars[i], VAL(1000 + (uintptr_t)i), NULL, false);
        assert_true(cv_context_equal(a, d));
        cv_context_release(d);
    }

    /* One extra key; one missing key; same size but one key swapped. */
    cv_context_t *e = cv_context_copy(a);
    ctx_set(e, vars[EQN + 1], VAL(1), NULL, false);
    assert_false(cv_context_equal(a, e));
    assert_false(cv_context_equal(e, a));
    cv_context_t *f = build_ctx(vars, asc + 1, EQN - 1, 1000);
    assert_false(cv_context_equal(a, f));
    assert_false(cv_context_equal(f, a));
    cv_context_t *g = cv_context_copy(f);
    ctx_set(g, vars[EQN + 1], VAL(1000), NULL, true);
    assert_int_equal(cv_context_len(g), cv_context_len(a));
    assert_false(cv_context_equal(a, g));
    assert_false(cv_context_equal(g, a));
    /* Inside a collision node: the same hash, another variable. */
    int skip_collider[EQN];
    for (int i = 0; i < EQN; i++)
        skip_collider[i] = i == 4 ? 5 : i;
    cv_var_t *collider = cv_var_new("collider", NULL);
    cv_testing_set_var_hash(collider, 0x13579bdfu);
    cv_context_t *h = build_ctx(vars, skip_collider, EQN, 1000);
    ctx_set(h, collider, VAL(1004), NULL, true);
    assert_int_equal(cv_context_len(h), cv_context_len(a));
    assert_false(cv_context_equal(a, h));
    assert_false(cv_context_equal(h, a));

    /* NULL is a value, not an absence. */
    cv_context_t *n1 = cv_context_new(), *n2 = cv_context_new(), *n3 = cv_context_new();
    assert_true(cv_context_equal(n1, n2));
    ctx_set(n1, vars[0], NULL, NULL, true);
    assert_false(cv_context_equal(n1, n2));
    ctx_set(n2, vars[0], NULL, NULL, false);
    assert_true(cv_context_equal(n1, n2));
    assert_false(cv_context_equal(n3, a));
    assert_false(cv_context_equal(a, n3));

    cv_context_t *all[] = {a, b, c, e, f, g, h, n1, n2, n3};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        cv_context_release(all[i]);
    for (int i = 0; i < EQN + 2; i++)
        cv_var_release(vars[i]);
    cv_var_release(collider);
    cv_reclaim_barrier();
}

/* ---------------------------------------------------------- deep tries */

/* Variables whose hashes agree on ever longer prefixes build the deepest
 * paths the trie has; every one must stay reachable while the path grows
 * and shrinks, and the trie must end empty. */
static void test_deep_trie(void **state)
{
    (void)state;
    rng_seed("deep");
    enum { DN = 34 };
    cv_var_t *vars[DN];
    const uint32_t h = 0xa5c3e1f7u;
    for (int i = 0; i < DN; i++) {
        vars[i] = cv_var_new("deep", NULL);
        /* Each agrees with h on the low i bits and differs at bit i; the
         * last two are h itself, a full collision at the bottom. */
        cv_testing_set_var_hash(vars[i], i < 32 ? h ^ (1u << i) : h);
    }
    for (int in_place = 0; in_place < 2; in_place++) {
        cv_context_t *ctx = cv_context_new();
        cv_context_t *keep = NULL;
        cv_token_t tok[DN];
        int order[DN];
        for (int i = 0; i < DN; i++)
            order[i] = DN - 1 - i; /* deepest first, then ever shallower */
        for (int n = 0; n < DN; n++) {
            ctx_set(ctx, vars[order[n]], VAL(order[n] + 1), &tok[order[n]], n & 1);
            if (!in_place && n == DN / 2)
                keep = cv_context_copy(ctx); /* forces path copies from here on */
            for (int q = 0; q <= n; q++) {
                void *value;
                assert_int_equal(cv_context_get(ctx, vars[order[q]], &value), CV_OK);
                assert_ptr_equal(value, VAL(order[q] + 1));
            }
        }
        assert_int_equal(cv_context_len(ctx), DN);
        shuffle(order, DN);
        for (int n = 0; n < DN; n++) {
            ctx_reset(ctx, vars[order[n]], &tok[order[n]], CV_OK);
            for (int q = n + 1; q < DN; q++)
                assert_true(cv_context_contains(ctx, vars[order[q]]));
            assert_int_equal(cv_context_len(ctx), (size_t)(DN - n - 1));
        }
        cv_context_t *empty = cv_context_new();
        assert_true(cv_context_equal(ctx, empty));
        if (keep)
            assert_int_equal(cv_context_len(keep), DN / 2 + 1);
        cv_context_release(keep);
        cv_context_release(empty);
        cv_context_release(ctx);
    }
    for (int i = 0; i < DN; i++)
        cv_var_release(vars[i]);
    cv_reclaim_barrier();
}

/* The map's bit counting has a software path for x86-64 CPUs without
 * POPCNT, which this machine never takes by itself: run the map's own
 * checks through it. */
static void test_software_popcount(void **state)
{
    cv_testing_software_popcount(true);
    test_hamt_random_against_model(state);
    test_hamt_depths_and_collapse(state);
    test_forced_collisions(state);
    cv_testing_software_popcount(false);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hamt_random_against_model),
        cmocka_unit_test(test_hamt_depths_and_collapse),
        cmocka_unit_test(test_public_random_against_model),
        cmocka_unit_test(test_hundred_thousand_variables),
        cmocka_unit_test(test_forced_collisions),
        cmocka_unit_test(test_equality),
        cmocka_unit_test(test_deep_trie),
        cmocka_unit_test(test_software_popcount),
    };
    return cv_test_run_selected(GROUP_NAME, tests, sizeof(tests) / sizeof(tests[0]));
}
