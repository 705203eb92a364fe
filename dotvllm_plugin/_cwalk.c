/* Token-trie walk through a DFA, depth first, in C: the hot loop of the token index.
 *
 * Same contract as dotvllm_plugin.index._walk (the numpy reference), for a trie flattened to
 * global node ids: walk every trie path from every start state, one byte class per node, and
 * report (start index, node, end state) for each surviving node that ends a token. Optionally
 * report steps into EXIT (-2) as (start index, level, node within its level, previous state).
 * "Inject" entries resume walks that already consumed a node. Output order is unspecified.
 *
 * Arguments (all int64 buffers, C-contiguous):
 *   trans      [n_states * n_classes]   class transition table (-1 dead, -2 exit)
 *   n_classes
 *   nodes      [n_nodes] trie_node      packed: first child, child count, byte (or class), has token
 *   bc         [256]                    class of each byte: a node's class is bc[node.sym]
 *   level_off  [depth + 1]              first global id of each level
 *   n_roots                             level-0 nodes are 0 .. n_roots-1
 *   starts     [k]                      start states (start index = position)
 *   inj_si, inj_level, inj_node, inj_state [m]   resumed walks (inj_node local to its level)
 *   want_exits, max_produced
 * Returns (si, node, end[, ex_si, ex_level, ex_node, ex_prev]) as bytes of int64, or None when
 * more than max_produced (state, node) pairs survive.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t *p;
    Py_ssize_t n, cap;
} vec;

static int vec_grow(vec *v) {
    Py_ssize_t cap = v->cap ? v->cap * 2 : 1024;
    int64_t *p = realloc(v->p, (size_t)cap * sizeof(int64_t));
    if (!p) return -1;
    v->p = p;
    v->cap = cap;
    return 0;
}

static inline int vec_push(vec *v, int64_t x) {
    if (__builtin_expect(v->n == v->cap, 0) && vec_grow(v)) return -1;
    v->p[v->n++] = x;
    return 0;
}

static PyObject *vec_bytes(vec *v) {
    return PyBytes_FromStringAndSize((const char *)v->p, v->n * (Py_ssize_t)sizeof(int64_t));
}

typedef struct {
    int64_t node, prev, level, si;
} frame;

/* One trie node, packed (8 bytes: the walk reads one cache line per 8 siblings). Must match
 * dotvllm_plugin.index.TRIE_NODE. */
typedef struct {
    uint32_t lo;          /* global id of the first child; children are contiguous */
    uint16_t n_children;
    uint8_t sym;          /* byte (byte trie) or class (merged trie) */
    uint8_t has;          /* a token ends here */
} trie_node;

/* Append a frame to the growable array ``BUF`` of ``LEN`` frames and room for ``CAP``; on failure
 * set nomem, goto done. */
#define PUSH_TO(BUF, LEN, CAP, N, P, L, S)                                         \
    do {                                                                           \
        if ((LEN) == (CAP)) {                                                      \
            Py_ssize_t nc = (CAP) ? (CAP) * 2 : 4096;                              \
            frame *ns = realloc((BUF), (size_t)nc * sizeof(frame));                \
            if (!ns) { nomem = 1; goto done; }                                     \
            (BUF) = ns;                                                            \
            (CAP) = nc;                                                            \
        }                                                                          \
        (BUF)[LEN].node = (N); (BUF)[LEN].prev = (P); (BUF)[LEN].level = (L); (BUF)[LEN].si = (S); \
        (LEN)++;                                                                   \
    } while (0)
/* Push a frame on the growable stack ``stack``/``sp``/``scap``. */
#define PUSH_FRAME(N, P, L, S) PUSH_TO(stack, sp, scap, N, P, L, S)

/* Set the bits of the tokens ending at ``node`` in the row of end state ``st``'s group (``cls[st]``,
 * or ``st`` itself without ``cls``; a zeroed row is added on the group's first token, and ``st``
 * stands for the group in ``ends``). Returns -1 when out of memory. */
static int add_tokens(uint32_t **rows, vec *ends, Py_ssize_t *cap, int64_t *gid, const int64_t *cls, int64_t st,
                      Py_ssize_t n_words, const int64_t *cs, const int64_t *ci, int64_t node) {
    int64_t key = cls ? cls[st] : st;
    if (gid[key] < 0) {  /* row ends->n is the group's */
        if (ends->n == *cap) {
            Py_ssize_t nc = *cap ? *cap * 2 : 8;
            uint32_t *p = realloc(*rows, (size_t)(nc * n_words) * 4);
            if (!p) return -1;
            *rows = p;
            *cap = nc;
        }
        memset(*rows + ends->n * n_words, 0, (size_t)n_words * 4);
        gid[key] = ends->n;
        if (vec_push(ends, st)) return -1;
    }
    uint32_t *row = *rows + gid[key] * n_words;
    for (int64_t j = cs[node]; j < cs[node + 1]; j++) row[ci[j] >> 5] |= (uint32_t)1 << (ci[j] & 31);
    return 0;
}

/* Per thread: the walk's output vectors and level buffers, kept between calls (up to KEEP_BYTES
 * each, ~20 MB at most per thread). Fresh megabytes per call were a third of a full-vocabulary
 * walk in page faults and reallocation copies. The walk runs without the GIL: one pool per thread. */
#define KEEP_BYTES ((size_t)2 << 20)  /* (a 131k vocabulary: a full walk needs 1 MB per vector) */
static __thread vec tl_out[7];
static __thread frame *tl_frames[2];
static __thread Py_ssize_t tl_frames_cap[2];

static void keep_vec(vec *v, vec *slot) {
    if (!slot->p && (size_t)v->cap * sizeof(int64_t) <= KEEP_BYTES) { *slot = *v; slot->n = 0; }
    else free(v->p);
    v->p = NULL;
}

static void keep_frames(frame *f, Py_ssize_t cap, int k) {
    if (!tl_frames[k] && (size_t)cap * sizeof(frame) <= KEEP_BYTES) { tl_frames[k] = f; tl_frames_cap[k] = cap; }
    else free(f);
}

static PyObject *split_core(const int64_t *ends, Py_ssize_t k, const char *rows, Py_ssize_t W, const int64_t *groups,
                            const int64_t *lev, const int64_t *node, const int64_t *prev, Py_ssize_t E,
                            const int64_t *chosen);

/* The walk itself on arguments its callers parsed and checked (cwalk: one call's buffers; walk_at:
 * a lexer's, held by a walker capsule, and the call's own); holds no buffer, releases the GIL
 * around the loop. */
typedef struct {
    const int64_t *trans, *bc, *off, *starts, *isi, *ilev, *inode, *ist, *cs, *ci, *cls, *split_chosen, *ifirst;
    const trie_node *nd;
    const uint64_t *runmask, *sigma;
    const uint8_t *first, *first_ok;
    Py_ssize_t n_classes, n_roots, n_starts, n_inj, n_words, n_states;
    int want_exits;
    long long max_produced;
} walk_in;

static PyObject *walk_core(const walk_in *w) {
    const int64_t *trans = w->trans, *bc = w->bc, *off = w->off, *starts = w->starts, *isi = w->isi, *ilev = w->ilev,
                  *inode = w->inode, *ist = w->ist, *cs = w->cs, *ci = w->ci, *cls = w->cls,
                  *split_chosen = w->split_chosen, *ifirst = w->ifirst;
    const trie_node *nd = w->nd;
    const uint64_t *runmask = w->runmask;
    const uint8_t *first = w->first, *first_ok = w->first_ok;
    const Py_ssize_t n_classes = w->n_classes, n_roots = w->n_roots, n_starts = w->n_starts, n_inj = w->n_inj,
                     n_words = w->n_words, n_states = w->n_states;
    const int want_exits = w->want_exits;
    const long long max_produced = w->max_produced;
    uint64_t s0 = 0, s1 = 0, s2 = 0;
    if (runmask) {  /* bits outside sigma */
        s0 = ~w->sigma[0]; s1 = ~w->sigma[1]; s2 = ~w->sigma[2];
    }
    const int grouped = cs != NULL;
    int64_t *gid = NULL;
    uint32_t *rows = NULL;
    vec ends = {0};
    Py_ssize_t rows_cap = 0;
    if (grouped) {
        gid = malloc((size_t)(n_states + 1) * sizeof(int64_t));
        if (!gid) return PyErr_NoMemory();
        for (Py_ssize_t q = 0; q < n_states; q++) gid[q] = -1;
    }
    /* a node's class is bc[node.sym]: sym is the node's byte (or class), bc its class (256 entries) */
    Py_ssize_t n_kept = 0;

    vec out[7] = {{0}};
    /* Level by level: ``cur`` holds the surviving nodes of one level whose children are still to
     * visit, ``nxt`` collects the next level's. Children of consecutive nodes are consecutive in
     * the trie's level order, so each level is read front to back (240 walks recorded from a
     * compile and a document's masks: 17.5 ms, depth first 20.7 ms). */
    frame *cur = tl_frames[0], *nxt = tl_frames[1];
    Py_ssize_t ncur = 0, ccap = tl_frames_cap[0], nn = 0, ncap = tl_frames_cap[1];
    tl_frames[0] = tl_frames[1] = NULL;
    for (int j = 0; j < 7; j++) { out[j] = tl_out[j]; out[j].n = 0; tl_out[j].p = NULL; tl_out[j].cap = 0; }
    long long produced = 0;
    int overflow = 0, nomem = 0;
    PyObject *result = NULL;

#define EMIT(K, X) do { if (vec_push(&out[K], (X))) { nomem = 1; goto done; } } while (0)
#define PUSH_NEXT(N, P, L, S) PUSH_TO(nxt, nn, ncap, N, P, L, S)

    /* A frame is a surviving node (reached in state f.prev) whose children are still to visit;
     * children are stepped in place and only the surviving ones with children are kept. */
#define VISIT(C, PREV, LEVEL, SI)                                                          \
    do {                                                                               \
        int64_t c_ = (C), st_;                                                         \
        if (runmask && first_ok[first[c_]] &&                                          \
            !((runmask[3 * c_] & s0) | (runmask[3 * c_ + 1] & s1) | (runmask[3 * c_ + 2] & s2))) break; \
        st_ = trans[(PREV) * n_classes + bc[nd[c_].sym]];                              \
        if (st_ < 0) {                                                                 \
            if (st_ == -2 && want_exits) {                                             \
                EMIT(3, (SI)); EMIT(4, (LEVEL)); EMIT(5, c_ - off[(LEVEL)]); EMIT(6, (PREV)); \
            }                                                                          \
            break;                                                                     \
        }                                                                              \
        if (++produced > max_produced) { overflow = 1; goto done; }                    \
        if (nd[c_].has) {                                                              \
            if (grouped) { if (add_tokens(&rows, &ends, &rows_cap, gid, cls, st_, n_words, cs, ci, c_)) { nomem = 1; goto done; } } \
            else { EMIT(0, (SI)); EMIT(1, c_); EMIT(2, st_); }                         \
        }                                                                              \
        if (nd[c_].n_children) PUSH_NEXT(c_, st_, (LEVEL), (SI));                      \
    } while (0)

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n_starts + n_inj; i++) {
        nn = 0;
        if (i < n_starts) {
            for (int64_t r = 0; r < n_roots; r++) VISIT(r, starts[i], 0, i);
        } else {
            Py_ssize_t j = i - n_starts;
            int64_t g = off[ilev[j]] + inode[j], st = ifirst ? ifirst[nd[g].sym] : ist[j], si = ifirst ? 0 : isi[j];
            if (st < 0) continue;
            n_kept++;
            if (nd[g].has) {
                if (grouped) { if (add_tokens(&rows, &ends, &rows_cap, gid, cls, st, n_words, cs, ci, g)) { nomem = 1; goto done; } }
                else { EMIT(0, si); EMIT(1, g); EMIT(2, st); }
            }
            if (nd[g].n_children) PUSH_NEXT(g, st, ilev[j], si);
        }
        while (nn) {
            frame *t_ = cur; cur = nxt; nxt = t_;
            Py_ssize_t tc_ = ccap; ccap = ncap; ncap = tc_;
            ncur = nn;
            nn = 0;
            for (Py_ssize_t k = 0; k < ncur; k++) {
                frame f = cur[k];
                for (int64_t c = nd[f.node].lo, e = c + nd[f.node].n_children; c < e; c++)
                    VISIT(c, f.prev, f.level + 1, f.si);
            }
        }
    }
#undef VISIT
#undef PUSH_NEXT
done:
    Py_END_ALLOW_THREADS

    if (nomem) {
        PyErr_NoMemory();
    } else if (overflow) {
        result = Py_None;
        Py_INCREF(result);
    } else if (ifirst && !n_starts && !n_kept) {
        result = Py_False;
        Py_INCREF(result);
    } else if (split_chosen) {
        result = split_core(ends.p, ends.n, (const char *)rows, n_words, cls, out[4].p, out[5].p, out[6].p, out[6].n,
                            split_chosen);
    } else {
        /* grouped: (ends, rows) in place of (si, node, end) */
        int head = grouped ? 2 : 3, k = head + (want_exits ? 4 : 0);
        result = PyTuple_New(k);
        if (result && grouped) {
            PyObject *a = vec_bytes(&ends), *b = PyBytes_FromStringAndSize((const char *)rows, ends.n * n_words * 4);
            if (!a || !b) { Py_XDECREF(a); Py_XDECREF(b); Py_CLEAR(result); }
            else { PyTuple_SET_ITEM(result, 0, a); PyTuple_SET_ITEM(result, 1, b); }
        }
        for (int j = grouped ? 2 : 0; result && j < k; j++) {
            PyObject *b = vec_bytes(&out[j + 3 - head]);
            if (!b) { Py_CLEAR(result); break; }
            PyTuple_SET_ITEM(result, j, b);
        }
    }
    keep_frames(cur, ccap, 0);
    keep_frames(nxt, ncap, 1);
    for (int j = 0; j < 7; j++) keep_vec(&out[j], &tl_out[j]);
    free(rows);
    free(ends.p);
    free(gid);
    return result;
}

static PyObject *cwalk(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_nodes, b_bc, b_off, b_starts, b_isi, b_ilev, b_inode, b_ist;
    Py_ssize_t n_classes, n_roots;
    int want_exits;
    long long max_produced;
    /* Optional: csr_start, csr_ids (tokens ending at each node), n_words, n_states: then the
     * token-ending nodes are not listed but their tokens' bits set in one packed row per end state,
     * and the result starts (ends, rows) instead of (si, node, end): the end states in the order of
     * their rows, and the rows as bytes of int32[len(ends) * n_words]. */
    Py_buffer b_cs = {0}, b_ci = {0}, b_run = {0}, b_first = {0}, b_sigma = {0}, b_fok = {0}, b_cls = {0},
              b_chosen = {0}, b_ifirst = {0};
    Py_ssize_t n_words = 0, n_states = 0;
    /* Optional after those: runmask (uint64 [n_nodes * 3]), first (uint8 [n_nodes]), sigma (uint64
     * [3]), first_ok (uint8 [256]): a node whose runmask is inside sigma and whose first byte is
     * first_ok is not visited (dotvllm_plugin.runs accounts for its tokens); None for no such skip.
     * Optional after those: cls (int64 [n_states], each in 0 .. n_states - 1, or None): the rows are
     * per group of end states (``cls`` equal), each reported under the first of its states reached.
     * Optional after that: chosen (int64 [n_states], with cls and exits): the result is split_core's
     * of the walk's own buffers, not the buffers. Optional after that: ifirst (int64 [256], byte
     * views only): an injected node's state is ifirst[its byte], the node dropped where that is
     * negative (``ist`` and ``isi`` are then not read: pass empty ones); False when none is kept and
     * there are no root starts. */
    if (!PyArg_ParseTuple(args, "y*ny*y*y*ny*y*y*y*y*pL|y*y*nnz*z*z*z*z*z*z*", &b_trans, &n_classes, &b_nodes, &b_bc,
                          &b_off, &n_roots, &b_starts, &b_isi, &b_ilev, &b_inode, &b_ist, &want_exits, &max_produced,
                          &b_cs, &b_ci, &n_words, &n_states, &b_run, &b_first, &b_sigma, &b_fok, &b_cls, &b_chosen,
                          &b_ifirst))
        return NULL;
    Py_buffer *const held[] = {&b_trans, &b_nodes, &b_bc, &b_off, &b_starts, &b_isi, &b_ilev, &b_inode, &b_ist,
                               &b_cs, &b_ci, &b_run, &b_first, &b_sigma, &b_fok, &b_cls, &b_chosen,
                               &b_ifirst};  /* (unset ones are zeroed) */
#define RELEASE_HELD() for (size_t h_ = 0; h_ < sizeof held / sizeof *held; h_++) PyBuffer_Release(held[h_])
    const uint64_t *runmask = b_run.buf;
    const uint8_t *first = b_first.buf, *first_ok = b_fok.buf;
    if (runmask && (b_run.len < b_nodes.len * 3 || b_first.len * 8 < b_nodes.len || b_sigma.len != 24 || b_fok.len != 256)) {
        RELEASE_HELD();
        PyErr_SetString(PyExc_ValueError, "run arguments: 3 mask words and a first byte per node, sigma 3 words, first_ok 256");
        return NULL;
    }
    const int64_t *cls = b_cls.buf, *split_chosen = b_chosen.buf, *ifirst = b_ifirst.buf;
    if ((split_chosen && (!cls || !want_exits || !b_cs.buf || b_chosen.len != n_states * 8)) ||
        (ifirst && b_ifirst.len != 256 * 8)) {
        RELEASE_HELD();
        PyErr_SetString(PyExc_ValueError, "chosen: with rows, groups and exits, one per state; ifirst: 256 states");
        return NULL;
    }
    if (cls) {
        int bad = b_cls.len < n_states * 8;
        for (Py_ssize_t q = 0; !bad && q < n_states; q++) bad = cls[q] < 0 || cls[q] >= n_states;
        if (bad) {
            RELEASE_HELD();
            PyErr_SetString(PyExc_ValueError, "cls: one group in 0 .. n_states - 1 per state");
            return NULL;
        }
    }
    if (ifirst && b_inode.len != b_ilev.len) {
        RELEASE_HELD();
        PyErr_SetString(PyExc_ValueError, "ifirst: one node per level");
        return NULL;
    }
    walk_in w = {
        .trans = b_trans.buf, .bc = b_bc.buf, .off = b_off.buf, .starts = b_starts.buf, .isi = b_isi.buf,
        .ilev = b_ilev.buf, .inode = b_inode.buf, .ist = b_ist.buf, .cs = b_cs.buf, .ci = b_ci.buf, .cls = cls,
        .split_chosen = split_chosen, .ifirst = ifirst, .nd = b_nodes.buf, .runmask = runmask, .sigma = b_sigma.buf,
        .first = first, .first_ok = first_ok, .n_classes = n_classes, .n_roots = n_roots, .n_starts = b_starts.len / 8,
        .n_inj = (ifirst ? b_ilev.len : b_isi.len) / 8, .n_words = n_words, .n_states = n_states,
        .want_exits = want_exits, .max_produced = max_produced};
    PyObject *result = walk_core(&w);
    RELEASE_HELD();
#undef RELEASE_HELD
    return result;
}

/* The buffers of ``objs[0..n)`` into ``b``, all of them or none (those taken released): 0, or -1 with
 * the error set. What a capsule of held tables (a walker, a ball reader) takes once. */
static int hold_buffers(PyObject *const *objs, Py_buffer *b, int n) {
    for (int i = 0; i < n; i++) {
        if (PyObject_GetBuffer(objs[i], &b[i], PyBUF_SIMPLE) < 0) {
            while (i--) PyBuffer_Release(&b[i]);
            return -1;
        }
    }
    return 0;
}

/* walker(trans, n_classes, nodes, bc, level_off, n_roots, csr_start, csr_ids, n_words, n_states, cls, chosen,
 * max_produced) -> a capsule that walk_at reads: what cwalk reads of one lexer and one trie view
 * for the pushdown matcher's walks (grouped rows, exits, split by ``chosen``), checked once and
 * held (their buffers): a walk's own call then parses a few small arguments, not eighteen. */
typedef struct {
    Py_buffer b[8];  /* trans, nodes, bc, level_off, csr_start, csr_ids, cls, chosen */
    walk_in w;
} walker_cap;

static void walker_cap_free(PyObject *cap) {
    walker_cap *r = PyCapsule_GetPointer(cap, "dotvllm.walker");
    if (!r) return;
    for (int i = 0; i < 8; i++) PyBuffer_Release(&r->b[i]);
    free(r);
}

static PyObject *walker(PyObject *self, PyObject *args) {
    PyObject *o[8];
    Py_ssize_t n_classes, n_roots, n_words, n_states;
    long long max_produced;
    if (!PyArg_ParseTuple(args, "OnOOOnOOnnOOL", &o[0], &n_classes, &o[1], &o[2], &o[3], &n_roots, &o[4], &o[5],
                          &n_words, &n_states, &o[6], &o[7], &max_produced))
        return NULL;
    walker_cap *r = calloc(1, sizeof *r);
    if (!r) return PyErr_NoMemory();
    int held = hold_buffers(o, r->b, 8) == 0;
    PyObject *cap = NULL;
    if (held) {
        const int64_t *cls = r->b[6].buf;
        int bad = n_classes <= 0 || n_states <= 0 || n_words <= 0 || n_roots < 0 ||
                  r->b[0].len < n_states * n_classes * 8 || r->b[2].len != 256 * 8 || r->b[3].len < 8 ||
                  r->b[6].len < n_states * 8 || r->b[7].len != n_states * 8 || r->b[1].len % 8;
        for (Py_ssize_t q = 0; !bad && q < n_states; q++) bad = cls[q] < 0 || cls[q] >= n_states;
        /* the tokens ending at each node (CSR over the trie's nodes, made by token_csr, ids trusted as
         * the trie's are): one start per node and one past, from 0 to the ids' end */
        Py_ssize_t n_nodes = r->b[1].len / 8;
        const int64_t *csr = r->b[4].buf;
        if (!bad)
            bad = r->b[4].len != (n_nodes + 1) * 8 || r->b[5].len % 8 || csr[0] != 0 || csr[n_nodes] != r->b[5].len / 8;
        const int64_t *trans = r->b[0].buf, *bcs = r->b[2].buf;  /* (every target a state, -1 or -2) */
        for (Py_ssize_t i = 0; !bad && i < n_states * n_classes; i++) bad = trans[i] < -2 || trans[i] >= n_states;
        for (int b = 0; !bad && b < 256; b++) bad = bcs[b] < 0 || bcs[b] >= n_classes;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "walker: a table of n_states * n_classes (targets -2 .. n_states - 1), "
                                              "256 byte classes below n_classes, level offsets, the tokens of each "
                                              "node (CSR), one group in 0 .. n_states - 1 and one terminal per state");
        } else {
            walk_in *w = &r->w;
            w->trans = r->b[0].buf; w->nd = r->b[1].buf; w->bc = r->b[2].buf; w->off = r->b[3].buf;
            w->cs = r->b[4].buf; w->ci = r->b[5].buf; w->cls = cls; w->split_chosen = r->b[7].buf;
            w->n_classes = n_classes; w->n_roots = n_roots; w->n_words = n_words; w->n_states = n_states;
            w->want_exits = 1; w->max_produced = max_produced;
            cap = PyCapsule_New(r, "dotvllm.walker", walker_cap_free);
        }
    }
    if (!cap) {
        for (int i = 0; held && i < 8; i++) PyBuffer_Release(&r->b[i]);
        free(r);
    }
    return cap;
}

/* walk_at(walker, starts, inj_level, inj_node, ifirst, runmask, first, sigma, first_ok): cwalk's
 * walk of the walker's lexer, split (split_core's result; None past max_produced; False where
 * ``ifirst`` keeps no node and there are no starts). ``starts`` (int64 local states) or None;
 * ``inj_level``, ``inj_node`` and ``ifirst`` (int64, 256 states) all three or None: nodes resumed at
 * ifirst[their byte]; the last four (the run skip) all four or None. */
static PyObject *walk_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "walk_at(walker, starts, inj_level, inj_node, ifirst, runmask, first, sigma, first_ok)");
        return NULL;
    }
    walker_cap *r = PyCapsule_GetPointer(args[0], "dotvllm.walker");
    if (!r) return NULL;
    Py_buffer b[8] = {{0}};  /* starts, inj_level, inj_node, ifirst, runmask, first, sigma, first_ok */
    int got = 1;
    for (int i = 0; got && i < 8; i++)
        if (args[i + 1] != Py_None && PyObject_GetBuffer(args[i + 1], &b[i], PyBUF_SIMPLE) < 0) got = 0;
    walk_in w = r->w;
    const char *bad = NULL;
    if (got) {
        int inj = b[1].buf != NULL, run = b[4].buf != NULL;
        if (inj != (b[2].buf != NULL) || inj != (b[3].buf != NULL) || (inj && (b[1].len != b[2].len || b[3].len != 256 * 8)))
            bad = "inj_level, inj_node and ifirst: all three (one node per level, 256 states) or none";
        else if (run != (b[5].buf != NULL) || run != (b[6].buf != NULL) || run != (b[7].buf != NULL) ||
                 (run && (b[4].len < r->b[1].len * 3 || b[5].len * 8 < r->b[1].len || b[6].len != 24 || b[7].len != 256)))
            bad = "run arguments: 3 mask words and a first byte per node, sigma 3 words, first_ok 256; all four or none";
        else if (b[0].len % 8 || b[1].len % 8)
            bad = "starts and injected nodes: int64";
        if (!bad) {
            w.starts = b[0].buf; w.n_starts = b[0].len / 8;
            w.ilev = b[1].buf; w.inode = b[2].buf; w.ifirst = b[3].buf; w.n_inj = b[1].len / 8;
            w.runmask = b[4].buf; w.first = b[5].buf; w.sigma = b[6].buf; w.first_ok = b[7].buf;
            for (Py_ssize_t i = 0; i < w.n_starts && !bad; i++)
                if (w.starts[i] < 0 || w.starts[i] >= w.n_states) bad = "starts: local states";
            Py_ssize_t depth = r->b[3].len / 8 - 1;  /* (levels: level_off has one more entry) */
            for (Py_ssize_t i = 0; i < w.n_inj && !bad; i++)
                if (w.ilev[i] < 0 || w.ilev[i] >= depth || w.inode[i] < 0 || w.inode[i] >= w.off[w.ilev[i] + 1] - w.off[w.ilev[i]])
                    bad = "injected nodes: a level of the trie and a node of that level";
        }
        if (bad) PyErr_SetString(PyExc_ValueError, bad);
    }
    PyObject *result = got && !bad ? walk_core(&w) : NULL;
    for (int i = 0; i < 8; i++) PyBuffer_Release(&b[i]);  /* (unset ones are zeroed) */
    return result;
}

/* split_core(ends[k], k, rows, n_words, groups int64[n], ex_level, ex_node, ex_prev [E], E, chosen
 * int64[n]) -> (free, pending, exits): a grouped walk's result (its end states, their rows, and the
 * exits' level, node and previous state, as ``walk`` collects them) as the pushdown matcher keeps it: ``free`` the row of group 0 (bytes of int32[n_words]) or None,
 * ``pending`` ((end state, row bytes), ...) for the other groups in the walk's order, ``exits``
 * ((terminal, level bytes, node bytes), ...) the exits by the terminal their lexeme ends
 * (``chosen[prev]``), terminals ascending, each group's exits in the walk's order. */
static PyObject *split_core(const int64_t *ends, Py_ssize_t k, const char *rows, Py_ssize_t W, const int64_t *groups,
                            const int64_t *lev, const int64_t *node, const int64_t *prev, Py_ssize_t E,
                            const int64_t *chosen) {
    PyObject *free_row = Py_None, *pending = NULL, *exits = NULL, *result = NULL;
    Py_INCREF(Py_None);
    Py_ssize_t n_pending = 0;
    for (Py_ssize_t i = 0; i < k; i++) n_pending += groups[ends[i]] != 0;
    pending = PyTuple_New(n_pending);
    if (!pending) goto fail;
    for (Py_ssize_t i = 0, j = 0; i < k; i++) {
        PyObject *row = PyBytes_FromStringAndSize(rows + i * W * 4, W * 4);
        if (!row) goto fail;
        if (groups[ends[i]] == 0) {
            Py_SETREF(free_row, row);
        } else {
            PyObject *pair = Py_BuildValue("(LN)", (long long)ends[i], row);
            if (!pair) goto fail;
            PyTuple_SET_ITEM(pending, j++, pair);
        }
    }
    /* the distinct terminals, ascending (few: one, mostly) */
    int64_t *terms = E ? malloc((size_t)E * 8) : NULL;
    Py_ssize_t m = 0;
    if (E && !terms) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < E; i++) {
        int64_t t = chosen[prev[i]];
        Py_ssize_t a = 0;
        while (a < m && terms[a] < t) a++;
        if (a < m && terms[a] == t) continue;
        memmove(terms + a + 1, terms + a, (size_t)(m - a) * 8);
        terms[a] = t;
        m++;
    }
    exits = PyTuple_New(m);
    if (!exits) { free(terms); goto fail; }
    for (Py_ssize_t a = 0; a < m; a++) {
        Py_ssize_t c = 0;
        for (Py_ssize_t i = 0; i < E; i++) c += chosen[prev[i]] == terms[a];
        PyObject *bl = PyBytes_FromStringAndSize(NULL, c * 8), *bn = PyBytes_FromStringAndSize(NULL, c * 8);
        if (!bl || !bn) { Py_XDECREF(bl); Py_XDECREF(bn); free(terms); goto fail; }
        int64_t *pl = (int64_t *)PyBytes_AS_STRING(bl), *pn = (int64_t *)PyBytes_AS_STRING(bn);
        for (Py_ssize_t i = 0, j = 0; i < E; i++)
            if (chosen[prev[i]] == terms[a]) { pl[j] = lev[i]; pn[j] = node[i]; j++; }
        PyObject *g = Py_BuildValue("(LNN)", (long long)terms[a], bl, bn);
        if (!g) { free(terms); goto fail; }
        PyTuple_SET_ITEM(exits, a, g);
    }
    free(terms);
    result = PyTuple_Pack(3, free_row, pending, exits);
fail:
    Py_XDECREF(free_row);
    Py_XDECREF(pending);
    Py_XDECREF(exits);
    return result;
}

/* token_csr(token_node int64[V], n_nodes) -> (start int64[n_nodes+1], ids int64[...]) as bytes:
 * the tokens ending at each node (token_node -1: none), by counting sort. */
static PyObject *token_csr(PyObject *self, PyObject *args) {
    Py_buffer b_tn;
    Py_ssize_t n_nodes;
    if (!PyArg_ParseTuple(args, "y*n", &b_tn, &n_nodes)) return NULL;
    const int64_t *tn = b_tn.buf;
    Py_ssize_t V = b_tn.len / 8, total = 0;
    PyObject *b_start = PyBytes_FromStringAndSize(NULL, (n_nodes + 1) * 8);
    if (!b_start) { PyBuffer_Release(&b_tn); return NULL; }
    int64_t *start = (int64_t *)PyBytes_AS_STRING(b_start);
    for (Py_ssize_t i = 0; i <= n_nodes; i++) start[i] = 0;
    for (Py_ssize_t t = 0; t < V; t++)
        if (tn[t] >= 0) { start[tn[t] + 1]++; total++; }
    for (Py_ssize_t i = 0; i < n_nodes; i++) start[i + 1] += start[i];
    PyObject *b_ids = PyBytes_FromStringAndSize(NULL, total * 8);
    int64_t *fill = malloc((size_t)(n_nodes + 1) * sizeof(int64_t));
    if (!b_ids || !fill) {
        Py_DECREF(b_start); Py_XDECREF(b_ids); free(fill); PyBuffer_Release(&b_tn);
        return PyErr_NoMemory();
    }
    int64_t *ids = (int64_t *)PyBytes_AS_STRING(b_ids);
    for (Py_ssize_t i = 0; i <= n_nodes; i++) fill[i] = start[i];
    for (Py_ssize_t t = 0; t < V; t++)
        if (tn[t] >= 0) ids[fill[tn[t]]++] = t;
    free(fill);
    PyBuffer_Release(&b_tn);
    return Py_BuildValue("(NN)", b_start, b_ids);
}

/* token_bits(start, ids, nodes int64[k], n_words) -> bytes of int32[n_words]: bit t%32 of word
 * t/32 set for every token t ending at one of ``nodes``. */
static PyObject *token_bits(PyObject *self, PyObject *args) {
    Py_buffer b_start, b_ids, b_nodes;
    Py_ssize_t n_words;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &b_start, &b_ids, &b_nodes, &n_words)) return NULL;
    const int64_t *start = b_start.buf, *ids = b_ids.buf, *nodes = b_nodes.buf;
    Py_ssize_t k = b_nodes.len / 8;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n_words * 4);
    if (out) {
        uint32_t *w = (uint32_t *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n_words; i++) w[i] = 0;
        for (Py_ssize_t i = 0; i < k; i++)
            for (int64_t j = start[nodes[i]]; j < start[nodes[i] + 1]; j++)
                w[ids[j] >> 5] |= (uint32_t)1 << (ids[j] & 31);
    }
    PyBuffer_Release(&b_start); PyBuffer_Release(&b_ids); PyBuffer_Release(&b_nodes);
    return out;
}

/* Whether token t is one of run_rows' tokens: whole characters (count >= 1), first byte first_ok,
 * every other character inside sigma (o = ~sigma). */
static inline int run_token(Py_ssize_t t, const int64_t *cnt, const uint8_t *first, const uint8_t *first_ok,
                            const uint64_t *m, uint64_t o0, uint64_t o1, uint64_t o2) {
    return cnt[t] >= 1 && first_ok[first[t]] && !((m[3 * t] & o0) | (m[3 * t + 1] & o1) | (m[3 * t + 2] & o2));
}

/* run_rows_at(row int32[n_words], ids int64[k], tokmask, first, count, sigma, first_ok) -> bytes of
 * int32[n_words]: a copy of row 0 of run_rows (another first_ok's) with the bits of tokens ids set as
 * run_rows sets them for this first_ok and sigma (the tokens whose first byte the two first_ok read
 * alike keep their bits). */
static PyObject *run_rows_at(PyObject *self, PyObject *args) {
    Py_buffer b_row, b_ids, b_mask, b_first, b_count, b_sigma, b_fok;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*", &b_row, &b_ids, &b_mask, &b_first, &b_count, &b_sigma, &b_fok))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t V = b_count.len / 8, k = b_ids.len / 8;
    const int64_t *ids = b_ids.buf, *cnt = b_count.buf;
    int ok = b_mask.len >= V * 24 && b_first.len >= V && b_sigma.len == 24 && b_fok.len == 256 && b_row.len * 8 >= V;
    for (Py_ssize_t i = 0; ok && i < k; i++) ok = ids[i] >= 0 && ids[i] < V;
    if (!ok) PyErr_SetString(PyExc_ValueError, "run_rows_at: inconsistent sizes or ids");
    else out = PyBytes_FromStringAndSize(b_row.buf, b_row.len);
    if (out) {
        uint32_t *w = (uint32_t *)PyBytes_AS_STRING(out);
        const uint8_t *first = b_first.buf, *first_ok = b_fok.buf;
        const uint64_t *m = b_mask.buf, *sg = b_sigma.buf;
        uint64_t o0 = ~sg[0], o1 = ~sg[1], o2 = ~sg[2];
        for (Py_ssize_t i = 0; i < k; i++) {
            int64_t t = ids[i];
            uint32_t bit = (uint32_t)1 << (t & 31);
            if (run_token(t, cnt, first, first_ok, m, o0, o1, o2)) w[t >> 5] |= bit;
            else w[t >> 5] &= ~bit;
        }
    }
    PyBuffer_Release(&b_row); PyBuffer_Release(&b_ids); PyBuffer_Release(&b_mask); PyBuffer_Release(&b_first);
    PyBuffer_Release(&b_count); PyBuffer_Release(&b_sigma); PyBuffer_Release(&b_fok);
    return out;
}

/* run_rows(tokmask uint64[V * 3], first uint8[V], count int64[V], sigma uint64[3], first_ok uint8[256],
 * max_count, n_words[, cumulative]) -> bytes of int32[(max_count + 1) * n_words]: row 0 the tokens
 * whose mask is inside sigma and whose first byte is first_ok (count >= 1), row c those of them with
 * c characters (c <= max_count), or with 1 to c characters when ``cumulative``. See
 * dotvllm_plugin.runs. */
static PyObject *run_rows(PyObject *self, PyObject *args) {
    Py_buffer b_mask, b_first, b_count, b_sigma, b_fok;
    Py_ssize_t max_count, n_words;
    int cumulative = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*nn|p", &b_mask, &b_first, &b_count, &b_sigma, &b_fok, &max_count, &n_words,
                          &cumulative))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t V = b_count.len / 8;
    const uint8_t *first = b_first.buf, *first_ok = b_fok.buf;
    if (b_mask.len < V * 24 || b_first.len < V || b_sigma.len != 24 || b_fok.len != 256 || max_count < 0 ||
        n_words * 32 < V) {
        PyErr_SetString(PyExc_ValueError, "run_rows: inconsistent sizes");
    } else {
        out = PyBytes_FromStringAndSize(NULL, (max_count + 1) * n_words * 4);
    }
    if (out) {
        uint32_t *w = (uint32_t *)PyBytes_AS_STRING(out);
        const uint64_t *m = b_mask.buf, *sg = b_sigma.buf;
        const int64_t *cnt = b_count.buf;
        uint64_t o0 = ~sg[0], o1 = ~sg[1], o2 = ~sg[2];
        memset(w, 0, (size_t)((max_count + 1) * n_words) * 4);
        for (Py_ssize_t t = 0; t < V; t++) {
            int64_t c = cnt[t];
            if (!run_token(t, cnt, first, first_ok, m, o0, o1, o2)) continue;
            uint32_t bit = (uint32_t)1 << (t & 31);
            w[t >> 5] |= bit;
            if (c <= max_count) w[c * n_words + (t >> 5)] |= bit;
        }
        for (Py_ssize_t c = 2; cumulative && c <= max_count; c++)
            for (Py_ssize_t j = 0; j < n_words; j++) w[c * n_words + j] |= w[(c - 1) * n_words + j];
    }
    PyBuffer_Release(&b_mask); PyBuffer_Release(&b_first); PyBuffer_Release(&b_count); PyBuffer_Release(&b_sigma);
    PyBuffer_Release(&b_fok);
    return out;
}

/* longest_path(trans int64[n * C], C) -> the length in steps of the longest path of the automaton
 * (-1 targets are dead), or -1 when it has a cycle (Kahn's order, then longest path backwards). */
static PyObject *longest_path(PyObject *self, PyObject *args) {
    Py_buffer b_trans;
    Py_ssize_t C;
    if (!PyArg_ParseTuple(args, "y*n", &b_trans, &C)) return NULL;
    const int64_t *t = b_trans.buf;
    Py_ssize_t n = C ? b_trans.len / 8 / C : 0;
    int64_t *indeg = calloc((size_t)n + 1, 8), *order = malloc(((size_t)n + 1) * 8), *longest = calloc((size_t)n + 1, 8);
    long long result = 0;
    if (!indeg || !order || !longest) { free(indeg); free(order); free(longest); PyBuffer_Release(&b_trans); return PyErr_NoMemory(); }
    /* a target reached by several classes of one state counts once per class: consistent with the
     * decrements below, which also go per class */
    for (Py_ssize_t i = 0; i < n * C; i++) if (t[i] >= 0) indeg[t[i]]++;
    Py_ssize_t len = 0;
    for (Py_ssize_t q = 0; q < n; q++) if (!indeg[q]) order[len++] = q;
    for (Py_ssize_t k = 0; k < len; k++)
        for (Py_ssize_t c = 0; c < C; c++) {
            int64_t x = t[order[k] * C + c];
            if (x >= 0 && --indeg[x] == 0) order[len++] = x;
        }
    if (len < n) result = -1;
    else
        for (Py_ssize_t k = len - 1; k >= 0; k--) {
            int64_t q = order[k], best = 0;
            for (Py_ssize_t c = 0; c < C; c++) {
                int64_t x = t[q * C + c];
                if (x >= 0 && longest[x] + 1 > best) best = longest[x] + 1;
            }
            longest[q] = best;
            if (best > result) result = best;
        }
    free(indeg); free(order); free(longest);
    PyBuffer_Release(&b_trans);
    return PyLong_FromLongLong(result);
}

/* gadgets(trans int64[n * n_classes], n_classes, class_order int64[L], roots int64[k], max_depth,
 *         max_size)
 *   -> (members, bounds) as bytes of int64: for each root not already taken, the states within
 * max_depth steps (breadth first, at most ~max_size) that can return to it, in canonical order
 * (breadth first from the root, successors taken in ``class_order``: the byte classes of bytes
 * 0..255, so that look-alike loops of different DFAs get the same labels whatever their classes). Members of gadget i are
 * members[bounds[i]:bounds[i+1]]. A root whose ball meets an earlier gadget is skipped. */
static PyObject *gadgets(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_bc, b_roots;
    Py_ssize_t C, max_depth, max_size;
    if (!PyArg_ParseTuple(args, "y*ny*y*nn", &b_trans, &C, &b_bc, &b_roots, &max_depth, &max_size)) return NULL;
    const int64_t *trans = b_trans.buf, *roots = b_roots.buf, *bc = b_bc.buf;
    Py_ssize_t n = C ? b_trans.len / 8 / C : 0, k = b_roots.len / 8, L = b_bc.len / 8;
    int32_t *depth = malloc((size_t)(n + 1) * sizeof(int32_t)), *label = malloc((size_t)(n + 1) * sizeof(int32_t));
    uint8_t *back = calloc((size_t)n + 1, 1), *taken = calloc((size_t)n + 1, 1);
    int64_t *order = malloc((size_t)(n + 1) * sizeof(int64_t)), *members = malloc((size_t)(n + 1) * sizeof(int64_t));
    vec out = {0}, bounds = {0};
    PyObject *result = NULL;
    if (!depth || !label || !back || !taken || !order || !members) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < n; i++) depth[i] = label[i] = -1;
    if (vec_push(&bounds, 0)) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t r = 0; r < k; r++) {
        int64_t root = roots[r];
        if (taken[root]) continue;
        Py_ssize_t no = 0, nm = 0;
        order[no++] = root;
        depth[root] = 0;
        for (Py_ssize_t i = 0; i < no; i++) {
            int64_t s = order[i];
            if (depth[s] >= max_depth || no > max_size) break;
            for (Py_ssize_t c = 0; c < C; c++) {
                int64_t t = trans[s * C + c];
                if (t >= 0 && depth[t] < 0) { depth[t] = depth[s] + 1; order[no++] = t; }
            }
        }
        back[root] = 1;
        for (int changed = 1; changed;) {
            changed = 0;
            for (Py_ssize_t i = 0; i < no; i++) {
                int64_t s = order[i];
                if (back[s]) continue;
                for (Py_ssize_t c = 0; c < C; c++) {
                    int64_t t = trans[s * C + c];
                    if (t >= 0 && back[t]) { back[s] = 1; changed = 1; break; }
                }
            }
        }
        members[nm++] = root;
        label[root] = 0;
        int clash = taken[root];
        for (Py_ssize_t i = 0; i < nm; i++) {
            int64_t s = members[i];
            for (Py_ssize_t b = 0; b < L; b++) {
                int64_t t = trans[s * C + bc[b]];
                if (t >= 0 && back[t] && label[t] < 0) {
                    label[t] = (int32_t)nm;
                    members[nm++] = t;
                    clash |= taken[t];
                }
            }
        }
        for (Py_ssize_t i = 0; i < no; i++) { depth[order[i]] = -1; back[order[i]] = 0; }
        for (Py_ssize_t i = 0; i < nm; i++) label[members[i]] = -1;
        if (clash) continue;
        for (Py_ssize_t i = 0; i < nm; i++) {
            taken[members[i]] = 1;
            if (vec_push(&out, members[i])) { PyErr_NoMemory(); goto fail; }
        }
        if (vec_push(&bounds, out.n)) { PyErr_NoMemory(); goto fail; }
    }
    result = Py_BuildValue("(NN)", vec_bytes(&out), vec_bytes(&bounds));
fail:
    free(depth); free(label); free(back); free(taken); free(order); free(members); free(out.p); free(bounds.p);
    PyBuffer_Release(&b_trans); PyBuffer_Release(&b_bc); PyBuffer_Release(&b_roots);
    return result;
}

/* subset(entry int32[n_pos * 256], det int32[n_det * 256], fol_start int64[n_pos + 2], fol int64[],
 *        accepting uint8[n_nfa], max_states[, max_work])
 *   -> (transitions bytes of int32[n * 256], accepting bytes of uint8[n]), None past max_states,
 *      or False past max_work steps (per set: its members' follow lists, then 256 bytes over
 *      their union).
 * Subset construction of the position automaton: NFA state 0 is initial, 1 + p is "after
 * position p" (successors: entry rows of the positions in fol[fol_start[s]:fol_start[s+1]]),
 * 1 + n_pos + i is a deterministic mid-character state with row det[i]. DFA state 0 = {0}. */
/* Open-addressing table of ids by 64-bit hash (linear probing; the caller compares contents).
 * ``hashes[id]`` is kept for every inserted id, so the table can grow by rehashing. */
typedef struct {
    int64_t *slots;  /* per slot: an id, -1 empty */
    Py_ssize_t cap;  /* a power of two */
    vec hashes;      /* per id: its hash (stored as int64) */
} table;

static int table_init(table *t, Py_ssize_t cap) {
    t->cap = cap;
    t->slots = malloc((size_t)cap * 8);
    if (!t->slots) return -1;
    for (Py_ssize_t i = 0; i < cap; i++) t->slots[i] = -1;
    return 0;
}

/* First slot for hash ``h``: the probe sequence continues with (slot + 1) & (cap - 1). */
static Py_ssize_t table_slot(const table *t, uint64_t h) { return (Py_ssize_t)(h & (uint64_t)(t->cap - 1)); }

/* Put the next id (= number of ids so far) in the empty ``slot`` found by probing; grows at half full. */
static int table_add(table *t, Py_ssize_t slot, uint64_t h) {
    int64_t id = t->hashes.n;
    if (vec_push(&t->hashes, (int64_t)h)) return -1;
    t->slots[slot] = id;
    if (2 * t->hashes.n <= t->cap) return 0;
    Py_ssize_t nc = t->cap * 2;
    int64_t *ns = malloc((size_t)nc * 8);
    if (!ns) return -1;
    for (Py_ssize_t i = 0; i < nc; i++) ns[i] = -1;
    for (Py_ssize_t j = 0; j < t->hashes.n; j++) {
        Py_ssize_t sl = (Py_ssize_t)((uint64_t)t->hashes.p[j] & (uint64_t)(nc - 1));
        while (ns[sl] >= 0) sl = (sl + 1) & (nc - 1);
        ns[sl] = j;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = nc;
    return 0;
}

static void table_free(table *t) {
    free(t->slots);
    free(t->hashes.p);
}

/* The id of ``row`` (``size`` bytes, a multiple of 4) among the distinct rows kept in ``*pool``
 * (``*count`` of them, room for ``*room``), added when new; -1 when out of memory. */
static int64_t intern_row(table *tab, char **pool, Py_ssize_t *count, Py_ssize_t *room, const void *row, size_t size) {
    const uint32_t *w = row;
    uint64_t h = 0x84222325CBF29CE4ULL;
    for (size_t k = 0; k < size / 4; k++) { h ^= w[k]; h *= 0x100000001B3ULL; h ^= h >> 29; }
    Py_ssize_t slot = table_slot(tab, h);
    while (tab->slots[slot] >= 0) {
        int64_t id = tab->slots[slot];
        if ((uint64_t)tab->hashes.p[id] == h && memcmp(*pool + id * size, row, size) == 0) return id;
        slot = (slot + 1) & (tab->cap - 1);
    }
    if (*count == *room) {
        Py_ssize_t nr = *room ? 2 * *room : 16;
        char *np_ = realloc(*pool, (size_t)nr * size);
        if (!np_) return -1;
        *pool = np_;
        *room = nr;
    }
    memcpy(*pool + *count * size, row, size);
    if (table_add(tab, slot, h)) return -1;
    return (*count)++;
}

static uint64_t set_hash(const int64_t *xs, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (uint64_t)xs[i] + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
        h *= 0xBF58476D1CE4E5B9ULL;
    }
    return h ^ (h >> 31);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The union of the follow lists (CSR ``fs``/``fol``) of DFA state ``d``'s members (``start``
 * offsets into ``pool``; members past ``n_pos`` are mid-character states, no follow list) into
 * ``uni`` (cleared first), each position once (``stamp[p]`` = d + 1 once added); the lists' lengths
 * are added to ``*work``. 0, or -1 out of memory. */
static int follow_union(const int64_t *fs, const int64_t *fol, Py_ssize_t n_pos, const vec *start, const vec *pool,
                        Py_ssize_t d, int64_t *stamp, vec *uni, long long *work) {
    uni->n = 0;
    for (int64_t k = start->p[d]; k < start->p[d + 1]; k++) {
        int64_t s = pool->p[k];
        if (s > n_pos) continue;
        *work += fs[s + 1] - fs[s];
        for (int64_t j = fs[s]; j < fs[s + 1]; j++) {
            int64_t p = fol[j];
            if (stamp[p] != d + 1) {
                stamp[p] = d + 1;
                if (vec_push(uni, p)) return -1;
            }
        }
    }
    return 0;
}

/* The result of a subset construction (``subset``, ``subset_classes``): None past max_states, False
 * past the work budget, else (trans bytes of int32[n * 256], accepting bytes of bool[n]) from the
 * rows in ``*trb`` (taken) and each DFA state's NFA states (``start`` offsets into ``pool``); NULL
 * with MemoryError when out of memory. */
static PyObject *subset_result(int nomem, int over, int heavy, PyObject **trb, const vec *start, const vec *pool,
                               const uint8_t *acc_nfa) {
    if (nomem) return PyErr_NoMemory();
    if (over || heavy) {
        PyObject *result = over ? Py_None : Py_False;
        Py_INCREF(result);
        return result;
    }
    Py_ssize_t n = start->n - 1;
    PyObject *bt = *trb, *ba = PyBytes_FromStringAndSize(NULL, n);
    *trb = NULL;
    if (bt && _PyBytes_Resize(&bt, n * 256 * 4)) bt = NULL;
    if (!bt || !ba) {
        Py_XDECREF(bt); Py_XDECREF(ba);
        return NULL;
    }
    uint8_t *a = (uint8_t *)PyBytes_AS_STRING(ba);
    for (Py_ssize_t d = 0; d < n; d++) {
        a[d] = 0;
        for (int64_t k = start->p[d]; k < start->p[d + 1]; k++) a[d] |= acc_nfa[pool->p[k]];
    }
    return Py_BuildValue("(NN)", bt, ba);
}

static PyObject *subset(PyObject *self, PyObject *args) {
    Py_buffer b_entry, b_det, b_fs, b_fol, b_acc;
    Py_ssize_t max_states;
    long long max_work = -1;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*n|L", &b_entry, &b_det, &b_fs, &b_fol, &b_acc, &max_states, &max_work))
        return NULL;
    if (max_work < 0) max_work = LLONG_MAX;
    long long work = 0;
    vec uni = {0};  /* the current set's successor positions (see below) */
    int heavy = 0;
    const int32_t *entry = b_entry.buf, *det = b_det.buf;
    const int64_t *fs = b_fs.buf, *fol = b_fol.buf;
    const uint8_t *acc_nfa = b_acc.buf;
    Py_ssize_t n_pos = b_fs.len / 8 - 2;
    PyObject *result = NULL;
    vec pool = {0}, start = {0};  /* sets: pool[start[i]:start[i+1]] */
    PyObject *trb = NULL;  /* the DFA's rows, 256 per state: the result's bytes, grown in place */
    Py_ssize_t trn = 0, trcap = 0;
    table tab = {0};
    vec buf = {0};  /* one byte's target set */
    int nomem = 0, over = 0;

    Py_ssize_t n_entry = b_entry.len / (256 * 4);
    int64_t *stamp = calloc((size_t)n_entry + 1, sizeof(int64_t));  /* position -> last set (+1) it joined */
    if (!stamp || table_init(&tab, 1024) || vec_push(&start, 0) || vec_push(&pool, 0) || vec_push(&start, 1)) {
        nomem = 1;
        goto done;
    }
    {
        uint64_t h = set_hash(pool.p, 1);
        if (table_add(&tab, table_slot(&tab, h), h)) { nomem = 1; goto done; }
    }
    for (Py_ssize_t d = 0; d < start.n - 1; d++) {
        /* The positions this set can step into: the union of its members' follow sets, once per
         * set (then 256 bytes over the union, not over every member's follow list). */
        if (follow_union(fs, fol, n_pos, &start, &pool, d, stamp, &uni, &work)) { nomem = 1; goto done; }
        work += 256 * (uni.n + (start.p[d + 1] - start.p[d]));
        if (work > max_work) { heavy = 1; goto done; }
        for (int b = 0; b < 256; b++) {
            buf.n = 0;
            for (int64_t k = start.p[d]; k < start.p[d + 1]; k++) {
                int64_t s = pool.p[k];
                if (s > n_pos) {
                    int64_t t = det[(s - 1 - n_pos) * 256 + b];
                    if (t >= 0 && vec_push(&buf, t)) { nomem = 1; goto done; }
                }
            }
            for (Py_ssize_t i = 0; i < uni.n; i++) {
                int64_t t = entry[uni.p[i] * 256 + b];
                if (t >= 0 && vec_push(&buf, t)) { nomem = 1; goto done; }
            }
            Py_ssize_t nt = buf.n;
            int64_t target = -1;
            if (nt) {
                if (nt > 1) {
                    qsort(buf.p, (size_t)nt, sizeof(int64_t), cmp_i64);
                    Py_ssize_t u = 1;
                    for (Py_ssize_t i = 1; i < nt; i++) if (buf.p[i] != buf.p[u - 1]) buf.p[u++] = buf.p[i];
                    nt = u;
                }
                uint64_t h = set_hash(buf.p, nt);
                Py_ssize_t slot = table_slot(&tab, h);
                for (;;) {
                    int64_t id = tab.slots[slot];
                    if (id < 0) break;
                    Py_ssize_t len = start.p[id + 1] - start.p[id];
                    if (len == nt && memcmp(pool.p + start.p[id], buf.p, (size_t)nt * 8) == 0) { target = id; break; }
                    slot = (slot + 1) & (tab.cap - 1);
                }
                if (target < 0) {
                    target = start.n - 1;
                    if (target >= max_states) { over = 1; goto done; }
                    for (Py_ssize_t i = 0; i < nt; i++) if (vec_push(&pool, buf.p[i])) { nomem = 1; goto done; }
                    if (vec_push(&start, pool.n) || table_add(&tab, slot, h)) { nomem = 1; goto done; }
                }
            }
            if (trn == trcap) {
                Py_ssize_t nc = trcap ? 2 * trcap : 256 * 64;
                if (!trb) trb = PyBytes_FromStringAndSize(NULL, nc * 4);
                else if (_PyBytes_Resize(&trb, nc * 4)) trb = NULL;
                if (!trb) { PyErr_Clear(); nomem = 1; goto done; }
                trcap = nc;
            }
            ((int32_t *)PyBytes_AS_STRING(trb))[trn++] = (int32_t)target;
        }
    }
done:
    result = subset_result(nomem, over, heavy, &trb, &start, &pool, acc_nfa);
    free(pool.p); free(start.p); Py_XDECREF(trb); table_free(&tab); free(buf.p); free(uni.p); free(stamp);
    PyBuffer_Release(&b_entry); PyBuffer_Release(&b_det); PyBuffer_Release(&b_fs); PyBuffer_Release(&b_fol);
    PyBuffer_Release(&b_acc);
    return result;
}

/* product(glob, n_classes, dead, start, max_states) -> (trans bytes of int64[n * n_classes],
 *                                                      vecs bytes of int64[n * k]) or None
 * Breadth-first product automaton of k component automata laid out in one class table ``glob``
 * ([N, n_classes], component states offset to be disjoint; ``dead`` is the shared dead state).
 * Product state 0 is ``start`` (k component states), never re-entered (a vector equal to it reached
 * later is a new state); a class whose successor vector is all dead
 * is -1; new vectors are numbered in discovery order (states in order, classes ascending), as the
 * reference in dotvllm_plugin.pushdown._build_lexer numbers them. None when more than max_states. */
/* the loop of ``product``: fills ``pool`` (k components per product state) and ``trans`` (n_cls
 * per product state); 0, -1 out of memory, 1 past max_states */
static int product_loop(const int64_t *glob, Py_ssize_t n_cls, int64_t dead, const int64_t *st, Py_ssize_t k,
                        Py_ssize_t max_states, vec *pool, vec *trans) {
    Py_ssize_t n = 1;
    table tab = {0};
    int64_t *buf = malloc((size_t)(k > 0 ? k : 1) * 8);
    int err = 0;
    if (!buf || table_init(&tab, 1024)) { err = -1; goto done; }
    /* (the start is not looked up: the lexeme start is never re-entered, a vector equal to it
     * reached later is a state of its own, as in the reference) */
    for (Py_ssize_t j = 0; j < k; j++) if (vec_push(pool, st[j])) { err = -1; goto done; }
    for (Py_ssize_t d = 0; d < n; d++) {
        for (Py_ssize_t c = 0; c < n_cls; c++) {
            int alive = 0;
            for (Py_ssize_t j = 0; j < k; j++) {
                int64_t t = glob[pool->p[d * k + j] * n_cls + c];
                buf[j] = t;
                alive |= t != dead;
            }
            int64_t target = -1;
            if (alive) {
                uint64_t h = set_hash(buf, k);
                Py_ssize_t slot = table_slot(&tab, h);
                for (;;) {
                    int64_t id = tab.slots[slot];
                    if (id < 0) break;
                    /* (entry ``id`` is state ``id + 1``: the start has none) */
                    if (memcmp(pool->p + (id + 1) * k, buf, (size_t)k * 8) == 0) { target = id + 1; break; }
                    slot = (slot + 1) & (tab.cap - 1);
                }
                if (target < 0) {
                    if (n >= max_states) { err = 1; goto done; }
                    target = n++;
                    for (Py_ssize_t j = 0; j < k; j++) if (vec_push(pool, buf[j])) { err = -1; goto done; }
                    if (table_add(&tab, slot, h)) { err = -1; goto done; }
                }
            }
            if (vec_push(trans, target)) { err = -1; goto done; }
        }
    }
done:
    table_free(&tab);
    free(buf);
    return err;
}

static PyObject *product(PyObject *self, PyObject *args) {
    Py_buffer b_glob, b_start;
    Py_ssize_t n_cls, max_states;
    long long dead;
    if (!PyArg_ParseTuple(args, "y*nLy*n", &b_glob, &n_cls, &dead, &b_start, &max_states)) return NULL;
    vec pool = {0}, trans = {0};
    int err = product_loop(b_glob.buf, n_cls, dead, b_start.buf, b_start.len / 8, max_states, &pool, &trans);
    PyObject *result = NULL;
    if (err < 0) {
        PyErr_NoMemory();
    } else if (err > 0) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = Py_BuildValue("(NN)", vec_bytes(&trans), vec_bytes(&pool));
    }
    free(pool.p); free(trans.p);
    PyBuffer_Release(&b_glob); PyBuffer_Release(&b_start);
    return result;
}

/* The joint classes of k members (bc[j]: member j's byte → class, int64 [256]): bytes whose class
 * is the same in every member, numbered by first byte; fills ``joint`` (byte → joint class) and
 * ``rep`` (joint class → its first byte), returns their number. */
static Py_ssize_t joint_classes(const Py_buffer *bc, Py_ssize_t k, int64_t joint[256], int64_t rep[256]) {
    Py_ssize_t n_cls = 0;
    uint64_t hash[256];
    int64_t slots[512];  /* classes by hash (open addressing): one probe per byte, not one per class */
    for (int i = 0; i < 512; i++) slots[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint64_t h = 0x9E3779B97F4A7C15ULL;
        for (Py_ssize_t j = 0; j < k; j++) {
            h ^= (uint64_t)((const int64_t *)bc[j].buf)[b] + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
            h *= 0xBF58476D1CE4E5B9ULL;
        }
        hash[b] = h;
        joint[b] = -1;
        int sl = (int)((h ^ (h >> 32)) & 511);
        for (; slots[sl] >= 0; sl = (sl + 1) & 511) {
            int64_t c = slots[sl];
            int r = (int)rep[c], same = hash[r] == h;
            for (Py_ssize_t j = 0; same && j < k; j++) same = ((const int64_t *)bc[j].buf)[r] == ((const int64_t *)bc[j].buf)[b];
            if (same) { joint[b] = c; break; }
        }
        if (joint[b] < 0) { rep[n_cls] = b; slots[sl] = n_cls; joint[b] = n_cls++; }
    }
    return n_cls;
}

/* lexer_chosen(members, order, ids, offset, max_states)
 *   -> (trans bytes of int32[n * 256], chosen bytearray of int32[n], several, classes) or None past
 *      max_states; ``classes`` is byte_classes(trans, offset, chosen)'s result (the walks' table)
 * A longest-match contextual lexer in one call: the product automaton of its members, breadth
 * first from their initial states over the classes they all refine (numbered by first byte), as
 * dotvllm_plugin.pushdown._build_lexer's reference loop numbers its states (``offset`` added to
 * every live target), and each state's terminal, as dotvllm_plugin.pushdown._chosen types it. ``members``: k ByteDFA-like objects whose classes are
 * set (transitions int32 [n_j, 256], accepting bool [n_j], initial, classes: byte_classes' class
 * table int64 or int32 [n_j, C_j] and byte → class int64 [256]);
 * ``order``: the member positions in lexing order; ``ids``: each member's terminal id. chosen[s]
 * is the id of the first member in order that accepts in s (-1: none); ``several`` lists
 * (s, ids ascending) for each state where more than one member accepts, in state order.
 * A product state is kept as its live member states only and steps along their transitions by
 * their own classes (a key lexer's states have one or two of their k members alive): a step costs
 * the live members' transitions, not k per joint class; a set of one state is found by that state. */
static PyObject *lexer_chosen(PyObject *self, PyObject *args) {
    PyObject *l_dfa, *l_order, *l_ids;
    long long offset;
    Py_ssize_t max_states;
    if (!PyArg_ParseTuple(args, "O!O!O!Ln", &PyList_Type, &l_dfa, &PyList_Type, &l_order, &PyList_Type, &l_ids,
                          &offset, &max_states))
        return NULL;
    Py_ssize_t k = PyList_GET_SIZE(l_dfa);
    if (k < 1 || PyList_GET_SIZE(l_order) != k || PyList_GET_SIZE(l_ids) != k) {
        PyErr_SetString(PyExc_ValueError, "lexer_chosen: one automaton, position in order and id per member");
        return NULL;
    }
    Py_buffer *bt = calloc((size_t)k * 4, sizeof(Py_buffer)), *ba = bt ? bt + k : NULL, *bc = bt ? bt + 2 * k : NULL,
              *br = bt ? bt + 3 * k : NULL;
    int64_t *offs = malloc((size_t)(k + 1) * 8), *init = malloc((size_t)k * 8), *rank = malloc((size_t)k * 8),
            *ids = malloc((size_t)k * 8), *n_own = malloc((size_t)k * 8);
    int64_t *owner = NULL, *rstart = NULL, *bdata = NULL, *blen = NULL, *gstart = NULL, *gcls = NULL, *single = NULL;
    uint8_t *acc = NULL;
    vec rcls = {0}, rtgt = {0}, pool = {0}, start = {0}, ct = {0}, buf = {0};
    vec hashed = {0};  /* the table's ids → product states (sets of one state are not in the table) */
    table tab = {0};
    PyObject *result = NULL, *several = NULL, *out_t = NULL, *out_c = NULL, *out_rows = NULL, *out_bc = NULL;
    Py_ssize_t held = 0;
    int err = 0;  /* -1 out of memory, 1 past max_states */
    if (!bt || !offs || !init || !rank || !ids || !n_own) { PyErr_NoMemory(); goto done; }
    offs[0] = 0;
    for (Py_ssize_t j = 0; j < k; j++) rank[j] = k;
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_ssize_t p = PyLong_AsSsize_t(PyList_GET_ITEM(l_order, i));
        if (p < 0 || p >= k) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "lexer_chosen: a position in order is not a member's");
            goto done;
        }
        rank[p] = i;
        ids[i] = PyLong_AsLongLong(PyList_GET_ITEM(l_ids, i));
        if (ids[i] == -1 && PyErr_Occurred()) goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        /* (a buffer keeps its array alive: the attributes are released at once) */
        PyObject *d = PyList_GET_ITEM(l_dfa, j), *x;
        int ok = (x = PyObject_GetAttrString(d, "transitions")) && PyObject_GetBuffer(x, &bt[j], PyBUF_C_CONTIGUOUS) == 0;
        Py_XDECREF(x);
        if (ok) {
            ok = (x = PyObject_GetAttrString(d, "accepting")) && PyObject_GetBuffer(x, &ba[j], PyBUF_C_CONTIGUOUS) == 0;
            Py_XDECREF(x);
            if (!ok) PyBuffer_Release(&bt[j]);
        }
        if (ok) {
            ok = (x = PyObject_GetAttrString(d, "classes")) && PyTuple_Check(x) && PyTuple_GET_SIZE(x) == 2
                 && PyObject_GetBuffer(PyTuple_GET_ITEM(x, 1), &bc[j], PyBUF_C_CONTIGUOUS) == 0;
            if (ok && !(ok = PyObject_GetBuffer(PyTuple_GET_ITEM(x, 0), &br[j], PyBUF_C_CONTIGUOUS) == 0))
                PyBuffer_Release(&bc[j]);
            Py_XDECREF(x);
            if (!ok) { PyBuffer_Release(&bt[j]); PyBuffer_Release(&ba[j]); }
        }
        long long q = -1;
        if (ok) {
            held++;
            x = PyObject_GetAttrString(d, "initial");
            if (x) { q = PyLong_AsLongLong(x); Py_DECREF(x); }
            if (PyErr_Occurred()) goto done;
        }
        Py_ssize_t n_j = ok ? ba[j].len : 0;
        if (!ok || bt[j].itemsize != 4 || ba[j].itemsize != 1 || bc[j].itemsize != 8 || bt[j].len != n_j * 256 * 4
            || bc[j].len != 256 * 8 || q < 0 || q >= n_j) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "lexer_chosen: a member's transitions, accepting flags, initial state "
                                "and byte classes do not agree (classes must be set)");
            goto done;
        }
        n_own[j] = 0;
        for (int b = 0; b < 256; b++) {
            int64_t o = ((const int64_t *)bc[j].buf)[b];
            if (o < 0 || o > 255) {
                PyErr_SetString(PyExc_ValueError, "lexer_chosen: a byte class outside 0..255");
                goto done;
            }
            if (o >= n_own[j]) n_own[j] = o + 1;
        }
        if ((br[j].itemsize != 8 && br[j].itemsize != 4) || br[j].len != n_j * n_own[j] * br[j].itemsize) {
            PyErr_SetString(PyExc_ValueError, "lexer_chosen: a member's class table is not one row of its classes per state");
            goto done;
        }
        offs[j + 1] = offs[j] + n_j;
        init[j] = offs[j] + q;
    }
    int64_t joint[256], rep[256];
    Py_ssize_t n_cls = joint_classes(bc, k, joint, rep);
    int64_t N = offs[k];
    /* every member state's live transitions by joint class (sparse rows of global ids): per own
     * class of its member, the joint classes it splits into */
    owner = malloc((size_t)(N + 1) * 8);
    rstart = malloc((size_t)(N + 1) * 8);
    acc = malloc((size_t)(N + 1));
    gstart = malloc(257 * 8);
    gcls = malloc((size_t)(n_cls + 1) * 8);
    if (!owner || !rstart || !acc || !gstart || !gcls) { err = -1; goto done; }
    rstart[0] = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        const int64_t *cls = bc[j].buf;  /* (the class table: a few words per state, not a 1 KiB row) */
        const int64_t *t64 = br[j].itemsize == 8 ? br[j].buf : NULL;
        const int32_t *t32 = br[j].itemsize == 4 ? br[j].buf : NULL;
        const uint8_t *a = ba[j].buf;
        Py_ssize_t n_j = offs[j + 1] - offs[j], C_j = n_own[j];
        /* the joint classes of each own class (CSR over own classes, ascending) */
        for (int o = 0; o <= 256; o++) gstart[o] = 0;
        for (Py_ssize_t c = 0; c < n_cls; c++) gstart[cls[rep[c]] + 1]++;
        for (int o = 0; o < 256; o++) gstart[o + 1] += gstart[o];
        int64_t fill[256];
        for (int o = 0; o < 256; o++) fill[o] = gstart[o];
        for (Py_ssize_t c = 0; c < n_cls; c++) gcls[fill[cls[rep[c]]]++] = c;
        for (Py_ssize_t s = 0; s < n_j; s++) {
            int64_t g = offs[j] + s;
            owner[g] = j;
            acc[g] = a[s] != 0;
            for (Py_ssize_t o = 0; o < C_j; o++) {
                int64_t x = t64 ? t64[s * C_j + o] : t32[s * C_j + o];
                if (x < 0) continue;
                if (x >= n_j) {
                    PyErr_SetString(PyExc_ValueError, "lexer_chosen: a transition past its member's states");
                    goto done;
                }
                for (int64_t e = gstart[o]; e < gstart[o + 1]; e++)
                    if (vec_push(&rcls, gcls[e]) || vec_push(&rtgt, offs[j] + x)) { err = -1; goto done; }
            }
            rstart[g + 1] = rcls.n;
        }
    }
    /* breadth first over sets of live member states (ascending global ids, one per live member),
     * classes ascending */
    blen = calloc((size_t)n_cls + 1, 8);
    bdata = malloc((size_t)(n_cls * k + 1) * 8);
    single = malloc((size_t)(N + 1) * 8);
    if (!blen || !bdata || !single || table_init(&tab, 64) || vec_push(&start, 0)) { err = -1; goto done; }
    for (int64_t g = 0; g < N; g++) single[g] = -1;
    for (Py_ssize_t j = 0; j < k; j++) if (vec_push(&pool, init[j])) { err = -1; goto done; }
    /* (the start is not looked up: the lexeme start is never re-entered, as in the reference) */
    if (vec_push(&start, pool.n)) { err = -1; goto done; }
    for (Py_ssize_t d = 0; d < start.n - 1; d++) {
        memset(blen, 0, (size_t)n_cls * 8);
        for (int64_t i = start.p[d]; i < start.p[d + 1]; i++) {
            int64_t g = pool.p[i];
            for (int64_t e = rstart[g]; e < rstart[g + 1]; e++) {
                int64_t c = rcls.p[e];
                bdata[c * k + blen[c]++] = rtgt.p[e];
            }
        }
        for (Py_ssize_t c = 0; c < n_cls; c++) {
            int64_t target = -1, nt = blen[c];
            const int64_t *set = bdata + c * k;
            if (nt == 1) {  /* (most sets: one member alive; those are found by their state, not hashed) */
                target = single[set[0]];
                if (target < 0) {
                    target = start.n - 1;
                    if (target >= max_states) { err = 1; goto done; }
                    if (vec_push(&pool, set[0]) || vec_push(&start, pool.n)) { err = -1; goto done; }
                    single[set[0]] = target;
                }
            } else if (nt) {
                uint64_t h = set_hash(set, nt);
                Py_ssize_t slot = table_slot(&tab, h);
                for (;;) {
                    int64_t id = tab.slots[slot];
                    if (id < 0) break;
                    int64_t q = hashed.p[id];
                    if (start.p[q + 1] - start.p[q] == nt && memcmp(pool.p + start.p[q], set, (size_t)nt * 8) == 0) {
                        target = q;
                        break;
                    }
                    slot = (slot + 1) & (tab.cap - 1);
                }
                if (target < 0) {
                    target = start.n - 1;
                    if (target >= max_states) { err = 1; goto done; }
                    for (int64_t i = 0; i < nt; i++) if (vec_push(&pool, set[i])) { err = -1; goto done; }
                    if (vec_push(&start, pool.n) || vec_push(&hashed, target) || table_add(&tab, slot, h)) {
                        err = -1;
                        goto done;
                    }
                }
            }
            if (vec_push(&ct, target)) { err = -1; goto done; }
        }
    }
    Py_ssize_t n = start.n - 1;
    out_t = PyBytes_FromStringAndSize(NULL, n * 256 * 4);
    out_c = PyByteArray_FromStringAndSize(NULL, n * 4);
    several = PyList_New(0);
    if (!out_t || !out_c || !several) goto done;
    int32_t *o = (int32_t *)PyBytes_AS_STRING(out_t), *ch = (int32_t *)PyByteArray_AS_STRING(out_c);
    uint8_t joint8[256];  /* (locals the byte loop keeps in registers: it writes most of the output) */
    for (int b = 0; b < 256; b++) joint8[b] = (uint8_t)joint[b];
    for (Py_ssize_t s = 0; s < n; s++) {
        int32_t row[256];
        const int64_t *cs = ct.p + s * n_cls;
        int32_t *os = o + s * 256;
        for (Py_ssize_t c = 0; c < n_cls; c++) row[c] = cs[c] >= 0 ? (int32_t)(cs[c] + offset) : -1;
        for (int b = 0; b < 256; b++) os[b] = row[joint8[b]];
        int64_t best = -1;
        buf.n = 0;
        for (int64_t i = start.p[s]; i < start.p[s + 1]; i++) {
            int64_t g = pool.p[i];
            if (!acc[g]) continue;
            if (best < 0 || rank[owner[g]] < rank[best]) best = owner[g];
            if (vec_push(&buf, ids[owner[g]])) { err = -1; goto done; }
        }
        ch[s] = best >= 0 ? (int32_t)ids[best] : -1;
        if (buf.n > 1) {
            qsort(buf.p, (size_t)buf.n, sizeof(int64_t), cmp_i64);
            PyObject *key = PyTuple_New(buf.n), *item;
            if (!key) goto done;
            for (Py_ssize_t i = 0; i < buf.n; i++) {
                PyObject *v = PyLong_FromLongLong(buf.p[i]);
                if (!v) { Py_DECREF(key); goto done; }
                PyTuple_SET_ITEM(key, i, v);
            }
            item = Py_BuildValue("(nN)", s, key);
            if (!item) goto done;
            int bad = PyList_Append(several, item);
            Py_DECREF(item);
            if (bad) goto done;
        }
    }
    /* the walks' byte classes (byte_classes(trans, offset, chosen)'s, from the class-space table:
     * bytes of one joint class step alike, so the coarsest classes merge joint classes of equal
     * columns; numbered by first byte) */
    {
        int64_t coarse[256], crep[256];  /* joint class → coarse class; coarse class → a joint class */
        uint64_t hcol[256];
        Py_ssize_t C = 0;
        for (Py_ssize_t c = 0; c < n_cls; c++) {
            coarse[c] = -1;
            uint64_t h = 0x9E3779B97F4A7C15ULL;
            for (Py_ssize_t s = 0; s < n; s++) h = (h ^ (uint64_t)ct.p[s * n_cls + c]) * 0x100000001B3ULL;
            hcol[c] = h;
        }
        int64_t byte_cls[256];
        for (int b = 0; b < 256; b++) {
            int64_t jc = joint[b];
            if (coarse[jc] < 0) {
                for (Py_ssize_t m = 0; m < C && coarse[jc] < 0; m++) {
                    int64_t r = crep[m];
                    if (hcol[r] != hcol[jc]) continue;
                    int same = 1;
                    for (Py_ssize_t s = 0; s < n && same; s++) same = ct.p[s * n_cls + r] == ct.p[s * n_cls + jc];
                    if (same) coarse[jc] = m;
                }
                if (coarse[jc] < 0) { crep[C] = jc; coarse[jc] = C++; }
            }
            byte_cls[b] = coarse[jc];
        }
        out_rows = PyBytes_FromStringAndSize(NULL, n * C * 8);
        out_bc = PyBytes_FromStringAndSize((const char *)byte_cls, 256 * 8);
        if (!out_rows || !out_bc) goto done;
        int64_t *rw = (int64_t *)PyBytes_AS_STRING(out_rows);
        for (Py_ssize_t s = 0; s < n; s++) {
            int64_t none = ch[s] >= 0 ? -2 : -1;
            for (Py_ssize_t m = 0; m < C; m++) {
                int64_t x = ct.p[s * n_cls + crep[m]];
                rw[s * C + m] = x >= 0 ? x : none;
            }
        }
        result = Py_BuildValue("(OOO(OOn))", out_t, out_c, several, out_rows, out_bc, C);
    }
done:
    if (err < 0) PyErr_NoMemory();
    else if (err > 0) { result = Py_None; Py_INCREF(result); }
    Py_XDECREF(out_t); Py_XDECREF(out_c); Py_XDECREF(several); Py_XDECREF(out_rows); Py_XDECREF(out_bc);
    for (Py_ssize_t j = 0; j < held; j++) {
        PyBuffer_Release(&bt[j]); PyBuffer_Release(&ba[j]); PyBuffer_Release(&bc[j]); PyBuffer_Release(&br[j]);
    }
    free(bt); free(offs); free(init); free(rank); free(ids); free(n_own);
    free(owner); free(rstart); free(acc); free(gstart); free(gcls); free(blen); free(bdata); free(single);
    free(rcls.p); free(rtgt.p); free(pool.p); free(start.p); free(ct.p); free(buf.p); free(hashed.p);
    table_free(&tab);
    return result;
}

/* walk_rows(trans, n_classes, sym, bc, child_lo, child_hi, has, n_roots, starts, tok_start, tok_ids,
 *           n_words, max_produced)
 *   -> (rows bytes of uint32[m * n_words], row_of_start bytes of int64[k]), or None when more
 * than max_produced (start, token-ending node) pairs survive.
 * The walk of ``walk`` without its (start, node, end) output: each start state's allowed tokens
 * (tokens ending at surviving nodes, via the CSR tok_start/tok_ids) are set straight into a
 * packed row, and equal rows are stored once. For vocabularies where no token-level pruning is
 * needed (every byte is a token). A node's class is bc[sym[node]] (a byte view: its byte and the
 * automaton's byte classes, so the per-vocabulary arrays serve every automaton; a merged trie:
 * its class and the identity). */
static PyObject *walk_rows(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_sym, b_bc, b_lo, b_hi, b_has, b_starts, b_ts, b_ti;
    Py_ssize_t C, n_roots, W;
    long long max_produced;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*y*y*ny*y*y*nL", &b_trans, &C, &b_sym, &b_bc, &b_lo, &b_hi, &b_has,
                          &n_roots, &b_starts, &b_ts, &b_ti, &W, &max_produced))
        return NULL;
    if (b_bc.len != 256 * 8) {
        PyBuffer_Release(&b_trans); PyBuffer_Release(&b_sym); PyBuffer_Release(&b_bc); PyBuffer_Release(&b_lo);
        PyBuffer_Release(&b_hi); PyBuffer_Release(&b_has); PyBuffer_Release(&b_starts); PyBuffer_Release(&b_ts);
        PyBuffer_Release(&b_ti);
        PyErr_SetString(PyExc_ValueError, "walk_rows: bc int64[256]");
        return NULL;
    }
    const int64_t *trans = b_trans.buf, *sym = b_sym.buf, *bc = b_bc.buf, *lo = b_lo.buf, *hi = b_hi.buf,
                  *starts = b_starts.buf, *ts = b_ts.buf, *ti = b_ti.buf;
    const uint8_t *has = b_has.buf;
    Py_ssize_t k = b_starts.len / 8;
    PyObject *result = NULL;
    uint32_t *row = calloc((size_t)W, 4);
    char *pool = NULL;  /* distinct rows: pool[id * W * 4 : (id + 1) * W * 4] */
    int64_t *idx = malloc((size_t)(k + 1) * 8);
    table tab = {0};  /* ids of the distinct rows, by hash */
    frame *stack = NULL;
    Py_ssize_t sp = 0, scap = 0, m = 0, pcap = 0;
    long long produced = 0;
    int nomem = 0, overflow = 0;
    if (!row || !idx || table_init(&tab, 64)) { nomem = 1; goto done; }
    for (Py_ssize_t i = 0; i < k; i++) {
        memset(row, 0, (size_t)W * 4);
        sp = 0;
        for (int64_t r = n_roots - 1; r >= 0; r--) PUSH_FRAME(r, starts[i], 0, i);
        while (sp) {
            frame f = stack[--sp];
            int64_t st = trans[f.prev * C + bc[sym[f.node] & 255]];
            if (st < 0) continue;
            if (has[f.node] && ++produced > max_produced) { overflow = 1; goto done; }
            if (has[f.node])
                for (int64_t j = ts[f.node]; j < ts[f.node + 1]; j++) row[ti[j] >> 5] |= (uint32_t)1 << (ti[j] & 31);
            for (int64_t c = hi[f.node] - 1; c >= lo[f.node]; c--) PUSH_FRAME(c, st, f.level + 1, f.si);
        }
        int64_t found = intern_row(&tab, &pool, &m, &pcap, row, (size_t)W * 4);
        if (found < 0) { nomem = 1; goto done; }
        idx[i] = found;
    }
done:
    if (nomem) {
        PyErr_NoMemory();
    } else if (overflow) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = Py_BuildValue("(y#y#)", (const char *)pool, (Py_ssize_t)(m * W * 4), (const char *)idx,
                               (Py_ssize_t)(k * 8));
    }
    free(row); free(pool); free(idx); table_free(&tab); free(stack);
    PyBuffer_Release(&b_trans); PyBuffer_Release(&b_sym); PyBuffer_Release(&b_bc); PyBuffer_Release(&b_lo);
    PyBuffer_Release(&b_hi); PyBuffer_Release(&b_has); PyBuffer_Release(&b_starts); PyBuffer_Release(&b_ts);
    PyBuffer_Release(&b_ti);
    return result;
}

/* prefix_blocks(trans int64[n * n_classes], n_classes, rounds) -> bytes of int64[n]: Moore's
 * partition refinement from one block, ``rounds`` times or until stable: same block <=> the same
 * byte strings of length <= rounds stay alive. Block ids are numbered by first occurrence. */
static PyObject *prefix_blocks(PyObject *self, PyObject *args) {
    Py_buffer b_trans;
    Py_ssize_t C, rounds;
    if (!PyArg_ParseTuple(args, "y*nn", &b_trans, &C, &rounds)) return NULL;
    const int64_t *trans = b_trans.buf;
    Py_ssize_t n = C ? b_trans.len / 8 / C : 0, cap = 16;
    while (cap < 2 * n + 2) cap *= 2;
    int64_t *part = calloc((size_t)n + 1, 8), *next = malloc(((size_t)n + 1) * 8), *slots = malloc((size_t)cap * 8),
            *rep = malloc(((size_t)n + 1) * 8);
    PyObject *result = NULL;
    if (!part || !next || !slots || !rep) { PyErr_NoMemory(); goto fail; }
    Py_ssize_t count = n ? 1 : 0;
    for (Py_ssize_t round = 0; round < rounds; round++) {
        for (Py_ssize_t i = 0; i < cap; i++) slots[i] = -1;
        Py_ssize_t m = 0;
        for (Py_ssize_t s = 0; s < n; s++) {
            uint64_t h = (uint64_t)part[s] * 0x9E3779B97F4A7C15ULL;
            for (Py_ssize_t c = 0; c < C; c++) {
                int64_t t = trans[s * C + c];
                h = (h ^ (uint64_t)(t < 0 ? -1 : part[t])) * 0xBF58476D1CE4E5B9ULL;
                h ^= h >> 31;
            }
            Py_ssize_t sl = (Py_ssize_t)(h & (uint64_t)(cap - 1));
            for (;;) {
                int64_t b = slots[sl];
                if (b < 0) { slots[sl] = m; rep[m] = s; next[s] = m++; break; }
                int64_t r = rep[b];
                int same = part[r] == part[s];
                for (Py_ssize_t c = 0; same && c < C; c++) {
                    int64_t t1 = trans[r * C + c], t2 = trans[s * C + c];
                    same = (t1 < 0 ? -1 : part[t1]) == (t2 < 0 ? -1 : part[t2]);
                }
                if (same) { next[s] = b; break; }
                sl = (sl + 1) & (cap - 1);
            }
        }
        int64_t *tmp = part; part = next; next = tmp;
        if (m == count) break;
        count = m;
    }
    result = PyBytes_FromStringAndSize((const char *)part, n * 8);
fail:
    free(part); free(next); free(slots); free(rep);
    PyBuffer_Release(&b_trans);
    return result;
}

/* The byte classes of trans int32[n * 256]: cls[b] the class of byte b, rep[c] the first byte of
 * class c (classes numbered by their first byte); returns the number of classes. */
static Py_ssize_t classes_of(const int32_t *trans, Py_ssize_t n, int64_t cls[256], int64_t rep[256]) {
    /* (32-bit lanes: the compiler steps 4 bytes' hashes at once; a collision is only slower) */
    uint32_t h[256];
    Py_ssize_t C = 0;
    for (int b = 0; b < 256; b++) h[b] = 0x811C9DC5u;
    for (Py_ssize_t s = 0; s < n; s++) {
        const int32_t *row = trans + s * 256;
        for (int b = 0; b < 256; b++) {
            uint32_t x = (h[b] ^ (uint32_t)row[b]) * 0x01000193u;
            h[b] = x ^ (x >> 15);
        }
    }
    /* Group by hash (one probe of a table of classes per byte), then check the grouping in one
     * row-major pass (a column-by-column check reads one cache line per state and byte); on a
     * collision, group column by column exactly. */
    int64_t slots[512];
    for (int i = 0; i < 512; i++) slots[i] = -1;
    for (int b = 0; b < 256; b++) {
        int sl = (int)((h[b] ^ (h[b] >> 9)) & 511);
        while (slots[sl] >= 0 && h[rep[slots[sl]]] != h[b]) sl = (sl + 1) & 511;
        if (slots[sl] >= 0) {
            cls[b] = slots[sl];
        } else {
            rep[C] = b;
            slots[sl] = C;
            cls[b] = C++;
        }
    }
    int collision = 0;
    for (Py_ssize_t s = 0; s < n && !collision; s++) {
        const int32_t *row = trans + s * 256;
        for (int b = 0; b < 256; b++)
            if (row[b] != row[rep[cls[b]]]) { collision = 1; break; }
    }
    if (collision) {
        C = 0;
        for (int b = 0; b < 256; b++) {
            cls[b] = -1;
            for (Py_ssize_t c = 0; c < C && cls[b] < 0; c++) {
                int r = (int)rep[c];
                if (h[r] != h[b]) continue;
                int same = 1;
                for (Py_ssize_t s = 0; s < n && same; s++) same = trans[s * 256 + r] == trans[s * 256 + b];
                if (same) cls[b] = c;
            }
            if (cls[b] < 0) { rep[C] = b; cls[b] = C++; }
        }
    }
    return C;
}

/* byte_classes(trans int32[n * 256]) -> (class_trans bytes of int64[n * C], byte_class bytes of
 * int64[256]): bytes whose columns are equal in every state share a class; classes are numbered
 * by their first byte. */
/* byte_classes(trans int32[n * 256][, lo, chosen int32[n]]) -> (class table bytes of int64[n * C],
 * byte class bytes of int64[256], C); with ``lo`` and ``chosen``: the table of a lexer's block of
 * global ids as its walks read it, local ids (``x - lo``), and where a state has no transition, -2
 * when its lexeme is complete (``chosen >= 0``: the step ends it) else -1. */
static PyObject *byte_classes_c(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_chosen = {0};
    Py_ssize_t lo = -1;
    if (!PyArg_ParseTuple(args, "y*|ny*", &b_trans, &lo, &b_chosen)) return NULL;
    const int32_t *trans = b_trans.buf, *chosen = b_chosen.buf;
    Py_ssize_t n = b_trans.len / 4 / 256;
    if (chosen && b_chosen.len / 4 != n) {
        PyBuffer_Release(&b_trans);
        PyBuffer_Release(&b_chosen);
        PyErr_SetString(PyExc_ValueError, "byte_classes: chosen is not one per state");
        return NULL;
    }
    int64_t cls[256], rep[256];
    Py_ssize_t C = classes_of(trans, n, cls, rep);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * C * 8), *bc = PyBytes_FromStringAndSize((const char *)cls, 256 * 8);
    if (out && bc) {
        int64_t *o = (int64_t *)PyBytes_AS_STRING(out);
        if (chosen) {
            for (Py_ssize_t s = 0; s < n; s++) {
                int64_t none = chosen[s] >= 0 ? -2 : -1;
                for (Py_ssize_t c = 0; c < C; c++) {
                    int64_t x = trans[s * 256 + rep[c]];
                    o[s * C + c] = x >= 0 ? x - lo : none;
                }
            }
        } else {
            for (Py_ssize_t s = 0; s < n; s++)
                for (Py_ssize_t c = 0; c < C; c++) o[s * C + c] = trans[s * 256 + rep[c]];
        }
    }
    PyBuffer_Release(&b_trans);
    if (chosen) PyBuffer_Release(&b_chosen);
    if (!out || !bc) { Py_XDECREF(out); Py_XDECREF(bc); return NULL; }
    return Py_BuildValue("(NNn)", out, bc, C);
}

/* Where every byte of range r leads from state q (one state, or UNEVEN), computed on first use:
 * ``target`` holds NOT_YET until then (the sequences of the non-ASCII characters visit few (state,
 * range) pairs of a large lexer). */
#define CT_UNEVEN ((int64_t)-5)
#define CT_NOT_YET ((int64_t)-7)
static inline int64_t range_target(const int64_t *trans, Py_ssize_t C, const int64_t *bc, const int64_t *ranges,
                                   Py_ssize_t R, int64_t *target, int64_t q, Py_ssize_t r) {
    int64_t *slot = target ? &target[q * R + r] : NULL;
    if (!slot || *slot == CT_NOT_YET) {
        int64_t lo = ranges[2 * r], hi = ranges[2 * r + 1], t = trans[q * C + bc[lo]];
        for (int64_t b = lo + 1; b <= hi && t != CT_UNEVEN; b++)
            if (trans[q * C + bc[b]] != t) t = CT_UNEVEN;
        if (!slot) return t;  /* (no memo: one state's sequences visit few (state, range) pairs) */
        *slot = t;
    }
    return *slot;
}

/* Where every non-ASCII character leads from ``q``, read on the byte-range sequences ``seqs`` (S of
 * them) over ``ranges``: ``t`` where ``known`` and every sequence ends there (ASCII characters' target
 * given), else the sequences' one target; -1 for dead, -3 where they lead apart or one ends the
 * lexeme (-2) on the way, -4 on a transition past the table (n states). ``target``: range_target's
 * memo, or NULL. class_targets and run_first read Σ's non-ASCII part here. */
static int64_t seq_target(const int64_t *trans, Py_ssize_t C, Py_ssize_t n, const int64_t *bc, const int64_t *ranges,
                          Py_ssize_t R, const int64_t *seqs, Py_ssize_t S, int64_t *target, int64_t q, int64_t t,
                          int known) {
    for (Py_ssize_t k = 0; k < S; k++) {
        int64_t cur = q;
        for (int j = 0; j < 4 && seqs[4 * k + j] >= 0 && cur >= 0; j++) {
            int64_t nxt = range_target(trans, C, bc, ranges, R, target, cur, seqs[4 * k + j]);
            if (nxt == CT_UNEVEN || nxt == -2) return -3;
            if (nxt >= n) return -4;
            cur = nxt;
        }
        if (cur < 0) cur = -1;
        if (!known) { t = cur; known = 1; }
        else if (cur != t) return -3;
    }
    return t;
}

/* class_targets(trans int64[n * C], C, byte_class int64[256], sigma uint64[3], ranges int64[R * 2],
 * seqs int64[S * 4][, only int64[k]]) -> bytes of int64[n] (with ``only``: int64[k], for those
 * states): for every state, where every character of a class Σ leads when they all lead to one
 * state (-1: every one is dead), else -3 (they lead apart, or one ends the lexeme, -2, on the way).
 * Σ is dotvllm_plugin.runs.sigma_mask's: ASCII bits in words 0 and 1, and bit 1 of word 2 for every
 * non-ASCII character, read on the byte-range sequences ``seqs`` (4 range indices each, -1 past the
 * sequence's length) over the byte ranges ``ranges`` (lo, hi). See dotvllm_plugin.runs._class_targets. */
static PyObject *class_targets(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_bc, b_sigma, b_ranges, b_seqs, b_only = {0};
    Py_ssize_t C;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*y*|y*", &b_trans, &C, &b_bc, &b_sigma, &b_ranges, &b_seqs, &b_only))
        return NULL;
    Py_buffer *const held[] = {&b_trans, &b_bc, &b_sigma, &b_ranges, &b_seqs, &b_only};
#define RELEASE_CT() for (int h_ = 0; h_ < 6; h_++) PyBuffer_Release(held[h_])  /* (a NULL obj: nothing) */
    Py_ssize_t n = C > 0 ? b_trans.len / 8 / C : 0, R = b_ranges.len / 16;
    if (C <= 0 || b_trans.len != n * C * 8 || b_bc.len != 256 * 8 || b_sigma.len != 24 || b_only.len % 8) {
        RELEASE_CT();
        PyErr_SetString(PyExc_ValueError,
                        "class_targets: trans int64[n * C], byte_class int64[256], sigma uint64[3], only int64[k]");
        return NULL;
    }
    const int64_t *trans = b_trans.buf, *bc = b_bc.buf, *ranges = b_ranges.buf, *seqs = b_seqs.buf;
    const int64_t *only = b_only.obj ? b_only.buf : NULL;
    const uint64_t *sigma = b_sigma.buf;
    Py_ssize_t S = (sigma[2] & 1) ? b_seqs.len / 32 : 0;  /* (no non-ASCII character in Σ: no sequence) */
    Py_ssize_t k_out = only ? b_only.len / 8 : n;
    for (Py_ssize_t r = 0; r < R; r++)
        if (ranges[2 * r] < 0 || ranges[2 * r + 1] > 255 || ranges[2 * r] > ranges[2 * r + 1]) {
            RELEASE_CT();
            PyErr_SetString(PyExc_ValueError, "class_targets: byte ranges within 0..255");
            return NULL;
        }
    for (Py_ssize_t i = 0; i < S * 4; i++)
        if (seqs[i] >= R) {
            RELEASE_CT();
            PyErr_SetString(PyExc_ValueError, "class_targets: a sequence step past the ranges");
            return NULL;
        }
    for (Py_ssize_t i = 0; only && i < k_out; i++)
        if (only[i] < 0 || only[i] >= n) {
            RELEASE_CT();
            PyErr_SetString(PyExc_ValueError, "class_targets: a state of only out of range");
            return NULL;
        }
    for (Py_ssize_t b = 0; b < 256; b++)
        if (bc[b] < 0 || bc[b] >= C) {
            RELEASE_CT();
            PyErr_SetString(PyExc_ValueError, "class_targets: a byte class out of range");
            return NULL;
        }
    PyObject *out = PyBytes_FromStringAndSize(NULL, k_out * 8);
    int64_t *target = S ? malloc((size_t)(n * R + 1) * 8) : NULL;  /* per state and range: one target or UNEVEN */
    if (!out || (S && !target)) {
        Py_XDECREF(out); free(target); RELEASE_CT();
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; S && i < n * R; i++) target[i] = CT_NOT_YET;
    int64_t *res = (int64_t *)PyBytes_AS_STRING(out);
    const int64_t BAD = -3, DEAD = -1;
    int corrupt = 0;  /* a transition past the table */
    for (Py_ssize_t i = 0; i < k_out && !corrupt; i++) {
        int64_t q = only ? only[i] : i;
        int64_t t = 0;
        int first = 1, bad = 0;
        for (int c = 0; c < 128 && !bad; c++) {
            if (!((sigma[c >> 6] >> (c & 63)) & 1)) continue;
            int64_t x = trans[q * C + bc[c]];
            if (first) { t = x; first = 0; }
            else if (x != t) bad = 1;
        }
        if (first) t = DEAD;  /* (no ASCII character in Σ) */
        if (t == -2) bad = 1;
        if (t < 0) t = DEAD;
        if (!bad) {  /* the non-ASCII sequences must agree with t (or each other when no ASCII) */
            t = seq_target(trans, C, n, bc, ranges, R, seqs, S, target, q, t, !first);
            corrupt = t == -4;
            bad = t < -1;
        }
        res[i] = bad ? BAD : t;
    }
    free(target);
    RELEASE_CT();
#undef RELEASE_CT
    if (corrupt) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "class_targets: a transition out of range");
        return NULL;
    }
    return out;
}

/* run_first(trans int64[n * C], C, byte_class int64[256], q, min_ascii[, ranges, seqs]) -> None or
 * (t, codes bytes of int64[]): ``t`` the state most printable ASCII characters (0x20..0x7E) lead to
 * from ``q`` (ties: the lowest), the ASCII code points (0..0x7F, ascending) that lead there; None
 * when fewer than ``min_ascii`` printable characters are live or lead to ``t``. With ``ranges`` and
 * ``seqs`` (class_targets' arguments): (t, codes, whether every non-ASCII character leads to ``t``
 * too). See dotvllm_plugin.runs._find_run_class (the numpy reading is the reference). */
static PyObject *run_first(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_bc, b_ranges = {0}, b_seqs = {0};
    Py_ssize_t C, q, min_ascii;
    if (!PyArg_ParseTuple(args, "y*ny*nn|y*y*", &b_trans, &C, &b_bc, &q, &min_ascii, &b_ranges, &b_seqs)) return NULL;
    Py_ssize_t n = C > 0 ? b_trans.len / 8 / C : 0, R = b_ranges.len / 16, S = b_seqs.len / 32;
    int bad_seqs = (b_ranges.obj != NULL) != (b_seqs.obj != NULL) || b_ranges.len % 16 || b_seqs.len % 32;
    for (Py_ssize_t r = 0; r < R && !bad_seqs; r++) {
        const int64_t *rg = (const int64_t *)b_ranges.buf + 2 * r;
        bad_seqs = rg[0] < 0 || rg[1] > 255 || rg[0] > rg[1];
    }
    for (Py_ssize_t i = 0; i < S * 4 && !bad_seqs; i++) bad_seqs = ((const int64_t *)b_seqs.buf)[i] >= R;
    if (C <= 0 || b_trans.len != n * C * 8 || b_bc.len != 256 * 8 || q < 0 || q >= n || bad_seqs) {
        PyBuffer_Release(&b_trans);
        PyBuffer_Release(&b_bc);
        PyBuffer_Release(&b_ranges);
        PyBuffer_Release(&b_seqs);
        PyErr_SetString(PyExc_ValueError, "run_first: trans int64[n * C], byte_class int64[256], 0 <= q < n, "
                                          "ranges int64[R * 2] within 0..255 and seqs int64[S * 4] below R");
        return NULL;
    }
    const int64_t *row = (const int64_t *)b_trans.buf + q * C, *bc = b_bc.buf;
    int64_t col[128];
    int ok = 1;
    for (int c = 0; c < 128 && ok; c++) {
        if (bc[c] < 0 || bc[c] >= C) ok = 0;
        else col[c] = row[bc[c]];
    }
    PyObject *res = NULL;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "run_first: a byte class out of range");
        goto done;
    }
    Py_ssize_t live = 0, best_n = 0, n_distinct = 0;
    int64_t best = -1, distinct[0x7F - 0x20];
    Py_ssize_t count[0x7F - 0x20];
    for (int c = 0x20; c < 0x7F; c++) {  /* the live targets and how many characters lead to each */
        if (col[c] < 0) continue;
        live++;
        Py_ssize_t i = 0;
        while (i < n_distinct && distinct[i] != col[c]) i++;  /* (a few distinct targets, mostly) */
        if (i == n_distinct) { distinct[n_distinct] = col[c]; count[n_distinct++] = 0; }
        count[i]++;
    }
    for (Py_ssize_t i = 0; i < n_distinct; i++)  /* the most characters; the least target among equals */
        if (count[i] > best_n || (count[i] == best_n && distinct[i] < best)) { best_n = count[i]; best = distinct[i]; }
    if (live < min_ascii) { res = Py_None; Py_INCREF(res); goto done; }
    int64_t codes[128];
    Py_ssize_t m = 0;
    for (int c = 0; c < 128; c++)
        if (col[c] == best) codes[m++] = c;
    if (m < min_ascii) { res = Py_None; Py_INCREF(res); goto done; }
    if (!b_ranges.obj) {
        res = Py_BuildValue("(Ly#)", (long long)best, (const char *)codes, m * 8);
        goto done;
    }
    for (int c = 0; c < 256; c++)
        if (bc[c] < 0 || bc[c] >= C) ok = 0;
    int64_t other = ok ? seq_target(b_trans.buf, C, n, bc, b_ranges.buf, R, b_seqs.buf, S, NULL, q, best, 1) : 0;
    if (!ok || other == -4) {
        PyErr_SetString(PyExc_ValueError, "run_first: a byte class or a transition out of range");
        goto done;
    }
    res = Py_BuildValue("(Ly#O)", (long long)best, (const char *)codes, m * 8, other == best ? Py_True : Py_False);
done:
    PyBuffer_Release(&b_trans);
    PyBuffer_Release(&b_bc);
    PyBuffer_Release(&b_ranges);
    PyBuffer_Release(&b_seqs);
    return res;
}

static void or_words(uint32_t *dst, const uint32_t *src, Py_ssize_t n);

/* donor_cut(trans int64[n * C], C, byte_class int64[256], q, p, max_drop, firsts int32[256 * W], rows)
 *   -> None or (take bytes uint8[256], kept list): the first bytes ``b`` that lead from ``q`` where they
 * lead from ``p``, a live state (take[b] = 1), and ``rows`` (a sequence of packed int32 rows of W words
 * or None) less the tokens of every other first byte live from ``p`` (the OR of those bytes' rows of
 * ``firsts``, the tokens each first byte starts): a new row each, None where nothing is left (a row
 * itself, no copy, when no byte is dropped). None when more than ``max_drop`` bytes are dropped.
 * See dotvllm_plugin.pushdown.PushdownGrammar._donor_walk (tests compare with numpy). */
static PyObject *donor_cut(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_bc, b_firsts;
    Py_ssize_t C, q, p, max_drop;
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "y*ny*nnny*O", &b_trans, &C, &b_bc, &q, &p, &max_drop, &b_firsts, &rows)) return NULL;
    Py_ssize_t n = C > 0 ? b_trans.len / 8 / C : 0, W = b_firsts.len / 4 / 256;
    PyObject *res = NULL, *kept = NULL, *seq = NULL;
    if (C <= 0 || b_trans.len != n * C * 8 || b_bc.len != 256 * 8 || q < 0 || q >= n || p < 0 || p >= n ||
        b_firsts.len != W * 256 * 4) {
        PyErr_SetString(PyExc_ValueError, "donor_cut: trans int64[n * C], byte_class int64[256], 0 <= q, p < n, "
                                          "firsts int32[256 * W]");
        goto done;
    }
    const int64_t *trans = b_trans.buf, *bc = b_bc.buf;
    uint8_t take[256];
    int drop[256], n_drop = 0;
    for (int b = 0; b < 256; b++) {
        if (bc[b] < 0 || bc[b] >= C) {
            PyErr_SetString(PyExc_ValueError, "donor_cut: a byte class out of range");
            goto done;
        }
        int64_t from_p = trans[p * C + bc[b]], from_q = trans[q * C + bc[b]];
        take[b] = from_p >= 0 && from_q == from_p;
        if (from_p >= 0 && !take[b]) drop[n_drop++] = b;
    }
    if (n_drop > max_drop) { res = Py_None; Py_INCREF(res); goto done; }
    if (!(seq = PySequence_Fast(rows, "donor_cut: rows is not a sequence"))) goto done;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (!(kept = PyList_New(k))) goto done;
    uint32_t *out = NULL;  /* the dropped bytes' tokens, ORed */
    if (n_drop) {
        if (!(out = malloc((size_t)W * 4))) { PyErr_NoMemory(); goto done; }
        const uint32_t *firsts = b_firsts.buf;
        memcpy(out, firsts + (Py_ssize_t)drop[0] * W, (size_t)W * 4);
        for (int i = 1; i < n_drop; i++) or_words(out, firsts + (Py_ssize_t)drop[i] * W, W);
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, i), *got = Py_None;
        if (row != Py_None && !n_drop) {
            got = row;
        } else if (row != Py_None) {
            Py_buffer b;
            if (PyObject_GetBuffer(row, &b, PyBUF_SIMPLE) < 0) { free(out); goto done; }
            if (b.len != W * 4) {
                PyBuffer_Release(&b);
                free(out);
                PyErr_SetString(PyExc_ValueError, "donor_cut: a row is not W int32 words");
                goto done;
            }
            PyObject *arr = PyByteArray_FromStringAndSize(NULL, W * 4);
            if (!arr) { PyBuffer_Release(&b); free(out); goto done; }
            uint32_t *dst = (uint32_t *)PyByteArray_AS_STRING(arr);
            const uint32_t *src = b.buf;
            uint32_t any = 0;
            for (Py_ssize_t j = 0; j < W; j++) any |= dst[j] = src[j] & ~out[j];
            PyBuffer_Release(&b);
            if (any) { PyList_SET_ITEM(kept, i, arr); continue; }  /* (the new row: its reference) */
            Py_DECREF(arr);
        }
        Py_INCREF(got);
        PyList_SET_ITEM(kept, i, got);
    }
    free(out);
    res = Py_BuildValue("(y#O)", (const char *)take, (Py_ssize_t)256, kept);
done:
    Py_XDECREF(kept);
    Py_XDECREF(seq);
    PyBuffer_Release(&b_trans);
    PyBuffer_Release(&b_bc);
    PyBuffer_Release(&b_firsts);
    return res;
}

/* donor_parts(take uint8[256], node_first uint8[n_nodes], off int64[n_levels + 1], exits, ball int64[k],
 *             groups int64[n], pending tuple of ints) -> None or (exits list, mapped tuple)
 * What a donor walk keeps of its donor's walk besides rows (donor_cut): ``exits`` ((terminal, levels
 * int64, nodes int64), ...: nodes of the trie by level and level-local number) less the nodes whose
 * token's first byte is not taken (node_first[off[level] + node]): a group itself where every node
 * stays, (terminal, levels bytes, nodes bytes) of the nodes kept where some do, left out where none
 * does; ``mapped``: per pending state s (local), the first state of ``ball`` (local states) in s's
 * group (groups[s]). None when some pending state's group has no state in the ball. See
 * dotvllm_plugin.pushdown.PushdownGrammar._donor_walk (tests compare with numpy). */
static PyObject *donor_parts(PyObject *self, PyObject *args) {
    Py_buffer b_take, b_first, b_off, b_ball, b_groups;
    PyObject *exits, *pending;
    if (!PyArg_ParseTuple(args, "y*y*y*O!y*y*O!", &b_take, &b_first, &b_off, &PyTuple_Type, &exits, &b_ball, &b_groups,
                          &PyTuple_Type, &pending))
        return NULL;
    PyObject *res = NULL, *out = NULL, *mapped = NULL;
    Py_ssize_t n_nodes = b_first.len, n_lev = b_off.len / 8 - 1, k = b_ball.len / 8, n = b_groups.len / 8;
    if (b_take.len != 256 || b_off.len % 8 || n_lev < 0 || b_ball.len % 8 || b_groups.len % 8) {
        PyErr_SetString(PyExc_ValueError, "donor_parts: take uint8[256], node_first uint8[n], off int64[levels + 1], "
                                          "ball int64[k], groups int64[n]");
        goto done;
    }
    const uint8_t *take = b_take.buf, *first = b_first.buf;
    const int64_t *off = b_off.buf, *ball = b_ball.buf, *groups = b_groups.buf;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (ball[i] < 0 || ball[i] >= n) {
            PyErr_SetString(PyExc_ValueError, "donor_parts: a ball state out of range");
            goto done;
        }
    }
    Py_ssize_t np_ = PyTuple_GET_SIZE(pending);
    if (!(mapped = PyTuple_New(np_))) goto done;
    for (Py_ssize_t i = 0; i < np_; i++) {
        Py_ssize_t s = PyLong_AsSsize_t(PyTuple_GET_ITEM(pending, i));
        if (s == -1 && PyErr_Occurred()) goto done;
        if (s < 0 || s >= n) {
            PyErr_SetString(PyExc_ValueError, "donor_parts: a pending state out of range");
            goto done;
        }
        Py_ssize_t j = 0;
        while (j < k && groups[ball[j]] != groups[s]) j++;
        if (j == k) { res = Py_None; Py_INCREF(res); goto done; }  /* (cannot be: see the caller) */
        PyObject *x = PyLong_FromLongLong(ball[j]);
        if (!x) goto done;
        PyTuple_SET_ITEM(mapped, i, x);
    }
    Py_ssize_t ne = PyTuple_GET_SIZE(exits);
    if (!(out = PyList_New(0))) goto done;
    for (Py_ssize_t e = 0; e < ne; e++) {
        PyObject *grp = PyTuple_GET_ITEM(exits, e);
        if (!PyTuple_Check(grp) || PyTuple_GET_SIZE(grp) != 3) {
            PyErr_SetString(PyExc_TypeError, "donor_parts: an exit group is not (terminal, levels, nodes)");
            goto done;
        }
        Py_buffer bl, bn;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(grp, 1), &bl, PyBUF_SIMPLE) < 0) goto done;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(grp, 2), &bn, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&bl); goto done; }
        Py_ssize_t m = bl.len / 8, kept = 0;
        int bad = bl.len % 8 || bn.len != bl.len;
        PyObject *lv = NULL, *nd = NULL;
        if (!bad && (lv = PyBytes_FromStringAndSize(NULL, bl.len)) && (nd = PyBytes_FromStringAndSize(NULL, bl.len))) {
            const int64_t *level = bl.buf, *node = bn.buf;
            int64_t *lo = (int64_t *)PyBytes_AS_STRING(lv), *no = (int64_t *)PyBytes_AS_STRING(nd);
            for (Py_ssize_t i = 0; i < m && !bad; i++) {
                int64_t L = level[i], g;
                if (L < 0 || L >= n_lev || (g = off[L] + node[i]) < off[L] || g >= off[L + 1] || g >= n_nodes) {
                    bad = 1;
                } else if (take[first[g]]) {
                    lo[kept] = L;
                    no[kept++] = node[i];
                }
            }
        }
        PyBuffer_Release(&bl);
        PyBuffer_Release(&bn);
        int err = bad || !lv || !nd;
        if (bad) PyErr_SetString(PyExc_ValueError, "donor_parts: exit nodes are not (levels, nodes) of the trie");
        PyObject *item = NULL;
        if (!err && kept == m) {
            item = grp;
            Py_INCREF(item);
        } else if (!err && kept) {
            err = _PyBytes_Resize(&lv, kept * 8) < 0 || _PyBytes_Resize(&nd, kept * 8) < 0;
            if (!err) item = PyTuple_Pack(3, PyTuple_GET_ITEM(grp, 0), lv, nd);
            err = err || !item;
        }
        Py_XDECREF(lv);
        Py_XDECREF(nd);
        if (err) goto done;
        if (item) {
            int bad_append = PyList_Append(out, item) < 0;
            Py_DECREF(item);
            if (bad_append) goto done;
        }
    }
    res = PyTuple_Pack(2, out, mapped);
done:
    Py_XDECREF(out);
    Py_XDECREF(mapped);
    PyBuffer_Release(&b_take);
    PyBuffer_Release(&b_first);
    PyBuffer_Release(&b_off);
    PyBuffer_Release(&b_ball);
    PyBuffer_Release(&b_groups);
    return res;
}

/* live[q] = 1 for the states of rows int64[n * C] (entries < 0: no edge) from which an accepting
 * state is reachable, by a search of the reversed edges; -1 when out of memory. */
static int live_of(const int64_t *rows, Py_ssize_t n, Py_ssize_t C, const uint8_t *acc, uint8_t *live) {
    Py_ssize_t m = n * C;
    int64_t *start = calloc((size_t)n + 2, 8), *fill = malloc((size_t)n * 8 + 8);
    int64_t *src = malloc((size_t)m * 8 + 8), *stack = malloc((size_t)n * 8 + 8);
    if (!start || !fill || !src || !stack) {
        free(start); free(fill); free(src); free(stack);
        return -1;
    }
    /* the reversed edges as CSR: the sources of the edges into t are src[start[t]:start[t + 1]] */
    for (Py_ssize_t i = 0; i < m; i++)
        if (rows[i] >= 0 && rows[i] < n) start[rows[i] + 1]++;
    for (Py_ssize_t q = 0; q < n; q++) { start[q + 1] += start[q]; fill[q] = start[q]; }
    for (Py_ssize_t i = 0; i < m; i++)
        if (rows[i] >= 0 && rows[i] < n) src[fill[rows[i]]++] = i / C;
    Py_ssize_t top = 0;
    for (Py_ssize_t q = 0; q < n; q++) {
        live[q] = acc[q] != 0;
        if (live[q]) stack[top++] = q;
    }
    while (top) {
        int64_t t = stack[--top];
        for (int64_t j = start[t]; j < start[t + 1]; j++)
            if (!live[src[j]]) { live[src[j]] = 1; stack[top++] = src[j]; }
    }
    free(start); free(fill); free(src); free(stack);
    return 0;
}

/* live_states(rows int64[n * C], C, accepting uint8[n]) -> bytes uint8[n]: 1 for the states from
 * which an accepting state is reachable (entries < 0: no edge), by a search of the reversed edges. */
static PyObject *live_states(PyObject *self, PyObject *args) {
    Py_buffer b_rows, b_acc;
    Py_ssize_t C;
    if (!PyArg_ParseTuple(args, "y*ny*", &b_rows, &C, &b_acc)) return NULL;
    Py_ssize_t n = b_acc.len, m = n * C;
    if (C < 0 || b_rows.len != m * 8) {
        PyBuffer_Release(&b_rows); PyBuffer_Release(&b_acc);
        PyErr_SetString(PyExc_ValueError, "live_states: rows must be int64[n * C] for n accepting flags");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out && live_of(b_rows.buf, n, C, b_acc.buf, (uint8_t *)PyBytes_AS_STRING(out))) {
        Py_DECREF(out);
        out = PyErr_NoMemory();
    }
    PyBuffer_Release(&b_rows); PyBuffer_Release(&b_acc);
    return out;
}

/* Repeatedly merge the states of rows int64[n * C] (acceptance acc[n]) with identical rows and
 * acceptance into the first of them (state 0 stays first), renumbering the survivors in order, in
 * place; returns the number of states left, -1 when out of memory.
 * Round by round as whole passes would do it (at most max_rounds rounds that merge; a round reads
 * the rows as the rounds before it left them), but after the first round only the survivors whose
 * row reads a state merged by the round before are hashed again: the others' rows, and so their
 * groups, are unchanged (a long chain of twins merges one link per round, a few states each). */
#define MERGE_EMPTY (-1)
#define MERGE_GONE (-2)
static uint64_t merge_hash(const int64_t *r, Py_ssize_t C, uint8_t a) {
    uint64_t h = 0x84222325CBF29CE4ULL ^ a;
    for (Py_ssize_t c = 0; c < C; c++) { h = (h ^ (uint64_t)r[c]) * 0x100000001B3ULL; h ^= h >> 31; }
    return h;
}

static Py_ssize_t merge_in_place(int64_t *rows, uint8_t *acc, Py_ssize_t n, Py_ssize_t C, Py_ssize_t max_rounds) {
    if (n <= 1) return n;
    Py_ssize_t cap = 16;
    while (cap < 2 * n + 2) cap *= 2;
    /* rep[x]: the state x is merged into so far (the first of its group, a survivor: rep[s] == s);
     * a group's members are a list from its survivor (next, last); slot_of[s]: a survivor's slot in
     * the table of survivors by row; pred: the states whose (original) row reads x, as CSR */
    int64_t *rep = malloc((size_t)n * 8), *next = malloc((size_t)n * 8), *last = malloc((size_t)n * 8),
            *slot_of = malloc((size_t)n * 8), *slots = malloc((size_t)cap * 8), *pstart = calloc((size_t)n + 1, 8),
            *pfill = malloc((size_t)n * 8), *psrc = malloc((size_t)(n * C + 1) * 8), *todo = malloc((size_t)n * 8),
            *lose = malloc((size_t)n * 8), *win = malloc((size_t)n * 8);
    uint64_t *hs = malloc((size_t)n * 8);
    uint8_t *mark = calloc((size_t)n, 1);
    Py_ssize_t result = -1;
    if (!rep || !next || !last || !slot_of || !slots || !pstart || !pfill || !psrc || !todo || !lose || !win || !hs
        || !mark)
        goto done;
    for (Py_ssize_t i = 0; i < n * C; i++)  /* (entries < 0 or past n are no states: left as they are) */
        if (rows[i] >= 0 && rows[i] < n) pstart[rows[i] + 1]++;
    for (Py_ssize_t x = 0; x < n; x++) { pstart[x + 1] += pstart[x]; pfill[x] = pstart[x]; }
    for (Py_ssize_t i = 0; i < n * C; i++)
        if (rows[i] >= 0 && rows[i] < n) psrc[pfill[rows[i]]++] = i / C;
    for (Py_ssize_t s = 0; s < n; s++) { rep[s] = s; next[s] = -1; last[s] = s; slot_of[s] = -1; todo[s] = s; }
    for (Py_ssize_t i = 0; i < cap; i++) slots[i] = MERGE_EMPTY;
    Py_ssize_t n_todo = n, used = 0, survivors = n;
    for (Py_ssize_t round = 0; round < max_rounds && n_todo; round++) {
        /* the rows to look at again leave the table, and read the survivors of the round before */
        for (Py_ssize_t i = 0; i < n_todo; i++) {
            int64_t s = todo[i];
            if (slot_of[s] >= 0) { slots[slot_of[s]] = MERGE_GONE; slot_of[s] = -1; }
            int64_t *r = rows + s * C;
            for (Py_ssize_t c = 0; c < C; c++) if (r[c] >= 0 && r[c] < n) r[c] = rep[r[c]];
            hs[s] = merge_hash(r, C, acc[s]);
        }
        if (2 * (used + n_todo) > cap) {  /* (too many slots gone: the survivors in the table again) */
            for (Py_ssize_t i = 0; i < cap; i++) slots[i] = MERGE_EMPTY;
            used = 0;
            for (Py_ssize_t s = 0; s < n; s++) {
                if (slot_of[s] < 0) continue;
                Py_ssize_t sl = (Py_ssize_t)(hs[s] & (uint64_t)(cap - 1));
                while (slots[sl] != MERGE_EMPTY) sl = (sl + 1) & (cap - 1);
                slots[sl] = s;
                slot_of[s] = sl;
                used++;
            }
        }
        /* groups: each row to look at joins the survivor with its row (the first one wins) */
        Py_ssize_t n_merge = 0;
        for (Py_ssize_t i = 0; i < n_todo; i++) {
            int64_t s = todo[i];
            const int64_t *r = rows + s * C;
            Py_ssize_t sl = (Py_ssize_t)(hs[s] & (uint64_t)(cap - 1));
            int64_t found = -1;
            for (; slots[sl] != MERGE_EMPTY; sl = (sl + 1) & (cap - 1)) {
                int64_t t = slots[sl];
                if (t >= 0 && hs[t] == hs[s] && acc[t] == acc[s] && memcmp(rows + t * C, r, (size_t)C * 8) == 0) {
                    found = t;
                    break;
                }
            }
            if (found < 0) {
                slots[sl] = s;
                slot_of[s] = sl;
                used++;
            } else if (found < s) {
                lose[n_merge] = s; win[n_merge++] = found;
            } else {  /* (a survivor the round did not look at, after s: s takes its place) */
                lose[n_merge] = found; win[n_merge++] = s;
                slots[sl] = s;
                slot_of[s] = sl;
                slot_of[found] = -1;
            }
        }
        if (!n_merge) break;
        /* the merges: every member of a merged group now reads as its winner; the survivors whose
         * rows read one of those members are the next round's rows to look at */
        for (Py_ssize_t i = 0; i < n_merge; i++) {
            int64_t l = lose[i], w = win[i];
            for (int64_t x = l; x >= 0; x = next[x]) {
                rep[x] = w;
                for (int64_t j = pstart[x]; j < pstart[x + 1]; j++) mark[psrc[j]] = 1;
            }
            next[last[w]] = l;
            last[w] = last[l];
        }
        survivors -= n_merge;
        n_todo = 0;
        for (Py_ssize_t s = 0; s < n; s++) {
            if (mark[s] && rep[s] == s) todo[n_todo++] = s;
            mark[s] = 0;
        }
    }
    /* the survivors in order, their rows read through the last merges */
    int64_t *newid = pfill;
    for (Py_ssize_t s = 0, k = 0; s < n; s++) newid[s] = rep[s] == s ? k++ : -1;
    for (Py_ssize_t s = 0, k = 0; s < n; s++) {
        if (rep[s] != s) continue;
        for (Py_ssize_t c = 0; c < C; c++) {
            int64_t t = rows[s * C + c];
            rows[k * C + c] = t < 0 || t >= n ? t : newid[rep[t]];
        }
        acc[k++] = acc[s];
    }
    result = survivors;
done:
    free(rep); free(next); free(last); free(slot_of); free(slots); free(pstart); free(pfill); free(psrc); free(todo);
    free(lose); free(win); free(hs); free(mark);
    return result;
}

/* merge_twins(rows int64[n * C], accepting uint8[n], max_rounds) -> (rows, accepting) as bytes:
 * repeatedly merge states with identical rows and acceptance into the first of them (state 0
 * stays first), renumbering the survivors in order. */
static PyObject *merge_twins_c(PyObject *self, PyObject *args) {
    Py_buffer b_rows, b_acc;
    Py_ssize_t C, max_rounds;
    if (!PyArg_ParseTuple(args, "y*ny*n", &b_rows, &C, &b_acc, &max_rounds)) return NULL;
    Py_ssize_t n = C ? b_rows.len / 8 / C : 0;
    int64_t *rows = malloc((size_t)(n * C + 1) * 8);
    uint8_t *acc = malloc((size_t)n + 1);
    PyObject *result = NULL;
    if (!rows || !acc) { PyErr_NoMemory(); goto fail; }
    memcpy(rows, b_rows.buf, (size_t)n * C * 8);
    memcpy(acc, b_acc.buf, (size_t)n);
    n = merge_in_place(rows, acc, n, C, max_rounds);
    if (n < 0) { PyErr_NoMemory(); goto fail; }
    result = Py_BuildValue("(y#y#)", (const char *)rows, (Py_ssize_t)(n * C * 8), (const char *)acc, n);
fail:
    free(rows); free(acc);
    PyBuffer_Release(&b_rows); PyBuffer_Release(&b_acc);
    return result;
}

/* trim(trans int32[n * 256], accepting uint8[n], max_rounds) -> None when state 0 reaches no
 * accepting state, else (transitions bytearray of int32[m * 256], accepting bytearray of uint8[m],
 * class table bytes of int64[m * C], byte class bytes of int64[256], C): dotvllm_plugin.regex.
 * automaton.trim in one call: the states that reach an accepting state (in order, edges into the
 * others dropped), merge_twins on the byte classes, the table by byte again and its byte classes. */
static PyObject *trim_c(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_acc;
    Py_ssize_t max_rounds;
    if (!PyArg_ParseTuple(args, "y*y*n", &b_trans, &b_acc, &max_rounds)) return NULL;
    const int32_t *trans = b_trans.buf;
    const uint8_t *acc_in = b_acc.buf;
    Py_ssize_t n = b_acc.len;
    PyObject *result = NULL, *t_out = NULL, *a_out = NULL, *r_out = NULL, *bc_out = NULL;
    int64_t *rows = NULL, *newid = NULL;
    uint8_t *live = NULL, *acc = NULL;
    if (n < 1 || b_trans.len != n * 256 * 4) {
        PyErr_SetString(PyExc_ValueError, "trim: trans must be int32[n * 256] for n >= 1 accepting flags");
        goto out;
    }
    int64_t cls[256], rep[256];
    Py_ssize_t C = classes_of(trans, n, cls, rep);
    rows = malloc((size_t)(n * C + 1) * 8);
    newid = malloc((size_t)(n + 1) * 8);
    live = malloc((size_t)n + 1);
    acc = malloc((size_t)n + 1);
    if (!rows || !newid || !live || !acc) { PyErr_NoMemory(); goto out; }
    for (Py_ssize_t s = 0; s < n; s++)
        for (Py_ssize_t c = 0; c < C; c++) {
            int64_t t = trans[s * 256 + rep[c]];
            rows[s * C + c] = t >= 0 && t < n ? t : -1;
        }
    if (live_of(rows, n, C, acc_in, live)) { PyErr_NoMemory(); goto out; }
    if (!live[0]) { result = Py_None; Py_INCREF(result); goto out; }
    Py_ssize_t m = 0;
    for (Py_ssize_t s = 0; s < n; s++) newid[s] = live[s] ? m++ : -1;
    for (Py_ssize_t s = 0, k = 0; s < n; s++) {
        if (!live[s]) continue;
        for (Py_ssize_t c = 0; c < C; c++) {
            int64_t t = rows[s * C + c];
            rows[k * C + c] = t < 0 ? -1 : newid[t];
        }
        acc[k++] = acc_in[s] != 0;
    }
    m = merge_in_place(rows, acc, m, C, max_rounds);
    if (m < 0) { PyErr_NoMemory(); goto out; }
    t_out = PyByteArray_FromStringAndSize(NULL, m * 256 * 4);
    a_out = PyByteArray_FromStringAndSize((const char *)acc, m);
    if (!t_out || !a_out) goto out;
    int32_t *tt = (int32_t *)PyByteArray_AS_STRING(t_out);
    for (Py_ssize_t s = 0; s < m; s++)
        for (int b = 0; b < 256; b++) tt[s * 256 + b] = (int32_t)rows[s * C + cls[b]];
    /* The coarsest classes of tt: classes whose columns of the merged table are equal merge (a
     * column of tt is its class's column), numbered by first byte as classes_of numbers them. */
    int64_t same_as[256], number[256], cls2[256], rep2[256];
    for (Py_ssize_t c = 0; c < C; c++) {
        same_as[c] = c;
        number[c] = -1;
        for (Py_ssize_t d = 0; d < c && same_as[c] == c; d++) {
            if (same_as[d] != d) continue;
            int same = 1;
            for (Py_ssize_t s = 0; s < m && same; s++) same = rows[s * C + c] == rows[s * C + d];
            if (same) same_as[c] = d;
        }
    }
    Py_ssize_t C2 = 0;
    for (int b = 0; b < 256; b++) {
        int64_t g = same_as[cls[b]];
        if (number[g] < 0) { number[g] = C2; rep2[C2++] = b; }
        cls2[b] = number[g];
    }
    r_out = PyBytes_FromStringAndSize(NULL, m * C2 * 8);
    bc_out = PyBytes_FromStringAndSize((const char *)cls2, 256 * 8);
    if (!r_out || !bc_out) goto out;
    int64_t *o = (int64_t *)PyBytes_AS_STRING(r_out);
    for (Py_ssize_t s = 0; s < m; s++)
        for (Py_ssize_t c = 0; c < C2; c++) o[s * C2 + c] = tt[s * 256 + rep2[c]];
    result = Py_BuildValue("(OOOOn)", t_out, a_out, r_out, bc_out, C2);
out:
    Py_XDECREF(t_out); Py_XDECREF(a_out); Py_XDECREF(r_out); Py_XDECREF(bc_out);
    free(rows); free(newid); free(live); free(acc);
    PyBuffer_Release(&b_trans); PyBuffer_Release(&b_acc);
    return result;
}

/* chain(data) -> (transitions bytearray of int32[(n + 1) * 256], accepting bytearray of uint8[n + 1],
 * class table bytes of int64[(n + 1) * C], byte class bytes of int64[256], C): the automaton of one
 * byte string of length n (state i steps on data[i] to i + 1, state n accepts) with its byte classes
 * numbered as byte_classes numbers them, by first byte: each byte of the string a class of its own
 * (its column is where it occurs), all other bytes one class. dotvllm_plugin.regex._chain in one
 * call (JSON keys and punctuation: most terminals of a schema's grammar). */
static PyObject *chain(PyObject *self, PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    const uint8_t *d = b.buf;
    Py_ssize_t n = b.len, C = 0;
    int64_t cls[256], other = -1;
    uint8_t used[256] = {0};
    for (Py_ssize_t i = 0; i < n; i++) used[d[i]] = 1;
    for (int x = 0; x < 256; x++) {
        if (used[x]) cls[x] = C++;
        else if (other < 0) cls[x] = other = C++;
        else cls[x] = other;
    }
    PyObject *t_out = PyByteArray_FromStringAndSize(NULL, (n + 1) * 256 * 4), *a_out = PyByteArray_FromStringAndSize(NULL, n + 1),
             *r_out = PyBytes_FromStringAndSize(NULL, (n + 1) * C * 8),
             *bc_out = PyBytes_FromStringAndSize((const char *)cls, 256 * 8), *result = NULL;
    if (t_out && a_out && r_out && bc_out) {
        int32_t *t = (int32_t *)PyByteArray_AS_STRING(t_out);
        uint8_t *a = (uint8_t *)PyByteArray_AS_STRING(a_out);
        int64_t *r = (int64_t *)PyBytes_AS_STRING(r_out);
        memset(t, 0xff, (size_t)(n + 1) * 256 * 4);
        memset(a, 0, (size_t)n + 1);
        for (Py_ssize_t i = 0; i < (n + 1) * C; i++) r[i] = -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            t[i * 256 + d[i]] = (int32_t)(i + 1);
            r[i * C + cls[d[i]]] = i + 1;
        }
        a[n] = 1;
        result = Py_BuildValue("(OOOOn)", t_out, a_out, r_out, bc_out, C);
    }
    Py_XDECREF(t_out); Py_XDECREF(a_out); Py_XDECREF(r_out); Py_XDECREF(bc_out);
    PyBuffer_Release(&b);
    return result;
}

/* reach_sets(trans int64[n * C], C, chosen int64[n], exp_start int64[T + 1], exp_terms int64[...],
 * n_bits) -> (group bytes of int64[n], sets bytes of uint64[g * words]): per state the set of
 * terminals it or any state after it chooses (chosen -1: none; a chosen id t stands for
 * exp_terms[exp_start[t] : exp_start[t + 1]]), as the index of its set among the distinct ones
 * (numbered by first state). A fixpoint over the successors, states in reverse order.
 * Optional ``ignored`` (uint64[words], the ignored terminals' bits): a third result, bytes of
 * int64[n], the reach groups: 0 for state 0 and for the states whose set is empty or holds an
 * ignored terminal, the other distinct sets numbered 1.. in the order of their indexes. */
static PyObject *reach_sets(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_chosen, b_es, b_et, b_ign = {0};
    Py_ssize_t C, n_bits;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*n|y*", &b_trans, &C, &b_chosen, &b_es, &b_et, &n_bits, &b_ign)) return NULL;
    const int64_t *trans = b_trans.buf, *chosen = b_chosen.buf, *es = b_es.buf, *et = b_et.buf;
    Py_ssize_t n = b_chosen.len / 8, T = b_es.len / 8 - 1, words = (n_bits + 63) / 64;
    if (words < 1) words = 1;
    PyObject *result = NULL;
    uint64_t *bits = NULL;
    char *sets = NULL;  /* distinct sets, words * 8 bytes each */
    int64_t *group = NULL;
    table tab = {0};
    if (C <= 0 || b_trans.len / 8 != n * C) {
        PyErr_SetString(PyExc_ValueError, "reach_sets: the table is not n x C");
        goto out;
    }
    bits = calloc((size_t)(n ? n : 1) * words, 8);
    group = malloc((size_t)(n ? n : 1) * 8);
    if (!bits || !group || table_init(&tab, 64)) { PyErr_NoMemory(); goto out; }
    for (Py_ssize_t s = 0; s < n; s++) {
        int64_t t = chosen[s];
        if (t < 0) continue;
        if (t >= T) { PyErr_SetString(PyExc_ValueError, "reach_sets: a chosen terminal has no expansion"); goto out; }
        for (int64_t j = es[t]; j < es[t + 1]; j++) {
            int64_t m = et[j];
            if (m < 0 || m >= n_bits) { PyErr_SetString(PyExc_ValueError, "reach_sets: terminal out of range"); goto out; }
            bits[s * words + m / 64] |= (uint64_t)1 << (m % 64);
        }
    }
    for (int changed = 1; changed;) {
        changed = 0;
        for (Py_ssize_t s = n - 1; s >= 0; s--) {
            uint64_t *b = bits + s * words;
            const int64_t *row = trans + s * C;
            for (Py_ssize_t c = 0; c < C; c++) {
                int64_t x = row[c];
                if (x < 0 || x == s) continue;
                const uint64_t *bx = bits + x * words;
                for (Py_ssize_t w = 0; w < words; w++) {
                    uint64_t v = b[w] | bx[w];
                    if (v != b[w]) { b[w] = v; changed = 1; }
                }
            }
        }
    }
    Py_ssize_t g = 0, scap = 0;
    for (Py_ssize_t s = 0; s < n; s++) {
        int64_t found = intern_row(&tab, &sets, &g, &scap, bits + s * words, (size_t)words * 8);
        if (found < 0) { PyErr_NoMemory(); goto out; }
        group[s] = found;
    }
    if (!b_ign.buf) {
        result = Py_BuildValue("(y#y#)", (const char *)group, (Py_ssize_t)(n * 8), (const char *)sets,
                               (Py_ssize_t)(g * words * 8));
        goto out;
    }
    if (b_ign.len != words * 8) { PyErr_SetString(PyExc_ValueError, "reach_sets: ignored is not one word per 64 terminals"); goto out; }
    {
        const uint64_t *ign = b_ign.buf;
        int64_t *number = malloc((size_t)(g ? g : 1) * 8), *reach = malloc((size_t)(n ? n : 1) * 8);
        if (!number || !reach) { free(number); free(reach); PyErr_NoMemory(); goto out; }
        for (Py_ssize_t k = 0; k < g; k++) {  /* -1: reads None */
            const uint64_t *w = (const uint64_t *)(sets + k * words * 8);
            uint64_t any = 0, hit = 0;
            for (Py_ssize_t j = 0; j < words; j++) { any |= w[j]; hit |= w[j] & ign[j]; }
            number[k] = (!any || hit) ? -1 : 0;
        }
        /* the sets in use by states past 0 reading a set, numbered by index (state 0: group 0) */
        uint8_t *used = calloc((size_t)(g ? g : 1), 1);
        if (!used) { free(number); free(reach); PyErr_NoMemory(); goto out; }
        for (Py_ssize_t s2 = 1; s2 < n; s2++) if (number[group[s2]] != -1) used[group[s2]] = 1;
        int64_t next = 1;
        for (Py_ssize_t k = 0; k < g; k++) if (used[k]) number[k] = next++;
        for (Py_ssize_t s2 = 0; s2 < n; s2++) reach[s2] = s2 == 0 || !used[group[s2]] ? 0 : number[group[s2]];
        result = Py_BuildValue("(y#y#y#)", (const char *)group, (Py_ssize_t)(n * 8), (const char *)sets,
                               (Py_ssize_t)(g * words * 8), (const char *)reach, (Py_ssize_t)(n * 8));
        free(number); free(reach); free(used);
    }
out:
    free(bits); free(sets); free(group); table_free(&tab);
    PyBuffer_Release(&b_trans); PyBuffer_Release(&b_chosen); PyBuffer_Release(&b_es); PyBuffer_Release(&b_et);
    if (b_ign.buf) PyBuffer_Release(&b_ign);
    return result;
}

/* ball(trans int64[n * C], C, q, depth, chosen int64[n], cls int64[n], bc int64[256][, lo]) -> (states
 * bytes of int64[m], signature bytes, terms: a tuple of k ints): the states within ``depth`` steps of
 * ``q`` in breadth-first order (successors by class; ``lo`` added to each), and the ball as bytes, whatever lexer it lies
 * in: the ball's own byte classes (bytes whose columns agree on the ball's rows, numbered by first
 * byte; uint8 per byte), each state's row over them relabelled to ball positions (-3: a state past
 * the ball; -1 and -2 kept), the states' chosen terminals relabelled by first appearance (-1 kept;
 * ``terms`` the terminals in label order), and their groups ``cls`` (0: no parser check; the others
 * renumbered by first appearance). Equal signatures walk any byte string of at most ``depth`` bytes
 * alike, into the same groups, ending the same labels. */
typedef struct {  /* a ball's reads and work arrays, for one lexer's n states and C classes */
    const int64_t *trans, *chosen, *cls, *bc;
    Py_ssize_t n, C, lo;
    int32_t *label, *relabel, *ballcls, *rep;  /* label, relabel: -1 between balls */
    int64_t *order, *terms;
} ball_in;

static void ball_in_free(ball_in *w) {
    free(w->label); free(w->relabel); free(w->ballcls); free(w->rep); free(w->order); free(w->terms);
}

/* checks the tables once and makes the work arrays; 0, or -1 with an error set */
static int ball_in_init(ball_in *w, const Py_buffer *trans, Py_ssize_t C, const Py_buffer *chosen, const Py_buffer *cls,
                        const Py_buffer *bc, Py_ssize_t lo) {
    memset(w, 0, sizeof *w);
    Py_ssize_t n = C > 0 ? trans->len / 8 / C : 0;
    w->trans = trans->buf; w->chosen = chosen->buf; w->cls = cls->buf; w->bc = bc->buf;
    w->n = n; w->C = C; w->lo = lo;
    if (C <= 0 || trans->len != n * C * 8 || chosen->len < n * 8 || cls->len < n * 8 || bc->len != 256 * 8) {
        PyErr_SetString(PyExc_ValueError, "ball: the table is not n x C, chosen/cls shorter than it, or bc not 256");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (w->cls[i] < 0 || w->cls[i] >= n) { PyErr_SetString(PyExc_ValueError, "ball: cls out of 0 .. n - 1"); return -1; }
    }
    for (Py_ssize_t i = 0; i < n * C; i++) {
        if (w->trans[i] >= n) { PyErr_SetString(PyExc_ValueError, "ball: a target out of 0 .. n - 1"); return -1; }
    }
    for (int b = 0; b < 256; b++) {
        if (w->bc[b] < 0 || w->bc[b] >= C) { PyErr_SetString(PyExc_ValueError, "ball: bc out of 0 .. C - 1"); return -1; }
    }
    Py_ssize_t m = n ? n : 1;
    w->label = malloc((size_t)m * 4);
    w->relabel = malloc((size_t)m * 4);
    w->ballcls = malloc((size_t)C * 4);
    w->rep = malloc((size_t)C * 4);
    w->order = malloc((size_t)m * 8);
    w->terms = malloc((size_t)m * 8);
    if (!w->label || !w->relabel || !w->ballcls || !w->rep || !w->order || !w->terms) {
        ball_in_free(w);
        PyErr_NoMemory();
        return -1;
    }
    memset(w->label, 0xff, (size_t)m * 4);
    memset(w->relabel, 0xff, (size_t)m * 4);
    return 0;
}

/* the ball of local state q within depth steps (see ball below); NULL with an error set */
static PyObject *ball_of(ball_in *w, Py_ssize_t q, Py_ssize_t depth) {
    const int64_t *trans = w->trans, *chosen = w->chosen, *cls = w->cls, *bc = w->bc;
    Py_ssize_t C = w->C, lo = w->lo;
    int32_t *label = w->label, *relabel = w->relabel, *ballcls = w->ballcls, *rep = w->rep;
    int64_t *order = w->order, *terms = w->terms;
    PyObject *result = NULL;
    if (q < 0 || q >= w->n) {
        PyErr_SetString(PyExc_ValueError, "ball: q out of range");
        return NULL;
    }
    Py_ssize_t m = 1, start = 0;
    order[0] = q;
    label[q] = 0;
    for (Py_ssize_t level = 0; level < depth; level++) {
        Py_ssize_t end = m;
        for (Py_ssize_t i = start; i < end; i++) {
            const int64_t *row = trans + order[i] * C;
            for (Py_ssize_t c = 0; c < C; c++) {
                int64_t t = row[c];
                if (t >= 0 && label[t] < 0) { label[t] = (int32_t)m; order[m++] = t; }
            }
        }
        if (m == end) break;
        start = end;
    }
    /* the rows relabelled, column-major by the lexer's classes (a class's column is contiguous) */
    int32_t *sub = malloc((size_t)(m * C) * 4);
    if (!sub) { PyErr_NoMemory(); goto out; }
    for (Py_ssize_t i = 0; i < m; i++) {
        const int64_t *row = trans + order[i] * C;
        for (Py_ssize_t c = 0; c < C; c++) {
            int64_t t = row[c];
            sub[c * m + i] = t >= 0 ? (label[t] >= 0 ? label[t] : -3) : (int32_t)t;
        }
    }
    /* the ball's classes: lexer classes with equal columns, numbered by first byte */
    int nb = 0;
    for (Py_ssize_t c = 0; c < C; c++) ballcls[c] = -1;
    for (int b = 0; b < 256; b++) {
        int64_t c = bc[b];
        if (ballcls[c] >= 0) continue;
        for (int k = 0; k < nb; k++)
            if (!memcmp(sub + (Py_ssize_t)rep[k] * m, sub + c * m, (size_t)m * 4)) { ballcls[c] = k; break; }
        if (ballcls[c] < 0) { rep[nb] = (int32_t)c; ballcls[c] = nb++; }
    }
    Py_ssize_t sig_len = 256 + m * nb * 4 + m * 4 + m * 4, k_terms = 0;
    PyObject *sig = PyBytes_FromStringAndSize(NULL, sig_len);
    PyObject *states = PyBytes_FromStringAndSize(NULL, m * 8);
    if (states) for (Py_ssize_t i = 0; i < m; i++) ((int64_t *)PyBytes_AS_STRING(states))[i] = order[i] + lo;
    if (sig && states) {
        char *p = PyBytes_AS_STRING(sig);
        for (int b = 0; b < 256; b++) p[b] = (char)(uint8_t)ballcls[bc[b]];
        int32_t *tab = (int32_t *)(p + 256);
        for (Py_ssize_t i = 0; i < m; i++)
            for (int k = 0; k < nb; k++) tab[i * nb + k] = sub[(Py_ssize_t)rep[k] * m + i];
        int32_t *ch = (int32_t *)(p + 256 + m * nb * 4);
        int32_t *gr = (int32_t *)(p + 256 + m * nb * 4 + m * 4);
        /* groups renumbered by first appearance in the ball, group 0 (no parser check) kept as 0 */
        relabel[0] = 0;
        int32_t next = 1;
        for (Py_ssize_t i = 0; i < m; i++) {
            int64_t g = cls[order[i]], t = chosen[order[i]];
            if (relabel[g] < 0) relabel[g] = next++;
            gr[i] = relabel[g];
            if (t < 0) { ch[i] = -1; continue; }
            Py_ssize_t j = 0;
            while (j < k_terms && terms[j] != t) j++;  /* (a ball ends few terminals) */
            if (j == k_terms) terms[k_terms++] = t;
            ch[i] = (int32_t)j;
        }
        PyObject *tb = PyTuple_New(k_terms);
        for (Py_ssize_t j = 0; tb && j < k_terms; j++) {
            PyObject *x = PyLong_FromLongLong(terms[j]);
            if (!x) Py_CLEAR(tb);
            else PyTuple_SET_ITEM(tb, j, x);
        }
        if (tb) result = PyTuple_Pack(3, states, sig, tb);
        Py_XDECREF(tb);
    }
    Py_XDECREF(sig);
    Py_XDECREF(states);
    free(sub);
out:
    for (Py_ssize_t i = 0; i < m; i++) {  /* (the marks put back for the next ball) */
        label[order[i]] = -1;
        relabel[cls[order[i]]] = -1;
    }
    relabel[0] = -1;
    return result;
}

/* reach_tuples(sets, step, ignored) -> list: each of the bitsets ``sets`` (``step`` bytes each,
 * uint64 words, bit t: real terminal t) as pushdown's _reach_of_bits reads it: its terminals
 * ascending as a tuple, None when it has none or one of ``ignored``'s (uint64 words, as many). */
static PyObject *reach_tuples(PyObject *self, PyObject *args) {
    Py_buffer b_sets, b_ign;
    Py_ssize_t step;
    if (!PyArg_ParseTuple(args, "y*ny*", &b_sets, &step, &b_ign)) return NULL;
    PyObject *out = NULL;
    if (step <= 0 || step % 8 || b_sets.len % step || b_ign.len != step) {
        PyErr_SetString(PyExc_ValueError, "reach_tuples: sets of step bytes (uint64 words), ignored one set");
        goto done;
    }
    Py_ssize_t n = b_sets.len / step, words = step / 8;
    const uint64_t *ign = b_ign.buf;
    out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        const uint64_t *s = (const uint64_t *)((const char *)b_sets.buf + i * step);
        Py_ssize_t count = 0;
        int ignored = 0;
        for (Py_ssize_t k = 0; k < words; k++) {
            uint64_t w;
            memcpy(&w, s + k, 8);
            count += __builtin_popcountll(w);
            ignored |= (w & ign[k]) != 0;
        }
        PyObject *item;
        if (!count || ignored) {
            item = Py_None;
            Py_INCREF(item);
        } else {
            item = PyTuple_New(count);
            Py_ssize_t j = 0;
            for (Py_ssize_t k = 0; item && k < words; k++) {
                uint64_t w;
                memcpy(&w, s + k, 8);
                while (w) {
                    PyObject *t = PyLong_FromLongLong(k * 64 + __builtin_ctzll(w));
                    if (!t) { Py_CLEAR(item); break; }
                    PyTuple_SET_ITEM(item, j++, t);
                    w &= w - 1;
                }
            }
        }
        if (!item) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyBuffer_Release(&b_sets);
    PyBuffer_Release(&b_ign);
    return out;
}

static PyObject *ball(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_chosen, b_cls, b_bc;
    Py_ssize_t C, q, depth, lo = 0;
    if (!PyArg_ParseTuple(args, "y*nnny*y*y*|n", &b_trans, &C, &q, &depth, &b_chosen, &b_cls, &b_bc, &lo)) return NULL;
    PyObject *result = NULL;
    ball_in w;
    if (ball_in_init(&w, &b_trans, C, &b_chosen, &b_cls, &b_bc, lo) == 0) {
        result = ball_of(&w, q, depth);
        ball_in_free(&w);
    }
    PyBuffer_Release(&b_trans); PyBuffer_Release(&b_chosen); PyBuffer_Release(&b_cls);
    PyBuffer_Release(&b_bc);
    return result;
}

/* ball_reader(trans, C, chosen, cls, bc, lo) -> a capsule that ball_at reads: the tables of one
 * lexer checked once, held (their buffers) and the work arrays made once, for the many balls asked
 * of a lexer one at a time (a ball's own argument parsing cost more than its work in most) */
typedef struct {
    Py_buffer b[4];
    ball_in w;
} ball_cap;

static void ball_cap_free(PyObject *cap) {
    ball_cap *r = PyCapsule_GetPointer(cap, "dotvllm.ball");
    if (!r) return;
    ball_in_free(&r->w);
    for (int i = 0; i < 4; i++) PyBuffer_Release(&r->b[i]);
    free(r);
}

static PyObject *ball_reader(PyObject *self, PyObject *args) {
    PyObject *o_trans, *o_chosen, *o_cls, *o_bc;
    Py_ssize_t C, lo;
    if (!PyArg_ParseTuple(args, "OnOOOn", &o_trans, &C, &o_chosen, &o_cls, &o_bc, &lo)) return NULL;
    ball_cap *r = calloc(1, sizeof *r);
    if (!r) return PyErr_NoMemory();
    PyObject *objs[4] = {o_trans, o_chosen, o_cls, o_bc};
    int held = hold_buffers(objs, r->b, 4) == 0;
    PyObject *cap = NULL;
    if (held && ball_in_init(&r->w, &r->b[0], C, &r->b[1], &r->b[2], &r->b[3], lo) == 0) {
        cap = PyCapsule_New(r, "dotvllm.ball", ball_cap_free);
        if (!cap) ball_in_free(&r->w);
    }
    if (!cap) {
        for (int i = 0; held && i < 4; i++) PyBuffer_Release(&r->b[i]);
        free(r);
    }
    return cap;
}

/* ball_at(reader, q, depth): ball(...) of local state q of the reader's lexer */
static PyObject *ball_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "ball_at(reader, q, depth)");
        return NULL;
    }
    ball_cap *r = PyCapsule_GetPointer(args[0], "dotvllm.ball");
    if (!r) return NULL;
    Py_ssize_t q = PyLong_AsSsize_t(args[1]), depth = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) return NULL;
    return ball_of(&r->w, q, depth);
}

/* ---- json_cut: the product of dotvllm_plugin.regex.exclusion, in C --------------------------------
 *
 * json_cut(trans int32[n * 256], accepting uint8[n], initial, cps int32[...], name_off int64[k + 1])
 *   -> (table bytes of int32[m * 256], accepting bytes of uint8[m])
 * What exclusion._product and exclusion._finish compute before the trim, for the names
 * cps[name_off[i] : name_off[i + 1]] (code points, sorted and distinct as the Python reader takes
 * them): the same pairs in the same order, their rows with the reader's overrides, then the
 * automaton's states they lead to. A reader position is (trie node, the bytes read of the current
 * character's spelling): up to 11 bytes ("\u" and nine of "d83d\ude00"). */

typedef struct {
    uint64_t a, b;
    int64_t v;
} jc_slot;

typedef struct {
    jc_slot *s;
    size_t cap, n;
} jc_map;

static uint64_t jc_hash(uint64_t a, uint64_t b) {
    uint64_t h = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL + (a << 6) + (a >> 2));
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 29);
}

static int jc_map_grow(jc_map *m) {
    size_t cap = m->cap ? m->cap * 2 : 256;
    jc_slot *s = malloc(cap * sizeof(jc_slot));
    if (!s) return -1;
    for (size_t i = 0; i < cap; i++) s[i].v = -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->s[i].v < 0) continue;
        size_t j = jc_hash(m->s[i].a, m->s[i].b) & (cap - 1);
        while (s[j].v >= 0) j = (j + 1) & (cap - 1);
        s[j] = m->s[i];
    }
    free(m->s);
    m->s = s;
    m->cap = cap;
    return 0;
}

/* The value of key (a, b), inserting v_new when absent (*added set); -2 when out of memory. */
static int64_t jc_get(jc_map *m, uint64_t a, uint64_t b, int64_t v_new, int *added) {
    if ((m->n + 1) * 2 > m->cap && jc_map_grow(m)) return -2;
    size_t j = jc_hash(a, b) & (m->cap - 1);
    while (m->s[j].v >= 0) {
        if (m->s[j].a == a && m->s[j].b == b) {
            *added = 0;
            return m->s[j].v;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->s[j].a = a;
    m->s[j].b = b;
    m->s[j].v = v_new;
    m->n++;
    *added = 1;
    return v_new;
}

typedef struct {
    int32_t node;
    uint8_t len;
    uint8_t bytes[11];
} jc_pos;

typedef struct {
    /* the trie: edges in insertion order per node */
    int32_t *first, *last, *end;      /* per node */
    int32_t *e_cp, *e_child, *e_next; /* per edge */
    Py_ssize_t n_nodes, n_edges;
    /* reader positions: id 0 is the start (before the quote) */
    jc_pos *pos;
    Py_ssize_t n_pos, cap_pos;
    int64_t *st_off, *st_len;         /* per position: its step in steps (st_len -1: not yet) */
    vec steps;                        /* (byte << 32 | target + 1) entries; target -1: cut */
    jc_map pos_ids;
} jc_reader;

static uint64_t jc_key_a(const jc_pos *p) {
    uint64_t a = (uint64_t)(uint32_t)p->node | (uint64_t)p->len << 32;
    for (int i = 0; i < 3; i++) a |= (uint64_t)p->bytes[i] << (40 + 8 * i);
    return a;
}

static uint64_t jc_key_b(const jc_pos *p) {
    uint64_t b = 0;
    for (int i = 3; i < 11; i++) b |= (uint64_t)p->bytes[i] << (8 * (i - 3));
    return b;
}

/* The id of position (node, bytes[:len]), interned; -2 when out of memory. */
static int64_t jc_position(jc_reader *r, int32_t node, const uint8_t *bytes, int len) {
    jc_pos p;
    memset(&p, 0, sizeof p);
    p.node = node;
    p.len = (uint8_t)len;
    memcpy(p.bytes, bytes, (size_t)len);
    int added;
    int64_t id = jc_get(&r->pos_ids, jc_key_a(&p), jc_key_b(&p) ^ 0x5555555555555555ULL, r->n_pos, &added);
    if (id < 0 || !added) return id;
    if (r->n_pos == r->cap_pos) {
        Py_ssize_t cap = r->cap_pos ? r->cap_pos * 2 : 64;
        jc_pos *np_ = realloc(r->pos, (size_t)cap * sizeof(jc_pos));
        int64_t *no = realloc(r->st_off, (size_t)cap * 8);
        if (np_) r->pos = np_;
        if (no) r->st_off = no;
        int64_t *nl = realloc(r->st_len, (size_t)cap * 8);
        if (nl) r->st_len = nl;
        if (!np_ || !no || !nl) return -2;
        r->cap_pos = cap;
    }
    r->pos[r->n_pos] = p;
    r->st_len[r->n_pos] = -1;
    return r->n_pos++;
}

static int jc_utf8(int32_t cp, uint8_t *u) {
    if (cp < 0x80) { u[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { u[0] = (uint8_t)(0xC0 | cp >> 6); u[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        u[0] = (uint8_t)(0xE0 | cp >> 12); u[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F)); u[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (uint8_t)(0xF0 | cp >> 18); u[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F)); u[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static int jc_literal_ok(int32_t cp) {
    return cp >= 0x20 && cp != '"' && cp != '\\' && !(cp >= 0xD800 && cp <= 0xDFFF);
}

/* The lower-case \u spelling after the first "\u" (a surrogate pair past the BMP). */
static int jc_hex(int32_t cp, uint8_t *out) {
    static const char digits[] = "0123456789abcdef";
    if (cp < 0x10000) {
        for (int i = 0; i < 4; i++) out[i] = (uint8_t)digits[cp >> (12 - 4 * i) & 0xF];
        return 4;
    }
    int32_t c = cp - 0x10000, hi = 0xD800 + (c >> 10), lo = 0xDC00 + (c & 0x3FF);
    for (int i = 0; i < 4; i++) out[i] = (uint8_t)digits[hi >> (12 - 4 * i) & 0xF];
    out[4] = '\\';
    out[5] = 'u';
    for (int i = 0; i < 4; i++) out[6 + i] = (uint8_t)digits[lo >> (12 - 4 * i) & 0xF];
    return 10;
}

/* Python dict semantics over bytes: a byte keeps its first slot, its value is the last set. */
typedef struct {
    int16_t slot[256];
    uint8_t byte[256];
    int64_t to[256];
    int n;
} jc_out;

static void jc_set(jc_out *o, int b, int64_t to) {
    if (o->slot[b] < 0) {
        o->slot[b] = (int16_t)o->n;
        o->byte[o->n++] = (uint8_t)b;
    }
    o->to[o->slot[b]] = to;
}

static const uint8_t jc_short_letter[8] = {'"', '\\', '/', 'b', 'f', 'n', 'r', 't'};
static const int32_t jc_short_char[8] = {'"', '\\', '/', '\b', '\f', '\n', '\r', '\t'};

#define JC_POS(NODE, BYTES, LEN) do { to = jc_position(r, (NODE), (BYTES), (LEN)); if (to < 0) return -1; } while (0)

/* Compute position id's step into r->steps; -1 when out of memory. */
static int jc_compute_step(jc_reader *r, int64_t id) {
    jc_out o;
    memset(o.slot, 0xff, sizeof o.slot);
    o.n = 0;
    int64_t to;
    jc_pos p = r->pos[id];
    int32_t node = p.node;
    uint8_t u[4], buf[12] = {0};
    if (id == 0) {
        JC_POS(0, buf, 0);
        jc_set(&o, '"', to);
    } else if (p.len == 0) {
        for (int32_t e = r->first[node]; e >= 0; e = r->e_next[e]) {
            if (!jc_literal_ok(r->e_cp[e])) continue;
            int k = jc_utf8(r->e_cp[e], u);
            if (k == 1) JC_POS(r->e_child[e], buf, 0);
            else JC_POS(node, u, 1);
            jc_set(&o, u[0], to);
        }
        if (r->first[node] >= 0) {
            buf[0] = '\\';
            JC_POS(node, buf, 1);
            jc_set(&o, '\\', to);
        }
        if (r->end[node]) jc_set(&o, '"', -1);
    } else if (p.bytes[0] != '\\') {
        int k = p.len;
        for (int32_t e = r->first[node]; e >= 0; e = r->e_next[e]) {
            if (!jc_literal_ok(r->e_cp[e])) continue;
            int m = jc_utf8(r->e_cp[e], u);
            if (m > k && memcmp(u, p.bytes, (size_t)k) == 0) {
                if (m == k + 1) JC_POS(r->e_child[e], buf, 0);
                else JC_POS(node, u, k + 1);
                jc_set(&o, u[k], to);
            }
        }
    } else if (p.len == 1) {
        for (int i = 0; i < 8; i++)
            for (int32_t e = r->first[node]; e >= 0; e = r->e_next[e])
                if (r->e_cp[e] == jc_short_char[i]) {
                    JC_POS(r->e_child[e], buf, 0);
                    jc_set(&o, jc_short_letter[i], to);
                    break;
                }
        buf[0] = '\\';
        buf[1] = 'u';
        JC_POS(node, buf, 2);
        jc_set(&o, 'u', to);
    } else {
        int L = p.len - 2;
        uint8_t full[10];
        for (int32_t e = r->first[node]; e >= 0; e = r->e_next[e]) {
            int F = jc_hex(r->e_cp[e], full);
            if (F > L && memcmp(full, p.bytes + 2, (size_t)L) == 0) {
                uint8_t nxt = full[L];
                if (F == L + 1) JC_POS(r->e_child[e], buf, 0);
                else {
                    memcpy(buf, p.bytes, p.len);
                    buf[p.len] = nxt;
                    JC_POS(node, buf, p.len + 1);
                }
                jc_set(&o, nxt, to);
                if (nxt >= 'a' && nxt <= 'f') jc_set(&o, nxt - 32, to);
            }
        }
    }
    r->st_off[id] = r->steps.n;
    r->st_len[id] = o.n;
    for (int i = 0; i < o.n; i++)
        if (vec_push(&r->steps, (int64_t)o.byte[i] << 32 | (int64_t)(o.to[i] + 1))) return -1;
    return 0;
}

static int jc_step(jc_reader *r, int64_t id) {
    return r->st_len[id] >= 0 ? 0 : jc_compute_step(r, id);
}

static PyObject *json_cut(PyObject *self, PyObject *args) {
    Py_buffer b_trans, b_acc, b_cps, b_off;
    Py_ssize_t initial;
    if (!PyArg_ParseTuple(args, "y*y*ny*y*", &b_trans, &b_acc, &initial, &b_cps, &b_off)) return NULL;
    const int32_t *trans = b_trans.buf;
    const uint8_t *acc = b_acc.buf;
    Py_ssize_t n_states = b_acc.len;
    int32_t *table = NULL, *new_id = NULL;
    uint8_t *acc_out = NULL;
    int64_t *stack = NULL;
    const int32_t *cps = b_cps.buf;
    const int64_t *off = b_off.buf;
    Py_ssize_t n_names = b_off.len / 8 - 1, n_cps = b_cps.len / 4;
    PyObject *result = NULL;
    int nomem = 0;
    jc_reader r;
    memset(&r, 0, sizeof r);
    jc_map pair_ids = {0};
    vec pk = {0}, ppos = {0}, at = {0}, by = {0}, tp = {0};
    /* the trie of the names */
    r.first = malloc((size_t)(n_cps + 1) * 4); r.last = malloc((size_t)(n_cps + 1) * 4);
    r.end = calloc((size_t)(n_cps + 1), 4);
    r.e_cp = malloc((size_t)(n_cps + 1) * 4); r.e_child = malloc((size_t)(n_cps + 1) * 4);
    r.e_next = malloc((size_t)(n_cps + 1) * 4);
    if (!r.first || !r.last || !r.end || !r.e_cp || !r.e_child || !r.e_next) { nomem = 1; goto done; }
    r.n_nodes = 1;
    r.first[0] = r.last[0] = -1;
    for (Py_ssize_t i = 0; i < n_names; i++) {
        int32_t node = 0;
        for (int64_t j = off[i]; j < off[i + 1]; j++) {
            int32_t e = r.first[node];
            while (e >= 0 && r.e_cp[e] != cps[j]) e = r.e_next[e];
            if (e < 0) {
                e = (int32_t)r.n_edges++;
                r.e_cp[e] = cps[j];
                r.e_child[e] = (int32_t)r.n_nodes;
                r.e_next[e] = -1;
                if (r.last[node] >= 0) r.e_next[r.last[node]] = e;
                else r.first[node] = e;
                r.last[node] = e;
                r.first[r.n_nodes] = r.last[r.n_nodes] = -1;
                r.n_nodes++;
            }
            node = r.e_child[e];
        }
        r.end[node] = 1;
    }
    uint8_t none[1] = {0};
    if (jc_position(&r, -1, none, 0) != 0) { nomem = 1; goto done; } /* id 0: the start */
    int added;
    if (jc_get(&pair_ids, (uint64_t)initial, 0, 0, &added) < 0 || vec_push(&pk, initial) || vec_push(&ppos, 0)) {
        nomem = 1;
        goto done;
    }
    for (Py_ssize_t i = 0; i < pk.n; i++) {
        int64_t k = pk.p[i], pos = ppos.p[i];
        const int32_t *row = trans + k * 256;
        if (jc_step(&r, pos)) { nomem = 1; goto done; }
        int64_t s0 = r.st_off[pos], sn = r.st_len[pos];
        for (int64_t s = s0; s < s0 + sn; s++) {
            int b = (int)(r.steps.p[s] >> 32);
            int64_t to = (r.steps.p[s] & 0xFFFFFFFF) - 1;
            int32_t t = row[b];
            if (t < 0) continue;
            int64_t target = -1;
            if (to >= 0) {
                if (jc_step(&r, to)) { nomem = 1; goto done; }
                int alive = 0;
                const int32_t *trow = trans + (int64_t)t * 256;
                for (int64_t s2 = r.st_off[to]; s2 < r.st_off[to] + r.st_len[to]; s2++)
                    if (trow[r.steps.p[s2] >> 32] >= 0) { alive = 1; break; }
                if (!alive) continue; /* a pair that cannot differ from t alone is t itself */
                target = jc_get(&pair_ids, (uint64_t)t, (uint64_t)to + 1, pk.n, &added);
                if (target < 0 || (added && (vec_push(&pk, t) || vec_push(&ppos, to)))) { nomem = 1; goto done; }
            }
            if (vec_push(&at, i) || vec_push(&by, b) || vec_push(&tp, target)) { nomem = 1; goto done; }
            /* (the steps vector may have moved: re-read through indices only) */
        }
        if (pos == 0) /* before the quote the reader waits: whitespace keeps it waiting */
            for (int b = 0; b < 256; b++) {
                if (b == '"' || row[b] < 0) continue;
                int64_t target = jc_get(&pair_ids, (uint64_t)row[b], 0, pk.n, &added);
                if (target < 0 || (added && (vec_push(&pk, row[b]) || vec_push(&ppos, 0)))) { nomem = 1; goto done; }
                if (vec_push(&at, i) || vec_push(&by, b) || vec_push(&tp, target)) { nomem = 1; goto done; }
            }
    }
    {
        /* the table: each pair's row is its automaton state's row, the automaton's states numbered
         * after the pairs (as kept below), with the reader's overrides; then the automaton's states
         * the pairs lead to and every state those reach, in increasing order */
        Py_ssize_t p = pk.n, m = p, sp = 0;
        new_id = malloc((size_t)(n_states + 1) * 4);
        stack = malloc((size_t)(n_states + 1) * 8);
        if (!new_id || !stack) { nomem = 1; goto done; }
        for (Py_ssize_t t = 0; t < n_states; t++) new_id[t] = -1;
        int32_t *tmp = malloc((size_t)p * 256 * 4);
        if (!tmp) { nomem = 1; goto done; }
        for (Py_ssize_t i = 0; i < p; i++) memcpy(tmp + i * 256, trans + pk.p[i] * 256, 256 * 4);
        for (Py_ssize_t j = 0; j < at.n; j++) tmp[at.p[j] * 256 + by.p[j]] = tp.p[j] < 0 ? -1 : -2 - (int32_t)tp.p[j];
        for (Py_ssize_t i = 0; i < p * 256; i++)
            if (tmp[i] >= 0 && new_id[tmp[i]] < 0) { new_id[tmp[i]] = 0; stack[sp++] = tmp[i]; }
        while (sp) {
            const int32_t *row = trans + stack[--sp] * 256;
            for (int b = 0; b < 256; b++)
                if (row[b] >= 0 && new_id[row[b]] < 0) { new_id[row[b]] = 0; stack[sp++] = row[b]; }
        }
        for (Py_ssize_t t = 0; t < n_states; t++) if (new_id[t] == 0) new_id[t] = (int32_t)m++;
        table = malloc((size_t)m * 256 * 4);
        acc_out = malloc((size_t)m);
        if (!table || !acc_out) { free(tmp); nomem = 1; goto done; }
        for (Py_ssize_t i = 0; i < p * 256; i++) {
            int32_t v = tmp[i];
            table[i] = v >= 0 ? new_id[v] : v == -1 ? -1 : -2 - v;
        }
        free(tmp);
        for (Py_ssize_t i = 0; i < p; i++) acc_out[i] = acc[pk.p[i]] != 0;
        for (Py_ssize_t t = 0; t < n_states; t++) {
            if (new_id[t] < 0) continue;
            int32_t k = new_id[t];
            const int32_t *row = trans + t * 256;
            for (int b = 0; b < 256; b++) table[(Py_ssize_t)k * 256 + b] = row[b] >= 0 ? new_id[row[b]] : -1;
            acc_out[k] = acc[t] != 0;
        }
        result = Py_BuildValue("(y#y#)", (const char *)table, m * 256 * 4, (const char *)acc_out, m);
    }
done:
    if (nomem) PyErr_NoMemory();
    free(r.first); free(r.last); free(r.end); free(r.e_cp); free(r.e_child); free(r.e_next);
    free(r.pos); free(r.st_off); free(r.st_len); free(r.steps.p); free(r.pos_ids.s);
    free(pair_ids.s); free(pk.p); free(ppos.p); free(at.p); free(by.p); free(tp.p);
    free(table); free(new_id); free(acc_out); free(stack);
    PyBuffer_Release(&b_trans); PyBuffer_Release(&b_acc); PyBuffer_Release(&b_cps); PyBuffer_Release(&b_off);
    return result;
}

/* -- the parser probe of a mask computation (pushdown.py: _Probe.feed / _Probe.viable) ----------
 *
 * lr_tables(action int32[S * C], C, goto int32[S * N], N, rule_len int32, rule_origin int32,
 * conf_offsets int32, conf_codes int32, compound_offsets int64, compound_members int32,
 * compound_base, end, end_state, max_depth, budget, multi, accept) -> capsule: the parser tables.
 *
 * lr_feed(tables, probe, pos, new, term) -> list: every outcome of feeding ``term`` to the stack
 * ``new`` (pushed states, top last) above the probe's original stack with its top ``pos`` states
 * popped, as _Probe.feed returns them ((pos, new) tuples, or ``accept``), in the same order.
 * lr_viable(tables, probe, pos, new, reach) -> bool: _Probe.viable (stops at the first outcome).
 * Both read the original stack through the probe as _Probe.state does (its ``cells``, ``stack``
 * and ``max_read`` updated alike; ``probe`` may be a stack itself, read without a record: then
 * lr_viable is PushdownGrammar.viable's parser check), and return NotImplemented for a compound terminal the tables
 * do not know (lexers built since: the caller remakes the tables). */

typedef struct {
    Py_buffer b[8];
    const int32_t *action, *go, *rule_len, *rule_origin, *conf_off, *conf_codes, *comp_members;
    const int64_t *comp_off;
    Py_ssize_t C, N, S, n_rules, n_conf, n_comp, n_comp_members;
    int64_t comp_base, end, end_state, max_depth, budget, multi;
    PyObject *accept;
} lr_t;

static void lr_free(PyObject *cap) {
    lr_t *t = PyCapsule_GetPointer(cap, "dotvllm.lr");
    if (!t) return;
    for (int i = 0; i < 8; i++) PyBuffer_Release(&t->b[i]);
    Py_XDECREF(t->accept);
    free(t);
}

static PyObject *lr_tables(PyObject *self, PyObject *args) {
    lr_t *t = calloc(1, sizeof(lr_t));
    if (!t) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "y*ny*ny*y*y*y*y*y*LLLLLLO", &t->b[0], &t->C, &t->b[1], &t->N, &t->b[2], &t->b[3],
                          &t->b[4], &t->b[5], &t->b[6], &t->b[7], &t->comp_base, &t->end, &t->end_state,
                          &t->max_depth, &t->budget, &t->multi, &t->accept)) {
        free(t);  /* (the buffers parsed before a failure are released by the parser) */
        return NULL;
    }
    Py_INCREF(t->accept);
    t->action = t->b[0].buf; t->go = t->b[1].buf; t->rule_len = t->b[2].buf; t->rule_origin = t->b[3].buf;
    t->conf_off = t->b[4].buf; t->conf_codes = t->b[5].buf; t->comp_off = t->b[6].buf; t->comp_members = t->b[7].buf;
    t->S = t->C > 0 ? t->b[0].len / 4 / t->C : 0;
    t->n_rules = t->b[2].len / 4;
    t->n_conf = t->b[4].len / 4 - 1;
    t->n_comp = t->b[6].len / 8 - 1;
    t->n_comp_members = t->b[7].len / 4;
    PyObject *cap = NULL;
    if (t->C <= 0 || t->b[0].len != t->S * t->C * 4 || (t->N > 0 && t->b[1].len != t->S * t->N * 4) ||
        t->b[3].len != t->b[2].len || t->n_conf < 0 || t->n_comp < 0 || t->end < 0 || t->end >= t->C)
        PyErr_SetString(PyExc_ValueError, "lr_tables: inconsistent table sizes");
    else
        cap = PyCapsule_New(t, "dotvllm.lr", lr_free);
    if (!cap) {
        for (int i = 0; i < 8; i++) PyBuffer_Release(&t->b[i]);
        Py_DECREF(t->accept);
        free(t);
    }
    return cap;
}

/* the probe's view of the original stack: its cells read so far, the unread rest, how deep read;
 * fetched from the probe on first need */
static PyObject *lr_names[4];  /* "cells", "stack", "max_read", "depth" (interned at import) */

typedef struct {
    PyObject *probe, *cells, *stack;  /* new references once open */
    Py_ssize_t max_read, max_read0;
    int64_t depth;
    int open, stack_moved, direct;
} lr_probe;

static int lr_open(lr_probe *p) {
    if (p->open) return 0;
    p->open = 1;
    p->cells = PyObject_GetAttr(p->probe, lr_names[0]);
    p->stack = PyObject_GetAttr(p->probe, lr_names[1]);
    PyObject *mr = PyObject_GetAttr(p->probe, lr_names[2]);
    int bad = !p->cells || !p->stack || !mr || !PyList_Check(p->cells);
    if (!bad) {
        p->max_read = p->max_read0 = PyLong_AsSsize_t(mr);
        bad = PyErr_Occurred() != NULL;
    }
    Py_XDECREF(mr);
    if (bad && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "lr: not a probe");
    return bad ? -1 : 0;
}

static int lr_init(lr_probe *p, PyObject *probe) {
    memset(p, 0, sizeof(*p));
    if (PyTuple_Check(probe)) {  /* a stack itself (state, below, depth): read, nothing recorded */
        if (PyTuple_GET_SIZE(probe) != 3) { PyErr_SetString(PyExc_TypeError, "lr: a stack cell is not (state, below, depth)"); return -1; }
        p->depth = PyLong_AsLongLong(PyTuple_GET_ITEM(probe, 2));
        if (PyErr_Occurred() || !(p->cells = PyList_New(0))) return -1;
        p->stack = probe;
        Py_INCREF(probe);
        p->open = p->direct = 1;
        return 0;
    }
    p->probe = probe;
    PyObject *d = PyObject_GetAttr(probe, lr_names[3]);
    if (!d) return -1;
    p->depth = PyLong_AsLongLong(d);
    Py_DECREF(d);
    return PyErr_Occurred() ? -1 : 0;
}

static int lr_close(lr_probe *p, int ok) {
    if (!p->open) return ok ? 0 : -1;
    if (p->direct) {
        Py_XDECREF(p->cells);
        Py_XDECREF(p->stack);
        p->open = 0;
        return ok ? 0 : -1;
    }
    if (ok && p->stack_moved && PyObject_SetAttr(p->probe, lr_names[1], p->stack) < 0) ok = 0;
    if (ok && p->max_read != p->max_read0) {
        PyObject *mr = PyLong_FromSsize_t(p->max_read);
        if (!mr || PyObject_SetAttr(p->probe, lr_names[2], mr) < 0) ok = 0;
        Py_XDECREF(mr);
    }
    Py_XDECREF(p->cells);
    Py_XDECREF(p->stack);
    p->open = 0;
    return ok ? 0 : -1;
}

/* the i-th state from the top of the original stack (-1 below its bottom; -2 on an error) */
static int64_t lr_state(lr_probe *p, Py_ssize_t i) {
    if (!p->open && lr_open(p) < 0) return -2;
    while (PyList_GET_SIZE(p->cells) <= i) {
        PyObject *x;
        if (p->stack == Py_None) {
            x = PyLong_FromLong(-1);
        } else {
            if (!PyTuple_Check(p->stack) || PyTuple_GET_SIZE(p->stack) != 3) {
                PyErr_SetString(PyExc_TypeError, "lr: a stack cell is not (state, below, depth)");
                return -2;
            }
            x = PyTuple_GET_ITEM(p->stack, 0);
            Py_INCREF(x);
            PyObject *below = PyTuple_GET_ITEM(p->stack, 1);
            Py_INCREF(below);
            Py_SETREF(p->stack, below);
            p->stack_moved = 1;
        }
        if (!x || PyList_Append(p->cells, x) < 0) { Py_XDECREF(x); return -2; }
        Py_DECREF(x);
    }
    if (i > p->max_read) p->max_read = i;
    int64_t s = PyLong_AsLongLong(PyList_GET_ITEM(p->cells, i));
    if (s == -1 && PyErr_Occurred()) return -2;
    return s < -1 ? -1 : s;
}

static inline int32_t lr_action(const lr_t *t, int64_t state, int64_t term) {
    if (state < 0 || state >= t->S || term < 0 || term >= t->C) return 0;
    return t->action[state * t->C + term];
}

static inline int64_t lr_goto(const lr_t *t, int64_t state, int64_t nt) {
    if (state < 0 || state >= t->S || nt < 0 || nt >= t->N) return -1;
    return t->go[state * t->N + nt];
}

/* PushdownGrammar._unit_top */
static int64_t lr_unit_top(const lr_t *t, int64_t below, int64_t state, int64_t term) {
    int64_t got = state;
    for (Py_ssize_t k = 0; k < t->S; k++) {
        int32_t code = lr_action(t, got, term);
        if (!(code < 0 && -code - 1 < t->n_rules && t->rule_len[-code - 1] == 1)) break;
        int64_t nxt = lr_goto(t, below, t->rule_origin[-code - 1]);
        if (nxt < 0 || (term == t->end && nxt == t->end_state)) break;
        got = nxt;
    }
    return got;
}

/* one work item: ``pos`` and the pushed states pool[off .. off + len) */
typedef struct { int64_t pos; Py_ssize_t off, len; } lr_item;

/* the buffers a work list starts with, inside it (most runs stay within them: no heap at all) */
#define LR_POOL0 128
#define LR_ITEMS0 16
#define LR_SLOTS0 64

typedef struct {
    vec pool;
    lr_item *items;
    Py_ssize_t n_items, cap_items;
    Py_ssize_t *slots;  /* open addressing over item indices + 1 (0: empty) */
    Py_ssize_t n_slots;
    int64_t pool0[LR_POOL0];
    lr_item items0[LR_ITEMS0];
    Py_ssize_t slots0[LR_SLOTS0];
} lr_work;

/* an empty work list on its own buffers (only its slots zeroed: the rest is written before read) */
static void lr_work_init(lr_work *w) {
    w->pool.p = w->pool0;
    w->pool.n = 0;
    w->pool.cap = LR_POOL0;
    w->items = w->items0;
    w->n_items = 0;
    w->cap_items = LR_ITEMS0;
    memset(w->slots0, 0, sizeof w->slots0);
    w->slots = w->slots0;
    w->n_slots = LR_SLOTS0;
}

static void lr_work_free(lr_work *w) {
    if (w->pool.p != w->pool0) free(w->pool.p);
    if (w->items != w->items0) free(w->items);
    if (w->slots != w->slots0) free(w->slots);
}

/* the pool twice as large (moved off the buffer it started with); -1 no memory */
static int lr_pool_grow(lr_work *w) {
    Py_ssize_t cap = w->pool.cap * 2;
    int64_t *p = w->pool.p == w->pool0 ? malloc((size_t)cap * 8) : realloc(w->pool.p, (size_t)cap * 8);
    if (!p) return -1;
    if (w->pool.p == w->pool0) memcpy(p, w->pool0, (size_t)w->pool.n * 8);
    w->pool.p = p;
    w->pool.cap = cap;
    return 0;
}

static uint64_t lr_item_hash(int64_t pos, const int64_t *xs, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)pos;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (uint64_t)xs[i]) * 1099511628211ULL + (uint64_t)i;
    return h ^ (h >> 29);
}

static int lr_same(const lr_work *w, Py_ssize_t k, int64_t pos, const int64_t *xs, Py_ssize_t n) {
    const lr_item *it = &w->items[k];
    return it->pos == pos && it->len == n && !memcmp(w->pool.p + it->off, xs, (size_t)n * 8);
}

static int lr_rehash(lr_work *w) {
    Py_ssize_t n = w->n_slots * 2;
    Py_ssize_t *s = calloc((size_t)n, sizeof(Py_ssize_t));
    if (!s) return -1;
    for (Py_ssize_t k = 0; k < w->n_items; k++) {
        const lr_item *it = &w->items[k];
        uint64_t h = lr_item_hash(it->pos, w->pool.p + it->off, it->len);
        Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)(n - 1));
        while (s[j]) j = (j + 1) & (n - 1);
        s[j] = k + 1;
    }
    if (w->slots != w->slots0) free(w->slots);
    w->slots = s;
    w->n_slots = n;
    return 0;
}

/* add (pos, xs) unless seen: 1 added, 0 seen, -1 no memory. xs may point into the pool. */
static int lr_add(lr_work *w, int64_t pos, const int64_t *xs, Py_ssize_t n) {
    if ((w->n_items + 1) * 2 > w->n_slots && lr_rehash(w)) return -1;
    uint64_t h = lr_item_hash(pos, xs, n);
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)(w->n_slots - 1));
    while (w->slots[j]) {
        if (lr_same(w, w->slots[j] - 1, pos, xs, n)) return 0;
        j = (j + 1) & (w->n_slots - 1);
    }
    if (w->n_items == w->cap_items) {
        Py_ssize_t cap = w->cap_items * 2;
        lr_item *it = w->items == w->items0 ? malloc((size_t)cap * sizeof(lr_item))
                                            : realloc(w->items, (size_t)cap * sizeof(lr_item));
        if (!it) return -1;
        if (w->items == w->items0) memcpy(it, w->items0, sizeof w->items0);
        w->items = it;
        w->cap_items = cap;
    }
    Py_ssize_t off = w->pool.n;
    while (w->pool.cap < off + n + 1) {
        Py_ssize_t rel = (xs >= w->pool.p && xs < w->pool.p + w->pool.n) ? xs - w->pool.p : -1;
        if (lr_pool_grow(w)) return -1;
        if (rel >= 0) xs = w->pool.p + rel;
    }
    memmove(w->pool.p + off, xs, (size_t)n * 8);
    w->pool.n += n;
    w->items[w->n_items++] = (lr_item){pos, off, n};
    w->slots[j] = w->n_items;
    return 1;
}

/* an outcome (pos, xs + (top,)) as the Python tuple _Probe.feed returns */
static PyObject *lr_outcome(int64_t pos, const int64_t *xs, Py_ssize_t n, int64_t top) {
    PyObject *nt = PyTuple_New(n + 1);
    if (!nt) return NULL;
    for (Py_ssize_t i = 0; i <= n; i++) {
        PyObject *v = PyLong_FromLongLong(i < n ? xs[i] : top);
        if (!v) { Py_DECREF(nt); return NULL; }
        PyTuple_SET_ITEM(nt, i, v);
    }
    PyObject *out = Py_BuildValue("(LN)", (long long)pos, nt);
    return out;
}

/* the feed loop for one real terminal: appends outcomes to ``out`` (when not NULL); returns the
 * number of outcomes (stopping at the first when ``out`` is NULL), -1 on an error */
static Py_ssize_t lr_run(const lr_t *t, lr_probe *p, int64_t pos0, const int64_t *new0, Py_ssize_t n0, int64_t term,
                         PyObject *out) {
    lr_work w;
    lr_work_init(&w);
    Py_ssize_t found = 0, err = 0;
    int64_t *tmp = NULL;
    Py_ssize_t tmp_cap = 0;
    if (lr_add(&w, pos0, new0, n0) < 0) { PyErr_NoMemory(); return -1; }
    /* pending items, popped last first (the order of _Probe.feed's work list) */
    Py_ssize_t *stack = malloc(16 * sizeof(Py_ssize_t)), cap = 16, top_i = 0;
    if (!stack) { lr_work_free(&w); PyErr_NoMemory(); return -1; }
    stack[top_i++] = 0;
    int64_t budget = t->budget;
    while (top_i && budget) {
        budget--;
        lr_item it = w.items[stack[--top_i]];
        const int64_t *xs = w.pool.p + it.off;
        int64_t top = it.len ? xs[it.len - 1] : lr_state(p, it.pos);
        if (top == -2) { err = 1; break; }
        if (top < 0) continue;
        int32_t code = lr_action(t, top, term);
        const int32_t *cs = &code;
        Py_ssize_t ncs = 1;
        if (code >= t->multi) {
            int64_t k = code - t->multi;
            if (k >= t->n_conf) continue;
            cs = t->conf_codes + t->conf_off[k];
            ncs = t->conf_off[k + 1] - t->conf_off[k];
        }
        for (Py_ssize_t ci = 0; ci < ncs; ci++) {
            int32_t c = cs[ci];
            if (c == 0) continue;
            if (c > 0) {
                if (p->depth - it.pos + it.len < t->max_depth) {
                    found++;
                    if (!out) goto done;
                    PyObject *o = lr_outcome(it.pos, w.pool.p + it.off, it.len, c - 1);
                    if (!o || PyList_Append(out, o) < 0) { Py_XDECREF(o); err = 1; goto done; }
                    Py_DECREF(o);
                }
                continue;
            }
            Py_ssize_t r = -c - 1;
            if (r >= t->n_rules) continue;
            int64_t n = t->rule_len[r];
            Py_ssize_t k = n < it.len ? (Py_ssize_t)n : it.len;
            Py_ssize_t len2 = it.len - k;
            int64_t pos2 = it.pos + n - k;
            int64_t below = len2 ? w.pool.p[it.off + len2 - 1] : lr_state(p, pos2);
            if (below == -2) { err = 1; goto done; }
            if (below < 0) continue;
            int64_t gs = lr_goto(t, below, t->rule_origin[r]);
            if (gs < 0) continue;
            if (term == t->end && gs == t->end_state) {
                found++;
                if (!out) goto done;
                if (PyList_Append(out, t->accept) < 0) { err = 1; goto done; }
                continue;
            }
            if (tmp_cap < len2 + 1) {
                tmp_cap = (len2 + 1) * 2;
                int64_t *nt = realloc(tmp, (size_t)tmp_cap * 8);
                if (!nt) { PyErr_NoMemory(); err = 1; goto done; }
                tmp = nt;
            }
            memcpy(tmp, w.pool.p + it.off, (size_t)len2 * 8);
            tmp[len2] = lr_unit_top(t, below, gs, term);
            int added = lr_add(&w, pos2, tmp, len2 + 1);
            if (added < 0) { PyErr_NoMemory(); err = 1; goto done; }
            if (added) {
                if (top_i == cap) {
                    Py_ssize_t *ns = realloc(stack, (size_t)cap * 2 * sizeof(Py_ssize_t));
                    if (!ns) { PyErr_NoMemory(); err = 1; goto done; }
                    stack = ns;
                    cap *= 2;
                }
                stack[top_i++] = w.n_items - 1;
            }
        }
    }
done:
    free(stack);
    free(tmp);
    lr_work_free(&w);
    return err ? -1 : found;
}


/* ``new`` as int64s (in ``buf`` when it fits, else allocated: free when not ``buf``); -1 on an error */
#define LR_SMALL 32
static Py_ssize_t lr_new(PyObject *new, int64_t *buf, int64_t **xs) {
    if (!PyTuple_Check(new)) { PyErr_SetString(PyExc_TypeError, "lr: new must be a tuple"); return -1; }
    Py_ssize_t n = PyTuple_GET_SIZE(new);
    *xs = n <= LR_SMALL ? buf : malloc((size_t)n * 8);
    if (!*xs) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        (*xs)[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(new, i));
        if ((*xs)[i] == -1 && PyErr_Occurred()) { if (*xs != buf) free(*xs); return -1; }
    }
    return n;
}

/* the real terminals a lexeme id stands for: 1 for a real one, the members of a compound, -1
 * when the tables do not know it */
static Py_ssize_t lr_expand(const lr_t *t, int64_t term, const int32_t **members, int32_t *one) {
    if (term <= t->end) { *one = (int32_t)term; *members = one; return 1; }
    int64_t k = term - t->comp_base;
    if (k < 0 || k >= t->n_comp) return -1;
    int64_t a = t->comp_off[k], b = t->comp_off[k + 1];
    if (a < 0 || b > t->n_comp_members || a > b) return -1;
    *members = t->comp_members + a;
    return (Py_ssize_t)(b - a);
}

static int lr_args(PyObject *const *args, Py_ssize_t nargs, const char *name, const lr_t **t, long long *pos) {
    if (nargs != 5) { PyErr_Format(PyExc_TypeError, "%s takes 5 arguments", name); return -1; }
    *t = PyCapsule_GetPointer(args[0], "dotvllm.lr");
    if (!*t) return -1;
    *pos = PyLong_AsLongLong(args[2]);
    return (*pos == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* every outcome of feeding ``term`` to (pos, new) on the probe ``p`` (open or not), in the order of
 * _Probe.feed (each once for a compound: every reading): a new list, NULL on an error, or a new
 * reference to NotImplemented for a compound the tables do not know */
static PyObject *lr_feed_list(const lr_t *t, lr_probe *p, int64_t pos, PyObject *new, int64_t term) {
    const int32_t *members;
    int32_t one;
    Py_ssize_t nm = lr_expand(t, term, &members, &one);
    if (nm < 0) Py_RETURN_NOTIMPLEMENTED;
    int64_t buf[LR_SMALL], *xs;
    Py_ssize_t n = lr_new(new, buf, &xs);
    if (n < 0) return NULL;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < nm; i++)
        if (lr_run(t, p, pos, xs, n, members[i], out) < 0) Py_CLEAR(out);
    if (xs != buf) free(xs);
    if (out && nm > 1) {  /* every reading, each outcome once, in order (dict.fromkeys) */
        PyObject *d = PyDict_New();
        int ok = d != NULL;
        for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(out); i++) ok = PyDict_SetItem(d, PyList_GET_ITEM(out, i), Py_None) == 0;
        PyObject *keys = ok ? PyDict_Keys(d) : NULL;
        Py_XDECREF(d);
        Py_SETREF(out, keys);
    }
    return out;
}

/* lr_feed(tables, probe, pos, new, term) */
static PyObject *lr_feed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const lr_t *t;
    long long pos;
    if (lr_args(args, nargs, "lr_feed", &t, &pos) < 0) return NULL;
    long long term = PyLong_AsLongLong(args[4]);
    if (term == -1 && PyErr_Occurred()) return NULL;
    lr_probe p;
    if (lr_init(&p, args[1]) < 0) return NULL;
    PyObject *out = lr_feed_list(t, &p, pos, args[3], term);
    if (lr_close(&p, out != NULL) < 0) Py_CLEAR(out);
    return out;
}

/* _Probe.viable on the stack (pos, xs[:n]) for the terminals ``reach`` (a tuple): 1 or 0, -1 on
 * an error; ``*unknown`` set (and 0 returned) for a compound the tables do not know */
static int lr_viable_in(const lr_t *t, lr_probe *p, int64_t pos, const int64_t *xs, Py_ssize_t n, PyObject *reach,
                        int *unknown) {
    *unknown = 0;
    int64_t top = n ? xs[n - 1] : lr_state(p, pos);
    if (top == -2) return -1;
    if (top < 0) return 0;
    Py_ssize_t R = PyTuple_GET_SIZE(reach);
    int room = p->depth - pos + n < t->max_depth;
    for (Py_ssize_t i = 0; room && i < R; i++) {  /* a shift, whatever lies below */
        int32_t code = lr_action(t, top, PyLong_AsLongLong(PyTuple_GET_ITEM(reach, i)));
        if (code > 0 && code < t->multi) return PyErr_Occurred() ? -1 : 1;
    }
    for (Py_ssize_t i = 0; i < R; i++) {
        int64_t x = PyLong_AsLongLong(PyTuple_GET_ITEM(reach, i));
        if (!lr_action(t, top, x)) continue;
        const int32_t *members;
        int32_t one;
        Py_ssize_t nm = lr_expand(t, x, &members, &one);
        if (nm < 0) { *unknown = 1; return 0; }
        for (Py_ssize_t j = 0; j < nm; j++) {
            Py_ssize_t got = lr_run(t, p, pos, xs, n, members[j], NULL);
            if (got < 0) return -1;
            if (got > 0) return 1;
        }
    }
    return PyErr_Occurred() ? -1 : 0;
}

/* lr_viable(tables, probe, pos, new, reach) */
static PyObject *lr_viable(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const lr_t *t;
    long long pos;
    if (lr_args(args, nargs, "lr_viable", &t, &pos) < 0) return NULL;
    PyObject *reach = args[4];
    if (!PyTuple_Check(reach)) { PyErr_SetString(PyExc_TypeError, "lr_viable: reach must be a tuple"); return NULL; }
    int64_t buf[LR_SMALL], *xs;
    Py_ssize_t n = lr_new(args[3], buf, &xs);
    if (n < 0) return NULL;
    lr_probe p;
    int unknown = 0, result = lr_init(&p, args[1]) == 0 ? lr_viable_in(t, &p, pos, xs, n, reach, &unknown) : -1;
    if (xs != buf) free(xs);
    if (lr_close(&p, result >= 0) < 0 || result < 0) return NULL;
    if (unknown) Py_RETURN_NOTIMPLEMENTED;
    return PyBool_FromLong(result);
}

/* the row ``row`` copied into row ``index`` of ``out`` (a writable C-contiguous 2-D buffer of 32-bit
 * items), words past the row zeroed: 1, 0 where ``out`` is not such a buffer (nothing written), -1
 * on an error */
static int copy_row_into(PyObject *row, PyObject *out, Py_ssize_t index) {
    Py_buffer o, r;
    if (PyObject_GetBuffer(out, &o, PyBUF_ND | PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        return 0;
    }
    int ok = o.ndim == 2 && o.itemsize == 4 && o.format && (o.format[0] == 'i' || o.format[0] == 'I') &&
             !o.format[1] && index >= 0 && index < o.shape[0];
    if (ok) {
        if (PyObject_GetBuffer(row, &r, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&o); return -1; }
        Py_ssize_t n = o.shape[1], m = r.len / 4 < n ? r.len / 4 : n;
        uint32_t *dst = (uint32_t *)o.buf + index * n;
        memcpy(dst, r.buf, (size_t)m * 4);
        memset(dst + m, 0, (size_t)(n - m) * 4);
        PyBuffer_Release(&r);
    }
    PyBuffer_Release(&o);
    return ok;
}

/* copy_row(row, out, index) -> whether ``row`` (packed int32) was copied into ``out[index]``
 * (copy_row_into: a writable C-contiguous int32 [batch, words] array, words past the row zeroed);
 * False where it cannot take it (nothing written) */
static PyObject *copy_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "copy_row(row, out, index)"); return NULL; }
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    if (index == -1 && PyErr_Occurred()) return NULL;
    int got = copy_row_into(args[0], args[1], index);
    if (got < 0) return NULL;
    return PyBool_FromLong(got);
}

/* mask_hit(masks, q, stack[, out, index]) -> the row cached for ``q`` under the stack's top states,
 * or None: PushdownGrammar.mask's cache read (``masks``: {q: {depth: {top states: row}}}, -1 for
 * a state below the stack's bottom). With ``out`` and ``index``: the row found is also copied into
 * ``out[index]`` (copy_row_into), None where ``out`` cannot take it (nothing written). */
static PyObject *mask_hit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if ((nargs != 3 && nargs != 5) || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "mask_hit(masks, q, stack[, out, index])");
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(args[0], args[1]);
    if (!entry) { if (PyErr_Occurred()) return NULL; Py_RETURN_NONE; }
    if (!PyDict_Check(entry)) { PyErr_SetString(PyExc_TypeError, "mask_hit: not a cache entry"); return NULL; }
    Py_ssize_t it = 0;
    PyObject *depth_obj, *table;
    while (PyDict_Next(entry, &it, &depth_obj, &table)) {
        Py_ssize_t depth = PyLong_AsSsize_t(depth_obj);
        if (depth < 0 || !PyDict_Check(table)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "mask_hit: not a cache entry");
            return NULL;
        }
        PyObject *sig = PyTuple_New(depth), *s = args[2];
        if (!sig) return NULL;
        for (Py_ssize_t i = 0; i < depth; i++) {
            PyObject *x;
            if (s == Py_None) {
                x = PyLong_FromLong(-1);
                if (!x) { Py_DECREF(sig); return NULL; }
            } else {
                if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) != 3) {
                    Py_DECREF(sig);
                    PyErr_SetString(PyExc_TypeError, "mask_hit: a stack cell is not (state, below, depth)");
                    return NULL;
                }
                x = PyTuple_GET_ITEM(s, 0);
                Py_INCREF(x);
                s = PyTuple_GET_ITEM(s, 1);
            }
            PyTuple_SET_ITEM(sig, i, x);
        }
        PyObject *row = PyDict_GetItemWithError(table, sig);
        Py_DECREF(sig);
        if (row && nargs == 5) {  /* (copied into out[index]: None when out cannot take it) */
            Py_ssize_t index = PyLong_AsSsize_t(args[4]);
            if (index == -1 && PyErr_Occurred()) return NULL;
            Py_INCREF(row);
            int got = copy_row_into(row, args[3], index);
            if (got <= 0) Py_CLEAR(row);
            if (got < 0) return NULL;
            if (!got) Py_RETURN_NONE;
            return row;
        }
        if (row) { Py_INCREF(row); return row; }
        if (PyErr_Occurred()) return NULL;
    }
    Py_RETURN_NONE;
}

/* lr_step(tables, lexers, q, stack, data) -> (q, stack), None (the text is refused), ``fork`` (a
 * lexeme several terminals type: the caller follows every reading) or NotImplemented (a lexer not
 * built yet: the caller steps, building it): PushdownGrammar.step for a deterministic grammar,
 * without the final viability check. ``lexers``: (owner list, lexer_lo list, blocks dict {lexer:
 * (int32 [n, 256] global ids, chosen)}, chosen list, ignore list, lexer_of_state list, fork). */
static int lr_feed_all(const lr_t *t, PyObject *stack, int64_t term, PyObject *intern, PyObject *out, int with_accept);

/* the lexer blocks' rows: the next state of a global state on a byte, the last block's buffer held */
typedef struct {
    PyObject *owner, *lexer_lo, *blocks;
    Py_buffer row;
    Py_ssize_t lexer, lo, n;
} lr_rows;

static inline Py_ssize_t lr_list_int(PyObject *list, Py_ssize_t i) {
    if (i < 0 || i >= PyList_GET_SIZE(list)) { PyErr_SetString(PyExc_IndexError, "lr_step: index out of range"); return -2; }
    Py_ssize_t v = PyLong_AsSsize_t(PyList_GET_ITEM(list, i));
    return (v == -1 && PyErr_Occurred()) ? -2 : v;
}

static int lr_block(lr_rows *r, Py_ssize_t lexer) {
    if (r->row.obj) PyBuffer_Release(&r->row);
    r->lexer = -1;
    r->lo = lr_list_int(r->lexer_lo, lexer);
    if (r->lo == -2) return -1;
    PyObject *key = PyLong_FromSsize_t(lexer);
    if (!key) return -1;
    PyObject *entry = PyDict_GetItemWithError(r->blocks, key);
    Py_DECREF(key);
    if (!entry) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "lr_step: a lexer without a block"); return -1; }
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 1) { PyErr_SetString(PyExc_TypeError, "lr_step: a bad block"); return -1; }
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(entry, 0), &r->row, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (r->row.itemsize != 4 || r->row.len % (256 * 4)) {
        PyBuffer_Release(&r->row);
        PyErr_SetString(PyExc_TypeError, "lr_step: a block is not int32 [n, 256]");
        return -1;
    }
    r->lexer = lexer;
    r->n = r->row.len / (256 * 4);
    return 0;
}

/* the next state of global state ``q`` on byte ``b`` into *out (-1: none); -1 on an error */
static int lr_next(lr_rows *r, Py_ssize_t q, int b, Py_ssize_t *out) {
    Py_ssize_t lexer = lr_list_int(r->owner, q);
    if (lexer < 0) return -1;
    if (lexer != r->lexer && lr_block(r, lexer) < 0) return -1;
    Py_ssize_t local = q - r->lo;
    if (local < 0 || local >= r->n) { PyErr_SetString(PyExc_IndexError, "lr_step: a state outside its block"); return -1; }
    *out = ((const int32_t *)r->row.buf)[local * 256 + b];
    return 0;
}

/* the lexeme-start state of the lexer of parser state ``state`` into *out: -1 not built yet; -1 on an error */
static int lr_start(PyObject *lexer_of, PyObject *lexer_lo, PyObject *cell, Py_ssize_t *out) {
    Py_ssize_t state = PyLong_AsSsize_t(PyTuple_GET_ITEM(cell, 0));
    if (state == -1 && PyErr_Occurred()) return -1;
    Py_ssize_t lexer = lr_list_int(lexer_of, state);
    if (lexer == -2) return -1;
    Py_ssize_t lo = lr_list_int(lexer_lo, lexer);
    if (lo == -2) return -1;
    *out = lo < 0 ? -1 : lo;
    return 0;
}

static int lr_lexers(PyObject *lexers, lr_rows *r, PyObject **chosen, PyObject **ignore, PyObject **lexer_of,
                     PyObject **fork) {
    if (!PyTuple_Check(lexers) || PyTuple_GET_SIZE(lexers) != 7) { PyErr_SetString(PyExc_TypeError, "lr_step: bad lexer tables"); return -1; }
    memset(r, 0, sizeof(*r));
    r->lexer = -1;
    r->owner = PyTuple_GET_ITEM(lexers, 0);
    r->lexer_lo = PyTuple_GET_ITEM(lexers, 1);
    r->blocks = PyTuple_GET_ITEM(lexers, 2);
    *chosen = PyTuple_GET_ITEM(lexers, 3);
    *ignore = PyTuple_GET_ITEM(lexers, 4);
    *lexer_of = PyTuple_GET_ITEM(lexers, 5);
    *fork = PyTuple_GET_ITEM(lexers, 6);
    if (!PyList_Check(r->owner) || !PyList_Check(r->lexer_lo) || !PyDict_Check(r->blocks) || !PyList_Check(*chosen) ||
        !PyList_Check(*ignore) || !PyList_Check(*lexer_of)) {
        PyErr_SetString(PyExc_TypeError, "lr_step: bad lexer tables");
        return -1;
    }
    return 0;
}

/* lr_step's walk of ``len`` bytes from (q, stack) */
static PyObject *lr_step_core(const lr_t *t, PyObject *lexers, Py_ssize_t q, PyObject *stack, const uint8_t *bytes,
                              Py_ssize_t len) {
    lr_rows rows;
    PyObject *chosen, *ignore, *lexer_of, *fork;
    if (lr_lexers(lexers, &rows, &chosen, &ignore, &lexer_of, &fork) < 0) return NULL;
    PyObject *outcomes = PyList_New(0);
    if (!outcomes) return NULL;
    Py_INCREF(stack);
    int err = 0, refused = 0, later = 0;  /* later: 1 the caller's step, 2 a fork */
    for (Py_ssize_t i = 0; i < len; i++) {
        int b = bytes[i];
        Py_ssize_t nq;
        if (lr_next(&rows, q, b, &nq) < 0) { err = 1; break; }
        if (nq >= 0) { q = nq; continue; }
        Py_ssize_t term = lr_list_int(chosen, q);
        if (term == -2) { err = 1; break; }
        if (term < 0) { refused = 1; break; }
        if (term > t->end) { later = 2; break; }
        Py_ssize_t ign = lr_list_int(ignore, term);
        if (ign == -2) { err = 1; break; }
        if (!ign) {  /* (a deterministic grammar: one outcome, or none) */
            if (PyList_SetSlice(outcomes, 0, PyList_GET_SIZE(outcomes), NULL) < 0 ||
                lr_feed_all(t, stack, term, Py_None, outcomes, 1) < 0) { err = 1; break; }
            if (!PyList_GET_SIZE(outcomes)) { refused = 1; break; }
            PyObject *next = PyList_GET_ITEM(outcomes, 0);
            if (PyList_GET_SIZE(outcomes) > 1 || next == t->accept) { later = 1; break; }  /* (a conflict: the caller's) */
            Py_INCREF(next);
            Py_SETREF(stack, next);
        }
        Py_ssize_t lo;
        if (lr_start(lexer_of, rows.lexer_lo, stack, &lo) < 0) { err = 1; break; }
        if (lo < 0) { later = 1; break; }  /* the lexer is built by the caller */
        if (lr_next(&rows, lo, b, &nq) < 0) { err = 1; break; }
        if (nq < 0) { refused = 1; break; }
        q = nq;
    }
    if (rows.row.obj) PyBuffer_Release(&rows.row);
    Py_DECREF(outcomes);
    if (err || later || refused) {
        Py_DECREF(stack);
        if (err) return NULL;
        if (later == 2) { Py_INCREF(fork); return fork; }
        if (later) Py_RETURN_NOTIMPLEMENTED;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(nN)", q, stack);
}

static PyObject *lr_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "lr_step(tables, lexers, q, stack, data)"); return NULL; }
    const lr_t *t = PyCapsule_GetPointer(args[0], "dotvllm.lr");
    if (!t) return NULL;
    Py_ssize_t q = PyLong_AsSsize_t(args[2]);
    if (q == -1 && PyErr_Occurred()) return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[4], &data, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *got = lr_step_core(t, args[1], q, args[3], data.buf, data.len);
    PyBuffer_Release(&data);
    return got;
}

/* lr_commit(tables, lexers, row, token, token_bytes, eos, configs) -> new configurations, False or
 * NotImplemented: PushdownMatcher.accept_token for one configuration whose mask ``row`` (packed
 * int32) was computed: False where the row refuses ``token``, else the C step of its bytes as a
 * one-configuration tuple (False where it refuses them). NotImplemented (nothing done) wherever
 * the general path decides: several configurations, an end-of-sequence token (in ``eos``), a token
 * outside ``token_bytes`` or without bytes, a row too short, and where lr_step hands the step back
 * (a lexer to build, a fork). */
static PyObject *lr_commit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyTuple_Check(args[4]) || !PyAnySet_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "lr_commit(tables, lexers, row, token, token_bytes: tuple, eos: set, configs)");
        return NULL;
    }
    PyObject *configs = args[6];
    if (!PyTuple_Check(configs) || PyTuple_GET_SIZE(configs) != 1) Py_RETURN_NOTIMPLEMENTED;
    PyObject *conf = PyTuple_GET_ITEM(configs, 0);
    if (!PyTuple_Check(conf) || PyTuple_GET_SIZE(conf) != 2) Py_RETURN_NOTIMPLEMENTED;
    PyObject *tok = PyNumber_Index(args[3]);
    if (!tok) { PyErr_Clear(); Py_RETURN_NOTIMPLEMENTED; }
    int eos = PySet_Contains(args[5], tok);
    Py_ssize_t token = PyLong_AsSsize_t(tok);
    Py_DECREF(tok);
    if (eos < 0) return NULL;
    if (token == -1 && PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NOTIMPLEMENTED; }
    if (eos || token < 0 || token >= PyTuple_GET_SIZE(args[4])) Py_RETURN_NOTIMPLEMENTED;
    PyObject *data = PyTuple_GET_ITEM(args[4], token);
    if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) == 0) Py_RETURN_NOTIMPLEMENTED;
    Py_buffer row;
    if (PyObject_GetBuffer(args[2], &row, PyBUF_SIMPLE) < 0) { PyErr_Clear(); Py_RETURN_NOTIMPLEMENTED; }
    int known = (token >> 5) < row.len / 4, bit = 0;
    if (known) {
        uint32_t w;
        memcpy(&w, (const char *)row.buf + (token >> 5) * 4, 4);
        bit = (w >> (token & 31)) & 1;
    }
    PyBuffer_Release(&row);
    if (!known) Py_RETURN_NOTIMPLEMENTED;
    if (!bit) Py_RETURN_FALSE;
    const lr_t *t = PyCapsule_GetPointer(args[0], "dotvllm.lr");
    if (!t) return NULL;
    Py_ssize_t q = PyLong_AsSsize_t(PyTuple_GET_ITEM(conf, 0));
    if (q == -1 && PyErr_Occurred()) return NULL;
    PyObject *got = lr_step_core(t, args[1], q, PyTuple_GET_ITEM(conf, 1), (const uint8_t *)PyBytes_AS_STRING(data),
                                 PyBytes_GET_SIZE(data));
    if (!got) return NULL;
    if (got == Py_None) { Py_DECREF(got); Py_RETURN_FALSE; }
    if (!PyTuple_Check(got)) { Py_DECREF(got); Py_RETURN_NOTIMPLEMENTED; }  /* (NotImplemented or the fork) */
    PyObject *out = PyTuple_New(1);
    if (!out) { Py_DECREF(got); return NULL; }
    PyTuple_SET_ITEM(out, 0, got);
    return out;
}

/* (a, p) added to ``w`` (an item of one element): 1 added, 0 present, -1 no memory */
static int lr_add_pair(lr_work *w, int64_t a, const void *p) {
    int64_t x = (int64_t)(uintptr_t)p;
    return lr_add(w, a, &x, 1);
}

/* pushdown._push: the cell (state, below, depth), one object per (state, below) through ``intern``
 * (a dict; None: a new cell) */
static PyObject *lr_cell(int64_t state, PyObject *below, PyObject *intern) {
    long long depth = PyLong_AsLongLong(PyTuple_GET_ITEM(below, 2));
    if (depth == -1 && PyErr_Occurred()) return NULL;
    if (intern == Py_None) return Py_BuildValue("(LOL)", (long long)state, below, depth + 1);
    PyObject *key = Py_BuildValue("(LN)", (long long)state, PyLong_FromVoidPtr(below));
    if (!key) return NULL;
    PyObject *cell = PyDict_GetItemWithError(intern, key);
    if (cell) { Py_DECREF(key); Py_INCREF(cell); return cell; }
    if (PyErr_Occurred()) { Py_DECREF(key); return NULL; }
    cell = Py_BuildValue("(LOL)", (long long)state, below, depth + 1);
    if (!cell || PyDict_SetItem(intern, key, cell) < 0) { Py_DECREF(key); Py_XDECREF(cell); return NULL; }
    Py_DECREF(key);
    return cell;
}

/* PushdownGrammar.feed_all for one real terminal: its outcomes appended to ``out`` (stacks, or
 * ``accept`` when ``with_accept``), in the order of the Python loop; -1 on an error */
static int lr_feed_all(const lr_t *t, PyObject *stack, int64_t term, PyObject *intern, PyObject *out, int with_accept) {
    PyObject **work = malloc(16 * sizeof(PyObject *));
    Py_ssize_t n = 0, cap = 16;
    lr_work seen;
    lr_work_init(&seen);
    int err = 0;
    if (!work || lr_add_pair(&seen, PyLong_AsLongLong(PyTuple_GET_ITEM(stack, 0)), PyTuple_GET_ITEM(stack, 1)) < 0) {
        free(work);
        lr_work_free(&seen);
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(stack);
    work[n++] = stack;
    for (int64_t budget = t->budget; n && budget && !err; budget--) {
        PyObject *st = work[--n];
        int64_t top = PyLong_AsLongLong(PyTuple_GET_ITEM(st, 0)), depth = PyLong_AsLongLong(PyTuple_GET_ITEM(st, 2));
        if (PyErr_Occurred()) { Py_DECREF(st); err = 1; break; }
        int32_t code = lr_action(t, top, term);
        const int32_t *cs = &code;
        Py_ssize_t ncs = 1;
        if (code >= t->multi) {
            int64_t k = code - t->multi;
            if (k >= t->n_conf) { Py_DECREF(st); continue; }
            cs = t->conf_codes + t->conf_off[k];
            ncs = t->conf_off[k + 1] - t->conf_off[k];
        }
        for (Py_ssize_t ci = 0; ci < ncs && !err; ci++) {
            int32_t c = cs[ci];
            if (c == 0) continue;
            if (c > 0) {
                if (depth < t->max_depth) {
                    PyObject *cell = lr_cell(c - 1, st, intern);
                    if (!cell || PyList_Append(out, cell) < 0) err = 1;
                    Py_XDECREF(cell);
                }
                continue;
            }
            Py_ssize_t r = -c - 1;
            if (r >= t->n_rules) continue;
            PyObject *below = st;
            for (int64_t k = 0; k < t->rule_len[r] && below != Py_None; k++) below = PyTuple_GET_ITEM(below, 1);
            if (below == Py_None) { PyErr_SetString(PyExc_ValueError, "lr: a reduction below the stack"); err = 1; break; }
            int64_t below_state = PyLong_AsLongLong(PyTuple_GET_ITEM(below, 0));
            int64_t g = lr_goto(t, below_state, t->rule_origin[r]);
            if (g < 0) continue;
            if (term == t->end && g == t->end_state) {
                if (with_accept && PyList_Append(out, t->accept) < 0) err = 1;
                continue;
            }
            g = lr_unit_top(t, below_state, g, term);
            int added = lr_add_pair(&seen, g, below);
            if (added < 0) { PyErr_NoMemory(); err = 1; break; }
            if (!added) continue;
            PyObject *cell = lr_cell(g, below, intern);
            if (!cell) { err = 1; break; }
            if (n == cap) {
                PyObject **nw = realloc(work, (size_t)cap * 2 * sizeof(PyObject *));
                if (!nw) { Py_DECREF(cell); PyErr_NoMemory(); err = 1; break; }
                work = nw;
                cap *= 2;
            }
            work[n++] = cell;
        }
        Py_DECREF(st);
    }
    while (n) Py_DECREF(work[--n]);
    free(work);
    lr_work_free(&seen);
    return err ? -1 : 0;
}

/* lr_step_all(tables, lexers, configs, data, intern, cap) -> the configurations ``(q, stack)``
 * after ``data`` (each (q, stack object) once, in order, at most ``cap`` after each byte), before
 * the viability check; () when none survives; NotImplemented where a lexer is not built yet or a
 * compound lexeme is not known to the tables (the caller steps). PushdownGrammar.step_all's loop. */
/* configurations (q, stack) in order, each holding a reference to its stack */
typedef struct { Py_ssize_t q; PyObject *st; } lr_conf;
typedef struct { lr_conf *a; Py_ssize_t n, cap; } lr_confs;

static int lr_confs_push(lr_confs *v, Py_ssize_t q, PyObject *st) {
    if (v->n == v->cap) {
        Py_ssize_t cap = v->cap ? v->cap * 2 : 16;
        lr_conf *a = realloc(v->a, (size_t)cap * sizeof(lr_conf));
        if (!a) { PyErr_NoMemory(); return -1; }
        v->a = a;
        v->cap = cap;
    }
    Py_INCREF(st);
    v->a[v->n++] = (lr_conf){q, st};
    return 0;
}

static void lr_confs_clear(lr_confs *v, Py_ssize_t from) {
    while (v->n > from) Py_DECREF(v->a[--v->n].st);
}

/* (q, st) added to ``next`` unless ``seen`` has it; -1 on an error */
static int lr_confs_add(lr_confs *next, lr_work *seen, Py_ssize_t q, PyObject *st) {
    int added = lr_add_pair(seen, q, st);
    if (added < 0) { PyErr_NoMemory(); return -1; }
    return added ? lr_confs_push(next, q, st) : 0;
}

static PyObject *lr_step_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyTuple_Check(args[2])) { PyErr_SetString(PyExc_TypeError, "lr_step_all(tables, lexers, configs, data, intern, cap)"); return NULL; }
    const lr_t *t = PyCapsule_GetPointer(args[0], "dotvllm.lr");
    if (!t) return NULL;
    lr_rows rows;
    PyObject *chosen, *ignore, *lexer_of, *fork, *intern = args[4];
    if (lr_lexers(args[1], &rows, &chosen, &ignore, &lexer_of, &fork) < 0) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[5]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[3], &data, PyBUF_SIMPLE) < 0) return NULL;
    lr_confs cur = {0}, next = {0};
    PyObject *stacks = PyList_New(0), *result = NULL;
    int err = !stacks, later = 0;
    for (Py_ssize_t i = 0; !err && i < PyTuple_GET_SIZE(args[2]); i++) {
        PyObject *c = PyTuple_GET_ITEM(args[2], i);
        if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 2) { PyErr_SetString(PyExc_TypeError, "lr_step_all: a configuration is not (q, stack)"); err = 1; break; }
        Py_ssize_t q = PyLong_AsSsize_t(PyTuple_GET_ITEM(c, 0));
        err = (q == -1 && PyErr_Occurred()) || lr_confs_push(&cur, q, PyTuple_GET_ITEM(c, 1)) < 0;
    }
    const uint8_t *bytes = data.buf;
    for (Py_ssize_t i = 0; !err && !later && cur.n && i < data.len; i++) {
        int b = bytes[i];
        lr_work seen;
        lr_work_init(&seen);
        for (Py_ssize_t k = 0; k < cur.n && !err && !later; k++) {
            Py_ssize_t q = cur.a[k].q, nq;
            PyObject *st = cur.a[k].st;
            if (lr_next(&rows, q, b, &nq) < 0) { err = 1; break; }
            if (nq >= 0) { err = lr_confs_add(&next, &seen, nq, st) < 0; continue; }
            Py_ssize_t term = lr_list_int(chosen, q);
            if (term == -2) { err = 1; break; }
            if (term < 0) continue;
            if (PyList_SetSlice(stacks, 0, PyList_GET_SIZE(stacks), NULL) < 0) { err = 1; break; }
            Py_ssize_t ign = term <= t->end ? lr_list_int(ignore, term) : 0;
            if (ign == -2) { err = 1; break; }
            if (term < t->end && ign) {
                if (PyList_Append(stacks, st) < 0) { err = 1; break; }
            } else {
                const int32_t *members;
                int32_t one;
                Py_ssize_t nm = lr_expand(t, term, &members, &one);
                if (nm < 0) { later = 1; break; }
                for (Py_ssize_t j = 0; j < nm && !err; j++)
                    if (lr_feed_all(t, st, members[j], intern, stacks, 0) < 0) err = 1;
                if (err) break;
            }
            for (Py_ssize_t j = 0; j < PyList_GET_SIZE(stacks) && !err && !later; j++) {
                PyObject *s2 = PyList_GET_ITEM(stacks, j);
                Py_ssize_t lo, q2;
                if (lr_start(lexer_of, rows.lexer_lo, s2, &lo) < 0) { err = 1; break; }
                if (lo < 0) { later = 1; break; }
                if (lr_next(&rows, lo, b, &q2) < 0) { err = 1; break; }
                if (q2 >= 0) err = lr_confs_add(&next, &seen, q2, s2) < 0;
            }
        }
        lr_work_free(&seen);
        lr_confs_clear(&next, next.n < limit ? next.n : limit);  /* (the first ``limit`` kept) */
        lr_confs_clear(&cur, 0);
        lr_confs tmp = cur;
        cur = next;
        next = tmp;
    }
    if (!err && !later) {
        result = PyTuple_New(cur.n);
        for (Py_ssize_t k = 0; result && k < cur.n; k++) {
            PyObject *c = Py_BuildValue("(nO)", cur.a[k].q, cur.a[k].st);
            if (!c) { Py_CLEAR(result); break; }
            PyTuple_SET_ITEM(result, k, c);
        }
    }
    lr_confs_clear(&cur, 0);
    lr_confs_clear(&next, 0);
    free(cur.a);
    free(next.a);
    if (rows.row.obj) PyBuffer_Release(&rows.row);
    PyBuffer_Release(&data);
    Py_XDECREF(stacks);
    if (later && !err) Py_RETURN_NOTIMPLEMENTED;
    return result;
}

/* ---- the mask computation's recursion (PushdownGrammar._subtree / _group and mask's miss) ----
 *
 * mask_miss(grammar, ctx, probe, base, out) -> out: PushdownGrammar.mask after its cache read, up
 * to the end-of-sequence bits: ``base`` is _base_of(q)'s (free, pending, exits, key); the rows of
 * the tokens allowed are ORed into ``out`` (an int32 row of the grammar's width, overwritten). The
 * recursion is _group's and _subtree's, step for step: the same memo (``_sub_cache``, its count in
 * the grammar's ``_sub_count``), the same cross walks (``_cross_cache``, and the grammar's
 * ``_cross`` on a miss), the same probe reads (so the same cache depths), the same rows (a group's
 * row is a new array only where it ORs two or more). ``ctx``: (sub_cache, cross_cache, reach
 * values, lexer_of_state, ignore, end, memo limit). A terminal the parser tables do not know (a
 * compound made since) is fed by the probe's own Python methods. */

/* dst |= src over n 32-bit words, 16 bytes at a time (the loop alone stays scalar at -O2) */
#if defined(__GNUC__)
typedef uint64_t or_chunk __attribute__((vector_size(16)));
#endif
static void or_words(uint32_t *dst, const uint32_t *src, Py_ssize_t n) {
    Py_ssize_t j = 0;
#if defined(__GNUC__)
    for (; j + 8 <= n; j += 8) {
        or_chunk a, b, c, d;
        memcpy(&a, dst + j, 16); memcpy(&b, src + j, 16);
        memcpy(&c, dst + j + 4, 16); memcpy(&d, src + j + 4, 16);
        a |= b;
        c |= d;
        memcpy(dst + j, &a, 16); memcpy(dst + j + 4, &c, 16);
    }
#endif
    for (; j < n; j++) dst[j] |= src[j];
}

static PyObject *mt_names[6];  /* "_cross", "feed", "viable", "_sub_count", "lr", "_reach" */

typedef struct {
    const lr_t *t;
    lr_probe p;
    PyObject *g, *probe, *sub_cache, *cross_cache, *reach, *lexer_of, *ignore, *or_cache, *paths, *cross_walks;
    int64_t end;
    Py_ssize_t count, limit, words;
    int cacheable;
} mt_ctx;

/* the probe's Python method ``name`` on (pos, new, arg), the C view synced around the call */
static PyObject *mt_python(mt_ctx *c, int name, long long pos, PyObject *new, PyObject *arg) {
    if (lr_close(&c->p, 1) < 0) return NULL;
    PyObject *pos_obj = PyLong_FromLongLong(pos);
    PyObject *got = pos_obj ? PyObject_CallMethodObjArgs(c->probe, mt_names[name], pos_obj, new, arg, NULL) : NULL;
    Py_XDECREF(pos_obj);
    if (got && lr_open(&c->p) < 0) Py_CLEAR(got);
    return got;
}

/* the rows parts[from:] ORed into w[:nw] (the first of them copied instead when ``assign``); 0, or
 * -1 on an error */
static int or_list(uint32_t *w, Py_ssize_t nw, PyObject *parts, Py_ssize_t from, int assign) {
    for (Py_ssize_t i = from; i < PyList_GET_SIZE(parts); i++) {
        Py_buffer b;
        if (PyObject_GetBuffer(PyList_GET_ITEM(parts, i), &b, PyBUF_SIMPLE) < 0) return -1;
        Py_ssize_t m = b.len / 4 < nw ? b.len / 4 : nw;
        if (assign && i == from) {
            memcpy(w, b.buf, (size_t)m * 4);
            memset(w + m, 0, (size_t)(nw - m) * 4);
        } else {
            or_words(w, b.buf, m);
        }
        PyBuffer_Release(&b);
    }
    return 0;
}

/* OR of ``parts`` (a list of rows): NULL with no error when there are none, the one row itself
 * (a new reference) when there is one, else a row of the grammar's OR cache or a new row. The cache
 * is keyed by the rows' identities (the rows of the walks and groups are cached objects: another
 * stack often brings the same ones); an entry holds its rows, so no key outlives them. */
static PyObject *mt_or(mt_ctx *c, PyObject *parts) {
    Py_ssize_t k = PyList_GET_SIZE(parts);
    if (k == 0) return NULL;
    PyObject *acc = PyList_GET_ITEM(parts, 0);
    if (k == 1) { Py_INCREF(acc); return acc; }
    /* (the key: the rows' addresses as one bytes object, which the cyclic collector never tracks) */
    PyObject *ids = PyBytes_FromStringAndSize(NULL, k * (Py_ssize_t)sizeof(PyObject *)), *held = NULL;
    if (!ids) return NULL;
    memcpy(PyBytes_AS_STRING(ids), ((PyListObject *)parts)->ob_item, (size_t)k * sizeof(PyObject *));
    PyObject *hit = PyDict_GetItemWithError(c->or_cache, ids);
    if (hit) {
        Py_DECREF(ids);
        acc = PyTuple_GET_ITEM(hit, 0);
        Py_INCREF(acc);
        return acc;
    }
    if (PyErr_Occurred()) { Py_DECREF(ids); return NULL; }
    acc = PyNumber_Or(acc, PyList_GET_ITEM(parts, 1));
    if (acc && k > 2) {
        Py_buffer a;
        if (PyObject_GetBuffer(acc, &a, PyBUF_WRITABLE) < 0) {
            Py_CLEAR(acc);
        } else {
            int bad = or_list(a.buf, a.len / 4, parts, 2, 0) < 0;
            PyBuffer_Release(&a);
            if (bad) Py_CLEAR(acc);
        }
    }
    if (acc) {
        if (PyDict_GET_SIZE(c->or_cache) >= c->limit / 8) PyDict_Clear(c->or_cache);  /* (the masks' bound) */
        PyObject *rows = PyList_AsTuple(parts);
        held = rows ? PyTuple_Pack(2, acc, rows) : NULL;
        Py_XDECREF(rows);
        if (!held || PyDict_SetItem(c->or_cache, ids, held) < 0) Py_CLEAR(acc);
        Py_XDECREF(held);
    }
    Py_DECREF(ids);
    return acc;
}

/* _Probe.signature(pos, depth) */
static PyObject *mt_signature(mt_ctx *c, int64_t pos, Py_ssize_t depth) {
    if (depth == 0) return PyTuple_New(0);
    if (lr_state(&c->p, pos + depth - 1) == -2) return NULL;
    PyObject *cells = c->p.cells;
    if (pos < 0 || pos + depth > PyList_GET_SIZE(cells)) {
        PyErr_SetString(PyExc_IndexError, "mask_miss: a signature past the cells read");
        return NULL;
    }
    PyObject *sig = PyTuple_New(depth);  /* (straight from the cells: no slice in between) */
    for (Py_ssize_t i = 0; sig && i < depth; i++) {
        PyObject *x = PyList_GET_ITEM(cells, pos + i);
        Py_INCREF(x);
        PyTuple_SET_ITEM(sig, i, x);
    }
    return sig;
}

/* whether (pos, new) takes one of ``reach``: 1, 0, -1 on an error */
static int mt_viable(mt_ctx *c, int64_t pos, PyObject *new, PyObject *reach) {
    if (PyTuple_Check(reach)) {
        int64_t buf[LR_SMALL], *xs;
        Py_ssize_t n = lr_new(new, buf, &xs);
        if (n < 0) return -1;
        int unknown = 0, got = lr_viable_in(c->t, &c->p, pos, xs, n, reach, &unknown);
        if (xs != buf) free(xs);
        if (got < 0 || !unknown) return got;
    }
    PyObject *r = mt_python(c, 2, pos, new, reach);
    if (!r) return -1;
    int got = PyObject_IsTrue(r);
    Py_DECREF(r);
    return got;
}

/* the outcomes of feeding ``term`` to (pos, new), accept left out: a new list of (pos, new) */
static PyObject *mt_feed(mt_ctx *c, int64_t pos, PyObject *new, int64_t term) {
    PyObject *out = lr_feed_list(c->t, &c->p, pos, new, term);
    if (out == Py_NotImplemented) {  /* a compound made since the tables: the probe's own method */
        Py_DECREF(out);
        PyObject *term_obj = PyLong_FromLongLong(term);
        out = term_obj ? mt_python(c, 1, pos, new, term_obj) : NULL;
        Py_XDECREF(term_obj);
        if (out && !PyList_Check(out)) Py_SETREF(out, PySequence_List(out));
    }
    if (!out) return NULL;
    Py_ssize_t k = 0;  /* accept left out */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(out); i++) {
        PyObject *x = PyList_GET_ITEM(out, i);
        if (x == c->t->accept) continue;
        Py_INCREF(x);
        PyList_SetItem(out, k++, x);
    }
    if (PyList_SetSlice(out, k, PyList_GET_SIZE(out), NULL) < 0) Py_CLEAR(out);
    return out;
}

static int mt_subtree(mt_ctx *c, PyObject *key, PyObject *groups, int64_t pos, PyObject *new, PyObject *parts);

/* the rows of ``pending`` ((end state, row) pairs) viable on (pos, new), appended to ``parts`` */
static int mt_pending(mt_ctx *c, PyObject *pending, int64_t pos, PyObject *new, PyObject *parts) {
    if (!PyTuple_Check(pending)) { PyErr_SetString(PyExc_TypeError, "mask_miss: pending is not a tuple"); return -1; }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pending); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pending, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) { PyErr_SetString(PyExc_TypeError, "mask_miss: not an (end state, row) pair"); return -1; }
        PyObject *reach = PyDict_GetItemWithError(c->reach, PyTuple_GET_ITEM(pair, 0));
        if (reach) {
            Py_INCREF(reach);  /* (held: the Python fallback of the probe may run code) */
        } else {  /* not computed yet: the grammar's _reach computes it */
            if (PyErr_Occurred()) return -1;
            PyObject *lazy = PyObject_GetAttr(c->g, mt_names[5]);
            reach = lazy ? PyObject_GetItem(lazy, PyTuple_GET_ITEM(pair, 0)) : NULL;
            Py_XDECREF(lazy);
            if (!reach) return -1;
        }
        int ok = mt_viable(c, pos, new, reach);
        Py_DECREF(reach);
        if (ok < 0) return -1;
        if (ok && PyList_Append(parts, PyTuple_GET_ITEM(pair, 1)) < 0) return -1;
    }
    return 0;
}

/* _cross where its walk is known by content ((lexer, exit levels' bytes, exit nodes' bytes), as the
 * grammar's _cross keys _cross_walks): that walk, also kept under ``key2``; NULL without an error
 * where it is not known yet (the grammar's _cross walks) or the exits are no contiguous arrays */
static PyObject *mt_cross_known(mt_ctx *c, PyObject *key2, PyObject *level, PyObject *node, PyObject *lexer) {
    Py_buffer bl, bn;
    if (PyObject_GetBuffer(level, &bl, PyBUF_SIMPLE) < 0) { PyErr_Clear(); return NULL; }
    if (PyObject_GetBuffer(node, &bn, PyBUF_SIMPLE) < 0) { PyErr_Clear(); PyBuffer_Release(&bl); return NULL; }
    PyObject *content = Py_BuildValue("(Oy#y#)", lexer, (const char *)bl.buf, bl.len, (const char *)bn.buf, bn.len);
    PyBuffer_Release(&bl);
    PyBuffer_Release(&bn);
    if (!content) return NULL;
    PyObject *got = PyDict_GetItemWithError(c->cross_walks, content);
    Py_DECREF(content);
    if (!got) return NULL;
    if (PyDict_SetItem(c->cross_cache, key2, got) < 0) return NULL;
    Py_INCREF(got);
    return got;
}

/* ``key``'s number in ``paths`` (a dict), numbered by its size when new: the get, the size and the
 * insertion with no Python code between them, so threads sharing a grammar never number two keys
 * alike (mt_group and, through path_id, the grammar's Python number keys here) */
static PyObject *number_key(PyObject *paths, PyObject *key) {
    PyObject *got = PyDict_GetItemWithError(paths, key);
    if (got) { Py_INCREF(got); return got; }
    if (PyErr_Occurred()) return NULL;
    got = PyLong_FromSsize_t(PyDict_GET_SIZE(paths));
    if (got && PyDict_SetItem(paths, key, got) < 0) Py_CLEAR(got);
    return got;
}

/* path_id(paths, key): number_key from Python (the grammar's _path_id) */
static PyObject *path_id(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "path_id(paths: dict, key: tuple)");
        return NULL;
    }
    return number_key(args[0], args[1]);
}

/* _group: a new reference to the row, or NULL; ``*none`` set when the row is None */
static PyObject *mt_group(mt_ctx *c, PyObject *key, PyObject *term_obj, PyObject *level, PyObject *node, int64_t pos,
                          PyObject *new, int *none) {
    *none = 0;
    PyObject *memo_key = NULL, *parts = NULL, *outcomes = NULL, *row = NULL, *result = NULL;
    int64_t term = PyLong_AsLongLong(term_obj);
    if (term == -1 && PyErr_Occurred()) return NULL;
    if (c->cacheable) {
        if (!(memo_key = PyTuple_Pack(3, key, term_obj, new))) return NULL;
        PyObject *memo = PyDict_GetItemWithError(c->sub_cache, memo_key);
        if (!memo && PyErr_Occurred()) goto done;
        if (memo) {
            Py_INCREF(memo);
            Py_ssize_t it = 0;
            PyObject *depth_obj, *table;
            while (PyDict_Next(memo, &it, &depth_obj, &table)) {
                Py_ssize_t depth = PyLong_AsSsize_t(depth_obj);
                PyObject *sig = depth >= 0 ? mt_signature(c, pos, depth) : NULL;
                if (!sig) { Py_DECREF(memo); goto done; }
                PyObject *hit = PyDict_GetItemWithError(table, sig);
                Py_DECREF(sig);
                if (hit) {
                    Py_DECREF(memo);
                    Py_DECREF(memo_key);
                    if (hit == Py_None) { *none = 1; return NULL; }
                    Py_INCREF(hit);
                    return hit;
                }
                if (PyErr_Occurred()) { Py_DECREF(memo); goto done; }
            }
            Py_DECREF(memo);
        }
    }
    Py_ssize_t saved = c->p.max_read;
    c->p.max_read = pos - 1;
    if (!(parts = PyList_New(0))) goto done;
    int ignored = 0;
    if (term < c->end) {
        PyObject *ig = PyList_GetItem(c->ignore, term);
        if (!ig) goto done;
        ignored = PyObject_IsTrue(ig);
    }
    if (ignored) {
        PyObject *pos_obj = PyLong_FromLongLong(pos);
        outcomes = pos_obj ? Py_BuildValue("[(NO)]", pos_obj, new) : NULL;
    } else {
        outcomes = mt_feed(c, pos, new, term);
    }
    if (!outcomes) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(outcomes); i++) {
        PyObject *o = PyList_GET_ITEM(outcomes, i);
        if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(o, 1))) {
            PyErr_SetString(PyExc_TypeError, "mask_miss: an outcome is not (pos, new)");
            goto done;
        }
        long long pos2 = PyLong_AsLongLong(PyTuple_GET_ITEM(o, 0));
        if (pos2 == -1 && PyErr_Occurred()) goto done;
        PyObject *new2 = PyTuple_GET_ITEM(o, 1);
        Py_ssize_t n2 = PyTuple_GET_SIZE(new2);
        int64_t top;
        if (n2) {
            top = PyLong_AsLongLong(PyTuple_GET_ITEM(new2, n2 - 1));
            if (top == -1 && PyErr_Occurred()) goto done;
        } else if ((top = lr_state(&c->p, pos2)) == -2) {
            goto done;
        }
        Py_ssize_t nl = PyList_GET_SIZE(c->lexer_of);
        PyObject *lexer = PyList_GetItem(c->lexer_of, top < 0 ? nl + top : top);
        if (!lexer) goto done;
        /* the path's key: (key, terminal, lexer) numbered in ``paths`` (the grammar's _group does the same) */
        PyObject *step = PyTuple_Pack(3, key, term_obj, lexer);  /* (holds the lexer) */
        PyObject *key2 = step ? number_key(c->paths, step) : NULL;
        if (!key2) { Py_XDECREF(step); goto done; }
        PyObject *cross = PyDict_GetItemWithError(c->cross_cache, key2);
        if (cross) {
            Py_INCREF(cross);
        } else if (!PyErr_Occurred() && !(cross = mt_cross_known(c, key2, level, node, lexer)) && !PyErr_Occurred()) {
            PyObject *ln = PyTuple_Pack(2, level, node);
            cross = ln ? PyObject_CallMethodObjArgs(c->g, mt_names[0], key2, ln, lexer, NULL) : NULL;
            Py_XDECREF(ln);
        }
        Py_DECREF(step);
        if (!cross) { Py_DECREF(key2); goto done; }
        int bad = !PyTuple_Check(cross) || PyTuple_GET_SIZE(cross) != 3;
        if (bad) PyErr_SetString(PyExc_TypeError, "mask_miss: a cross walk is not (free, pending, exits)");
        PyObject *free_row = bad ? NULL : PyTuple_GET_ITEM(cross, 0);
        if (!bad && free_row != Py_None) bad = PyList_Append(parts, free_row) < 0;
        if (!bad) bad = mt_pending(c, PyTuple_GET_ITEM(cross, 1), pos2, new2, parts) < 0;
        PyObject *exits = bad ? NULL : PyTuple_GET_ITEM(cross, 2);
        if (!bad && PyObject_IsTrue(exits)) bad = mt_subtree(c, key2, exits, pos2, new2, parts) < 0;
        Py_DECREF(cross);
        Py_DECREF(key2);
        if (bad) goto done;
    }
    row = mt_or(c, parts);
    if (!row && PyErr_Occurred()) goto done;
    Py_ssize_t depth = c->p.max_read - pos + 1;
    if (depth < 0) depth = 0;
    if (saved > c->p.max_read) c->p.max_read = saved;
    if (c->cacheable) {
        if (++c->count > c->limit) {
            PyDict_Clear(c->sub_cache);
            PyDict_Clear(c->or_cache);  /* (it holds rows of the groups: not past them) */
            c->count = 1;
        }
        PyObject *sig = mt_signature(c, pos, depth);
        PyObject *depth_obj = sig ? PyLong_FromSsize_t(depth) : NULL;
        PyObject *memo = depth_obj ? PyDict_GetItemWithError(c->sub_cache, memo_key) : NULL;
        int ok = depth_obj != NULL;
        if (ok && !memo) {
            ok = !PyErr_Occurred() && (memo = PyDict_New()) != NULL && PyDict_SetItem(c->sub_cache, memo_key, memo) == 0;
            if (memo) Py_DECREF(memo);  /* (held by the cache) */
        }
        PyObject *table = ok ? PyDict_GetItemWithError(memo, depth_obj) : NULL;
        if (ok && !table) {
            ok = !PyErr_Occurred() && (table = PyDict_New()) != NULL && PyDict_SetItem(memo, depth_obj, table) == 0;
            if (table) Py_DECREF(table);
        }
        if (ok) ok = PyDict_SetItem(table, sig, row ? row : Py_None) == 0;
        Py_XDECREF(sig);
        Py_XDECREF(depth_obj);
        if (!ok) goto done;
    }
    if (row) { result = row; row = NULL; } else { *none = 1; }
done:
    Py_XDECREF(memo_key);
    Py_XDECREF(parts);
    Py_XDECREF(outcomes);
    Py_XDECREF(row);
    return result;
}

/* _subtree's rows, one per exit group that allows something, appended to ``parts`` (the caller ORs
 * them with its own: the subtree's OR is never kept); 0, or -1 on an error */
static int mt_subtree(mt_ctx *c, PyObject *key, PyObject *groups, int64_t pos, PyObject *new, PyObject *parts) {
    if (!PyTuple_Check(groups)) { PyErr_SetString(PyExc_TypeError, "mask_miss: exits are not a tuple"); return -1; }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(groups); i++) {
        PyObject *grp = PyTuple_GET_ITEM(groups, i);
        if (!PyTuple_Check(grp) || PyTuple_GET_SIZE(grp) != 3) {
            PyErr_SetString(PyExc_TypeError, "mask_miss: an exit group is not (terminal, levels, nodes)");
            return -1;
        }
        int part_none;
        PyObject *part = mt_group(c, key, PyTuple_GET_ITEM(grp, 0), PyTuple_GET_ITEM(grp, 1), PyTuple_GET_ITEM(grp, 2),
                                  pos, new, &part_none);
        if (!part && !part_none) return -1;
        if (part) {
            int bad = PyList_Append(parts, part) < 0;
            Py_DECREF(part);
            if (bad) return -1;
        }
    }
    return 0;
}

/* mask_miss(grammar, ctx, probe, base, zero) -> the mask's row: the one row that allows anything itself
 * (a row of the caches: shared), a new row where several do (their OR), ``zero`` where none does */
static PyObject *mask_miss(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 10 || !PyTuple_Check(args[3]) ||
        PyTuple_GET_SIZE(args[3]) != 4) {
        PyErr_SetString(PyExc_TypeError, "mask_miss(grammar, ctx, probe, (free, pending, exits, key), zero)");
        return NULL;
    }
    mt_ctx c;
    memset(&c, 0, sizeof c);
    c.g = args[0];
    c.probe = args[2];
    PyObject *ctx = args[1];
    c.sub_cache = PyTuple_GET_ITEM(ctx, 0);
    c.cross_cache = PyTuple_GET_ITEM(ctx, 1);
    c.reach = PyTuple_GET_ITEM(ctx, 2);
    c.lexer_of = PyTuple_GET_ITEM(ctx, 3);
    c.ignore = PyTuple_GET_ITEM(ctx, 4);
    c.end = PyLong_AsLongLong(PyTuple_GET_ITEM(ctx, 5));
    c.limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 6));
    c.or_cache = PyTuple_GET_ITEM(ctx, 7);
    c.paths = PyTuple_GET_ITEM(ctx, 8);
    c.cross_walks = PyTuple_GET_ITEM(ctx, 9);
    if (PyErr_Occurred()) return NULL;
    if (!PyDict_Check(c.sub_cache) || !PyDict_Check(c.cross_cache) || !PyDict_Check(c.reach) ||
        !PyList_Check(c.lexer_of) || !PyList_Check(c.ignore) || !PyDict_Check(c.or_cache) || !PyDict_Check(c.paths) ||
        !PyDict_Check(c.cross_walks)) {
        PyErr_SetString(PyExc_TypeError,
                        "mask_miss: ctx is not (dict, dict, dict, list, list, int, int, dict, dict, dict)");
        return NULL;
    }
    PyObject *lr = PyObject_GetAttr(c.probe, mt_names[4]);
    if (!lr) return NULL;
    c.t = PyCapsule_GetPointer(lr, "dotvllm.lr");  /* (the probe holds the capsule) */
    Py_DECREF(lr);
    if (!c.t) return NULL;
    PyObject *cacheable = PyObject_GetAttrString(c.probe, "cacheable");
    PyObject *count = cacheable ? PyObject_GetAttr(c.g, mt_names[3]) : NULL;
    if (!count) { Py_XDECREF(cacheable); return NULL; }
    c.cacheable = PyObject_IsTrue(cacheable);
    c.count = PyLong_AsSsize_t(count);
    Py_DECREF(cacheable);
    Py_DECREF(count);
    if (PyErr_Occurred() || lr_init(&c.p, c.probe) < 0 || lr_open(&c.p) < 0) return NULL;
    PyObject *base = args[3], *parts = PyList_New(0), *empty = PyTuple_New(0), *row = NULL;
    int ok = parts && empty;
    PyObject *free_row = PyTuple_GET_ITEM(base, 0);
    if (ok && free_row != Py_None) ok = PyList_Append(parts, free_row) == 0;
    if (ok) ok = mt_pending(&c, PyTuple_GET_ITEM(base, 1), 0, empty, parts) == 0;
    if (ok && PyObject_IsTrue(PyTuple_GET_ITEM(base, 2)))
        ok = mt_subtree(&c, PyTuple_GET_ITEM(base, 3), PyTuple_GET_ITEM(base, 2), 0, empty, parts) == 0;
    if (ok) {  /* (no copy of a lone row, no fresh row to fill: a row read once, ORs written once) */
        row = mt_or(&c, parts);
        if (!row && !PyErr_Occurred()) { row = args[4]; Py_INCREF(row); }
        ok = row != NULL;
    }
    Py_XDECREF(parts);
    Py_XDECREF(empty);
    ok = lr_close(&c.p, ok) == 0 && ok;
    if (ok) {
        PyObject *n = PyLong_FromSsize_t(c.count);
        ok = n && PyObject_SetAttr(c.g, mt_names[3], n) == 0;
        Py_XDECREF(n);
    }
    if (!ok) { Py_XDECREF(row); return NULL; }
    return row;
}

/* -- LALR(1) tables ------------------------------------------------------------------------------ */

/* lalr_packed(rules, term_names, sym, nonterms, terms, root, start, multi)
 *   -> (action, n_states, goto, rule_len, rule_origin, conf_offsets, conf_codes, end_state, accepts,
 *       rule_keys)
 * dotvllm_plugin.lalr.lalr_tables followed by pushdown._packed (the reference: same states in the
 * same order, same conflicts in the same order, same rule codes). ``rules``: the grammar's distinct
 * (origin, expansion tuple) pairs; ``term_names``: the terminals in column order; ``nonterms``: the
 * sorted origins with the augmented rule's origin at index ``root``; ``terms``: the sorted terminal
 * names; ``sym``: each of those names to its symbol (nonterminals 0 .. n_nt - 1, terminals n_nt ..;
 * $END, the last terminal, has no name). ``start`` is the augmented rule's body. Raises ValueError
 * as lalr_tables does for a symbol neither a terminal nor defined. action (int32[n_states * n_cols],
 * n_cols = len(term_names) + 1), goto (int32[n_states * (n_nt - 1)]) and the four int32 arrays come
 * as bytearrays; accepts and rule_keys as lists. */

typedef struct {
    Py_ssize_t n_nt, root;
    const int64_t *lhs, *roff, *after, *rank;
} lalr_g;

/* the order of rules[a] and rules[b] as Python compares (origin, expansion) tuples of names */
static int lalr_rule_cmp(const lalr_g *g, int64_t a, int64_t b) {
    int64_t x = g->rank[g->lhs[a]], y = g->rank[g->lhs[b]];
    if (x != y) return x < y ? -1 : 1;
    for (const int64_t *pa = g->after + g->roff[a], *pb = g->after + g->roff[b];; pa++, pb++) {
        if (*pa < 0 || *pb < 0) return (*pa >= 0) - (*pb >= 0);  /* a prefix first */
        x = g->rank[*pa];
        y = g->rank[*pb];
        if (x != y) return x < y ? -1 : 1;
    }
}

/* stable merge sort of the rule numbers xs[0 .. n - 1] by lalr_rule_cmp (tmp: n more) */
static void lalr_sort_rules(const lalr_g *g, int64_t *xs, int64_t *tmp, Py_ssize_t n) {
    for (Py_ssize_t w = 1; w < n; w *= 2) {
        for (Py_ssize_t lo = 0; lo < n; lo += 2 * w) {
            Py_ssize_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            Py_ssize_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = lalr_rule_cmp(g, xs[j], xs[i]) < 0 ? xs[j++] : xs[i++];
            while (i < mid) tmp[k++] = xs[i++];
            while (j < hi) tmp[k++] = xs[j++];
        }
        memcpy(xs, tmp, (size_t)n * sizeof(int64_t));
    }
}

/* the first index in keys[lo .. hi - 1] (ascending) not below x */
static Py_ssize_t lalr_find(const int64_t *keys, Py_ssize_t lo, Py_ssize_t hi, int64_t x) {
    while (lo < hi) {
        Py_ssize_t mid = lo + (Py_ssize_t)((size_t)(hi - lo) >> 1);
        if (keys[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* sort xs[0 .. n - 1] ascending (insertion sort for the few items, sets and columns of a state) */
static void lalr_sort(int64_t *xs, Py_ssize_t n) {
    if (n > 16) {
        qsort(xs, (size_t)n, sizeof(int64_t), cmp_i64);
        return;
    }
    for (Py_ssize_t a = 1; a < n; a++) {
        int64_t x = xs[a];
        Py_ssize_t b = a;
        for (; b > 0 && xs[b - 1] > x; b--) xs[b] = xs[b - 1];
        xs[b] = x;
    }
}

static inline void lalr_or(uint64_t *dst, const uint64_t *src, Py_ssize_t w) {
    for (Py_ssize_t i = 0; i < w; i++) dst[i] |= src[i];
}

/* DeRemer and Pennello's Digraph, as dotvllm_plugin.lalr._digraph: bits[x] (w words) becomes the
 * union of bits[y] over every y reachable from x along the edges to[off[x] .. off[x + 1] - 1].
 * Returns -1 when out of memory. */
static int lalr_digraph(Py_ssize_t n, const int64_t *off, const int64_t *to, uint64_t *bits, Py_ssize_t w) {
    Py_ssize_t done = n + 1, sp = 0, fp = 0;
    Py_ssize_t *mark = calloc((size_t)n + 1, sizeof(Py_ssize_t)), *stack = malloc(((size_t)n + 1) * sizeof(Py_ssize_t));
    Py_ssize_t *fx = malloc(((size_t)n + 1) * sizeof(Py_ssize_t)), *fd = malloc(((size_t)n + 1) * sizeof(Py_ssize_t));
    int64_t *fi = malloc(((size_t)n + 1) * sizeof(int64_t));  /* frames: node, its depth, its next edge */
    if (!mark || !stack || !fx || !fd || !fi) {
        free(mark); free(stack); free(fx); free(fd); free(fi);
        return -1;
    }
    for (Py_ssize_t root = 0; root < n; root++) {
        if (mark[root]) continue;
        stack[sp++] = root;
        mark[root] = sp;
        fx[0] = root; fd[0] = sp; fi[0] = off[root]; fp = 1;
        while (fp) {
            Py_ssize_t x = fx[fp - 1];
            if (fi[fp - 1] < off[x + 1]) {
                Py_ssize_t y = (Py_ssize_t)to[fi[fp - 1]++];
                if (!mark[y]) {
                    stack[sp++] = y;
                    mark[y] = sp;
                    fx[fp] = y; fd[fp] = sp; fi[fp] = off[y]; fp++;
                } else {
                    if (mark[y] < mark[x]) mark[x] = mark[y];
                    lalr_or(bits + x * w, bits + y * w, w);
                }
                continue;
            }
            fp--;
            if (mark[x] == fd[fp]) {  /* x roots a component: everything above it on the stack */
                for (;;) {
                    Py_ssize_t top = stack[--sp];
                    mark[top] = done;
                    if (top == x) break;
                    memcpy(bits + top * w, bits + x * w, (size_t)w * 8);
                }
            }
            if (fp) {
                Py_ssize_t p = fx[fp - 1];
                if (mark[x] < mark[p]) mark[p] = mark[x];
                lalr_or(bits + p * w, bits + x * w, w);
            }
        }
    }
    free(mark); free(stack); free(fx); free(fd); free(fi);
    return 0;
}

/* edges (from[i], to[i]) as CSR over n nodes, in their order per node: off[n + 1], out[m] */
static int lalr_csr(Py_ssize_t n, const vec *from, const vec *to, int64_t **off, int64_t **out) {
    *off = calloc((size_t)n + 2, sizeof(int64_t));
    *out = malloc(((size_t)from->n + 1) * sizeof(int64_t));
    if (!*off || !*out) return -1;
    for (Py_ssize_t i = 0; i < from->n; i++) (*off)[from->p[i] + 2]++;
    for (Py_ssize_t x = 0; x < n; x++) (*off)[x + 2] += (*off)[x + 1];
    for (Py_ssize_t i = 0; i < from->n; i++) (*out)[(*off)[from->p[i] + 1]++] = to->p[i];
    return 0;  /* (off[x + 1] was advanced from the start of x's edges to their end) */
}

/* room for n elements in v (its length unchanged) */
static int lalr_reserve(vec *v, Py_ssize_t n) {
    while (v->cap < n) if (vec_grow(v)) return -1;
    return 0;
}

static PyObject *lalr_i32(const int64_t *p, Py_ssize_t n) {
    PyObject *b = PyByteArray_FromStringAndSize(NULL, n * 4);
    if (!b) return NULL;
    int32_t *o = (int32_t *)PyByteArray_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n; i++) o[i] = (int32_t)p[i];
    return b;
}

/* the symbol of ``name`` in ``sym`` (-1 with an exception set: ValueError for a name it lacks, or one
 * that is the augmented rule's origin, as lalr_tables words it) */
static int64_t lalr_symbol(PyObject *sym, PyObject *name, PyObject *origin, Py_ssize_t root, Py_ssize_t n_sym) {
    PyObject *v = PyDict_GetItemWithError(sym, name);
    int64_t id = -1;
    if (v) {
        id = PyLong_AsLongLong(v);
        if (id == -1 && PyErr_Occurred()) return -1;
        if (id != root && (id < 0 || id >= n_sym)) {
            PyErr_SetString(PyExc_SystemError, "lalr_packed: a symbol out of range");
            return -1;
        }
    }
    if (!v && PyErr_Occurred()) return -1;
    if (!v || id == root) {
        PyErr_Format(PyExc_ValueError, "rule %S uses %S, which is neither a terminal nor defined by a rule", origin, name);
        return -1;
    }
    return id;
}

static PyObject *lalr_packed(PyObject *self, PyObject *args) {
    PyObject *rules, *term_names, *sym, *nonterms, *terms, *start;
    Py_ssize_t root;
    long long multi;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!nOL", &PyList_Type, &rules, &PyList_Type, &term_names, &PyDict_Type, &sym,
                          &PyList_Type, &nonterms, &PyList_Type, &terms, &root, &start, &multi))
        return NULL;
    Py_ssize_t R = PyList_GET_SIZE(rules), NR = R + 1, n_nt = PyList_GET_SIZE(nonterms), n_t = PyList_GET_SIZE(terms);
    Py_ssize_t n_term = n_t + 1, n_cols = PyList_GET_SIZE(term_names) + 1, G = n_nt - 1;
    Py_ssize_t W = (n_term + 63) / 64, NP = 2, S = 0;
    PyObject *result = NULL, *action = NULL, *go = NULL, *accepts = NULL, *keys = NULL, *o_len = NULL;
    PyObject *o_origin = NULL, *o_coff = NULL, *o_codes = NULL;
    int nomem = 0;
    /* grammar */
    int64_t *lhs = NULL, *roff = NULL, *after = NULL, *rule_of = NULL, *rank = NULL, *ord = NULL, *tmp = NULL;
    int64_t *ord_rank = NULL, *cnt = NULL, *occ_off = NULL, *occ = NULL, *bl_off = NULL, *bl = NULL, *tail = NULL;
    int64_t *queue = NULL, *t_col = NULL;
    char *nullable = NULL;
    /* LR(0) states: kernels (kpool[kstart[i] ..]), transitions per state (tr_*[troff[i] ..], the
     * nonterminal ones first: ngo[i] of them), completed rules per state (comp[coff[i] ..]) */
    vec kpool = {0}, kstart = {0}, tr_sym = {0}, tr_to = {0}, troff = {0}, ngo = {0}, comp = {0}, coff = {0};
    vec cl = {0}, grp = {0};
    table tab = {0};
    int64_t *nt_stamp = NULL, *nt_stack = NULL, *s_stamp = NULL, *s_cnt = NULL, *s_at = NULL, *syms = NULL;
    /* lookaheads */
    int64_t *nt_base = NULL, *tp = NULL, *tf = NULL, *rd_off = NULL, *in_off = NULL, *in_to = NULL;
    vec rd = {0}, inc_from = {0}, inc_to = {0}, lb_c = {0}, lb_k = {0};
    uint64_t *bits = NULL, *la = NULL;
    /* packing */
    int64_t *rule_code = NULL, *ent_col = NULL, *ent_shift = NULL, *ent_rs = NULL, *ent_rn = NULL, *t_stamp = NULL;
    int64_t *t_ent = NULL, *l_stamp = NULL, *l_cnt = NULL, *l_at = NULL, *l_order = NULL, *acc = NULL;
    vec pr_t = {0}, pr_r = {0}, red = {0}, r_len = {0}, r_origin = {0}, c_off = {0}, c_codes = {0};

    if (root < 0 || root >= n_nt || n_t < 0) {
        PyErr_SetString(PyExc_ValueError, "lalr_packed: the augmented rule's origin is not a nonterminal");
        return NULL;
    }
    /* -- rules as symbols (the check of lalr_tables, in its order), the augmented rule last -- */
    for (Py_ssize_t r = 0; r < R; r++) {
        PyObject *rule = PyList_GET_ITEM(rules, r);
        if (!PyTuple_Check(rule) || PyTuple_GET_SIZE(rule) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(rule, 1))) {
            PyErr_SetString(PyExc_TypeError, "lalr_packed: a rule is not an (origin, expansion tuple) pair");
            return NULL;
        }
        NP += PyTuple_GET_SIZE(PyTuple_GET_ITEM(rule, 1)) + 1;
    }
    lhs = malloc((size_t)NR * 8); roff = malloc(((size_t)NR + 1) * 8); after = malloc((size_t)NP * 8);
    rule_of = malloc((size_t)NP * 8); rank = malloc(((size_t)n_nt + n_t + 1) * 8); t_col = malloc((size_t)n_term * 8);
    if (!lhs || !roff || !after || !rule_of || !rank || !t_col) { nomem = 1; goto done; }
    {
        Py_ssize_t pos = 0;
        for (Py_ssize_t r = 0; r < NR; r++) {
            PyObject *origin, *body;
            if (r < R) {
                PyObject *rule = PyList_GET_ITEM(rules, r);
                origin = PyTuple_GET_ITEM(rule, 0);
                body = PyTuple_GET_ITEM(rule, 1);
                PyObject *v = PyDict_GetItemWithError(sym, origin);
                int64_t id = v ? PyLong_AsLongLong(v) : -1;
                if (PyErr_Occurred()) goto done;
                if (id < 0 || id >= n_nt || id == root) {
                    PyErr_SetString(PyExc_SystemError, "lalr_packed: a rule's origin is not a nonterminal");
                    goto done;
                }
                lhs[r] = id;
            } else {
                origin = PyList_GET_ITEM(nonterms, root);
                body = NULL;
                lhs[r] = root;
            }
            roff[r] = pos;
            Py_ssize_t len = body ? PyTuple_GET_SIZE(body) : 1;
            if (pos + len + 1 > NP) {  /* (a rule changed since it was counted) */
                PyErr_SetString(PyExc_SystemError, "lalr_packed: the rules changed");
                goto done;
            }
            for (Py_ssize_t d = 0; d < len; d++) {
                int64_t x = lalr_symbol(sym, body ? PyTuple_GET_ITEM(body, d) : start, origin, root, n_nt + n_t);
                if (x < 0) goto done;
                rule_of[pos] = r;
                after[pos++] = x;
            }
            rule_of[pos] = r;
            after[pos++] = -1;
        }
        roff[NR] = pos;
    }
    Py_ssize_t start_nt = after[roff[R]];
    if (start_nt >= n_nt) {
        PyErr_SetString(PyExc_SystemError, "lalr_packed: the start symbol is a terminal");
        goto done;
    }
    /* each terminal's action column (a name listed twice: its last), $END's the last one */
    for (Py_ssize_t t = 0; t < n_term; t++) t_col[t] = t < n_t ? -1 : n_cols - 1;
    for (Py_ssize_t i = 0; i < n_cols - 1; i++) {
        PyObject *v = PyDict_GetItemWithError(sym, PyList_GET_ITEM(term_names, i));
        int64_t id = v ? PyLong_AsLongLong(v) : -1;
        if (PyErr_Occurred()) goto done;
        if (id < n_nt || id >= n_nt + n_t) {
            PyErr_SetString(PyExc_SystemError, "lalr_packed: a terminal name without its symbol");
            goto done;
        }
        t_col[id - n_nt] = i;
    }
    for (Py_ssize_t t = 0; t < n_t; t++)
        if (t_col[t] < 0) {
            PyErr_SetString(PyExc_SystemError, "lalr_packed: a terminal without a column");
            goto done;
        }
    /* every name's rank among all names (both lists are sorted): rules in Python's order */
    {
        Py_ssize_t i = 0, j = 0, k = 0;
        while (i < n_nt || j < n_t) {
            int take_t = i == n_nt;
            if (i < n_nt && j < n_t) {
                take_t = PyObject_RichCompareBool(PyList_GET_ITEM(terms, j), PyList_GET_ITEM(nonterms, i), Py_LT);
                if (take_t < 0) goto done;
            }
            if (take_t) rank[n_nt + j++] = k++;
            else rank[i++] = k++;
        }
    }
    lalr_g g = {n_nt, root, lhs, roff, after, rank};
    ord = malloc((size_t)NR * 8); tmp = malloc((size_t)NR * 8); ord_rank = malloc((size_t)NR * 8);
    if (!ord || !tmp || !ord_rank) { nomem = 1; goto done; }
    for (Py_ssize_t r = 0; r < R; r++) ord[r] = r;
    lalr_sort_rules(&g, ord, tmp, R);
    for (Py_ssize_t k = 0; k < R; k++) ord_rank[ord[k]] = k;

    /* -- nullable nonterminals (a rule's count: its nonterminals not known nullable, +1 with a
     * terminal), rules by origin, the nullable tail of each rule -- */
    nullable = calloc((size_t)n_nt + 1, 1); cnt = malloc((size_t)NR * 8); occ_off = calloc((size_t)n_nt + 2, 8);
    occ = malloc((size_t)NP * 8); bl_off = calloc((size_t)n_nt + 2, 8); bl = malloc((size_t)NR * 8);
    tail = malloc((size_t)NR * 8); queue = malloc(((size_t)n_nt + 1) * 8);
    if (!nullable || !cnt || !occ_off || !occ || !bl_off || !bl || !tail || !queue) { nomem = 1; goto done; }
    for (Py_ssize_t r = 0; r < NR; r++) {
        int64_t c = 0, term = 0;
        for (Py_ssize_t p = roff[r]; after[p] >= 0; p++) {
            if (after[p] < n_nt) { c++; occ_off[after[p] + 2]++; }
            else term = 1;
        }
        cnt[r] = c + term;
        bl_off[lhs[r] + 2]++;
    }
    for (Py_ssize_t a = 0; a < n_nt; a++) { occ_off[a + 2] += occ_off[a + 1]; bl_off[a + 2] += bl_off[a + 1]; }
    for (Py_ssize_t r = 0; r < NR; r++) {
        for (Py_ssize_t p = roff[r]; after[p] >= 0; p++)
            if (after[p] < n_nt) occ[occ_off[after[p] + 1]++] = r;
        bl[bl_off[lhs[r] + 1]++] = r;
    }
    {
        Py_ssize_t qn = 0;
        for (Py_ssize_t r = 0; r < NR; r++)
            if (!cnt[r] && !nullable[lhs[r]]) { nullable[lhs[r]] = 1; queue[qn++] = lhs[r]; }
        while (qn) {
            int64_t a = queue[--qn];
            for (int64_t m = occ_off[a]; m < occ_off[a + 1]; m++) {
                int64_t r = occ[m];
                if (--cnt[r] == 0 && !nullable[lhs[r]]) { nullable[lhs[r]] = 1; queue[qn++] = lhs[r]; }
            }
        }
    }
    for (Py_ssize_t r = 0; r < NR; r++) {
        int64_t d = roff[r + 1] - 1 - roff[r];
        while (d && after[roff[r] + d - 1] < n_nt && nullable[after[roff[r] + d - 1]]) d--;
        tail[r] = d;
    }

    /* -- LR(0) item sets: an item is its position in ``after`` (the dot before that symbol);
     * states numbered as found, each state's successors by ascending symbol -- */
    Py_ssize_t n_sym = n_nt + n_term;
    nt_stamp = calloc((size_t)n_nt + 1, 8); nt_stack = malloc(((size_t)n_nt + 1) * 8);
    s_stamp = calloc((size_t)n_sym, 8); s_cnt = malloc((size_t)n_sym * 8); s_at = malloc((size_t)n_sym * 8);
    syms = malloc((size_t)n_sym * 8);
    if (!nt_stamp || !nt_stack || !s_stamp || !s_cnt || !s_at || !syms || table_init(&tab, 256) ||
        vec_push(&kpool, roff[R]) || vec_push(&kstart, 0) || vec_push(&kstart, 1)) { nomem = 1; goto done; }
    {
        uint64_t h = set_hash(kpool.p, 1);
        if (table_add(&tab, table_slot(&tab, h), h)) { nomem = 1; goto done; }
    }
    for (S = 0; S < kstart.n - 1; S++) {
        int64_t mark = S + 1;
        cl.n = 0;
        for (int64_t k = kstart.p[S]; k < kstart.p[S + 1]; k++)
            if (vec_push(&cl, kpool.p[k])) { nomem = 1; goto done; }
        Py_ssize_t top = 0, nk = cl.n;
        for (Py_ssize_t e = 0; e < nk; e++) {
            int64_t x = after[cl.p[e]];
            if (x >= 0 && x < n_nt && nt_stamp[x] != mark) { nt_stamp[x] = mark; nt_stack[top++] = x; }
        }
        while (top) {  /* the closure: the rules of every nonterminal first after a dot */
            int64_t a = nt_stack[--top];
            for (int64_t m = bl_off[a]; m < bl_off[a + 1]; m++) {
                int64_t it = roff[bl[m]], x = after[it];
                if (vec_push(&cl, it)) { nomem = 1; goto done; }
                if (x >= 0 && x < n_nt && nt_stamp[x] != mark) { nt_stamp[x] = mark; nt_stack[top++] = x; }
            }
        }
        if (vec_push(&troff, tr_sym.n) || vec_push(&coff, comp.n)) { nomem = 1; goto done; }
        Py_ssize_t ns = 0, n_go = 0, moved = 0;
        for (Py_ssize_t e = 0; e < cl.n; e++) {
            int64_t x = after[cl.p[e]];
            if (x < 0) {
                if (vec_push(&comp, rule_of[cl.p[e]])) { nomem = 1; goto done; }
                continue;
            }
            if (s_stamp[x] != mark) { s_stamp[x] = mark; s_cnt[x] = 0; syms[ns++] = x; }
            s_cnt[x]++;
            moved++;
        }
        lalr_sort(comp.p + coff.p[S], comp.n - coff.p[S]);
        lalr_sort(syms, ns);
        for (Py_ssize_t i = 0, pos = 0; i < ns; i++) { s_at[syms[i]] = pos; pos += s_cnt[syms[i]]; }
        if (lalr_reserve(&grp, moved)) { nomem = 1; goto done; }
        for (Py_ssize_t e = 0; e < cl.n; e++) {
            int64_t x = after[cl.p[e]];
            if (x >= 0) grp.p[s_at[x]++] = cl.p[e] + 1;
        }
        for (Py_ssize_t i = 0; i < ns; i++) {  /* (s_at[x] now ends x's kernel) */
            int64_t x = syms[i], *items = grp.p + s_at[x] - s_cnt[x], n = s_cnt[x], target = -1;
            lalr_sort(items, n);
            uint64_t h = set_hash(items, n);
            Py_ssize_t slot = table_slot(&tab, h);
            for (;;) {
                int64_t id = tab.slots[slot];
                if (id < 0) break;
                if ((uint64_t)tab.hashes.p[id] == h && kstart.p[id + 1] - kstart.p[id] == n &&
                    memcmp(kpool.p + kstart.p[id], items, (size_t)n * 8) == 0) { target = id; break; }
                slot = (slot + 1) & (tab.cap - 1);
            }
            if (target < 0) {
                target = kstart.n - 1;
                if (target >= INT32_MAX - 1) {
                    PyErr_SetString(PyExc_OverflowError, "lalr_packed: too many parser states");
                    goto done;
                }
                for (int64_t k = 0; k < n; k++) if (vec_push(&kpool, items[k])) { nomem = 1; goto done; }
                if (vec_push(&kstart, kpool.n) || table_add(&tab, slot, h)) { nomem = 1; goto done; }
            }
            if (vec_push(&tr_sym, x) || vec_push(&tr_to, target)) { nomem = 1; goto done; }
            n_go += x < n_nt;
        }
        if (vec_push(&ngo, n_go)) { nomem = 1; goto done; }
    }
    if (vec_push(&troff, tr_sym.n) || vec_push(&coff, comp.n)) { nomem = 1; goto done; }

    /* -- LALR(1) lookaheads: per nonterminal transition k (state tp[k], flat index tf[k]) -- */
    nt_base = malloc(((size_t)S + 1) * 8);
    if (!nt_base) { nomem = 1; goto done; }
    nt_base[0] = 0;
    for (Py_ssize_t p = 0; p < S; p++) nt_base[p + 1] = nt_base[p] + ngo.p[p];
    Py_ssize_t ntr = nt_base[S];
    tp = malloc(((size_t)ntr + 1) * 8); tf = malloc(((size_t)ntr + 1) * 8); rd_off = malloc(((size_t)ntr + 1) * 8);
    bits = calloc((size_t)(ntr ? ntr : 1), (size_t)W * 8);
    if (!tp || !tf || !rd_off || !bits) { nomem = 1; goto done; }
    for (Py_ssize_t p = 0, k = 0; p < S; p++)
        for (int64_t j = 0; j < ngo.p[p]; j++, k++) { tp[k] = p; tf[k] = troff.p[p] + j; }
    rd_off[0] = 0;
    for (Py_ssize_t k = 0; k < ntr; k++) {  /* direct reads, and reads through nullable nonterminals */
        int64_t q = tr_to.p[tf[k]];
        uint64_t *b = bits + k * W;
        for (int64_t f = troff.p[q] + ngo.p[q]; f < troff.p[q + 1]; f++) {
            int64_t t = tr_sym.p[f] - n_nt;
            b[t / 64] |= (uint64_t)1 << (t % 64);
        }
        if (tp[k] == 0 && tr_sym.p[tf[k]] == start_nt) b[n_t / 64] |= (uint64_t)1 << (n_t % 64);
        for (int64_t j = 0; j < ngo.p[q]; j++)
            if (nullable[tr_sym.p[troff.p[q] + j]] && vec_push(&rd, nt_base[q] + j)) { nomem = 1; goto done; }
        rd_off[k + 1] = rd.n;
    }
    if (lalr_digraph(ntr, rd_off, rd.p, bits, W)) { nomem = 1; goto done; }
    for (Py_ssize_t k = 0; k < ntr; k++) {  /* includes and lookback, walking each rule of the nonterminal */
        int64_t b = tr_sym.p[tf[k]];
        for (int64_t m = bl_off[b]; m < bl_off[b + 1]; m++) {
            int64_t r = bl[m], q = tp[k];
            for (int64_t d = 0, p = roff[r]; after[p] >= 0; d++, p++) {
                int64_t x = after[p];
                Py_ssize_t f = lalr_find(tr_sym.p, troff.p[q], troff.p[q + 1], x);
                if (f == troff.p[q + 1] || tr_sym.p[f] != x) {
                    PyErr_SetString(PyExc_SystemError, "lalr_packed: a rule's path is missing a transition");
                    goto done;
                }
                if (x < n_nt && d + 1 >= tail[r] &&
                    (vec_push(&inc_from, nt_base[q] + f - troff.p[q]) || vec_push(&inc_to, k))) { nomem = 1; goto done; }
                q = tr_to.p[f];
            }
            Py_ssize_t c = lalr_find(comp.p, coff.p[q], coff.p[q + 1], r);
            if (c == coff.p[q + 1] || comp.p[c] != r) {
                PyErr_SetString(PyExc_SystemError, "lalr_packed: a rule's path does not end where it is completed");
                goto done;
            }
            if (vec_push(&lb_c, c) || vec_push(&lb_k, k)) { nomem = 1; goto done; }
        }
    }
    if (lalr_csr(ntr, &inc_from, &inc_to, &in_off, &in_to) || lalr_digraph(ntr, in_off, in_to, bits, W)) {
        nomem = 1;
        goto done;
    }
    la = calloc((size_t)(comp.n ? comp.n : 1), (size_t)W * 8);
    if (!la) { nomem = 1; goto done; }
    for (Py_ssize_t i = 0; i < lb_c.n; i++) lalr_or(la + lb_c.p[i] * W, bits + lb_k.p[i] * W, W);

    /* -- the packed tables (pushdown._packed): per state its shifts' columns by ascending symbol,
     * then the lookaheads of its reductions by first appearance (rules ascending, then terminals);
     * the rules reduced on one lookahead in Python's order of rules; rule codes and conflicts
     * numbered as met -- */
    if (S > PY_SSIZE_T_MAX / 4 / (n_cols > G ? n_cols : (G ? G : 1))) { nomem = 1; goto done; }
    action = PyByteArray_FromStringAndSize(NULL, S * n_cols * 4);
    go = PyByteArray_FromStringAndSize(NULL, S * G * 4);
    accepts = PyList_New(S);
    keys = PyList_New(0);
    if (!action || !go || !accepts || !keys) goto done;
    int32_t *act = (int32_t *)PyByteArray_AS_STRING(action), *got = (int32_t *)PyByteArray_AS_STRING(go);
    memset(act, 0, (size_t)(S * n_cols) * 4);
    memset(got, 0xff, (size_t)(S * G) * 4);
    rule_code = malloc((size_t)NR * 8); ent_col = malloc((size_t)n_term * 8); ent_shift = malloc((size_t)n_term * 8);
    ent_rs = malloc((size_t)n_term * 8); ent_rn = malloc((size_t)n_term * 8); t_stamp = calloc((size_t)n_term, 8);
    t_ent = malloc((size_t)n_term * 8); l_stamp = calloc((size_t)n_term, 8); l_cnt = malloc((size_t)n_term * 8);
    l_at = malloc((size_t)n_term * 8); l_order = malloc((size_t)n_term * 8); acc = malloc((size_t)n_term * 8);
    if (!rule_code || !ent_col || !ent_shift || !ent_rs || !ent_rn || !t_stamp || !t_ent || !l_stamp || !l_cnt ||
        !l_at || !l_order || !acc || vec_push(&c_off, 0)) { nomem = 1; goto done; }
    for (Py_ssize_t r = 0; r < NR; r++) rule_code[r] = -1;
    for (Py_ssize_t q = 0; q < S; q++) {
        int64_t mark = q + 1;
        Py_ssize_t n_ent = 0, nlo = 0;
        for (int64_t f = troff.p[q]; f < troff.p[q] + ngo.p[q]; f++) {
            int64_t x = tr_sym.p[f];
            got[q * G + x - (x > root)] = (int32_t)tr_to.p[f];
        }
        for (int64_t f = troff.p[q] + ngo.p[q]; f < troff.p[q + 1]; f++) {
            int64_t t = tr_sym.p[f] - n_nt;
            ent_col[n_ent] = t_col[t]; ent_shift[n_ent] = tr_to.p[f] + 1; ent_rn[n_ent] = 0;
            t_stamp[t] = mark;
            t_ent[t] = n_ent++;
        }
        pr_t.n = pr_r.n = 0;
        for (int64_t c = coff.p[q]; c < coff.p[q + 1]; c++) {
            int64_t r = comp.p[c];
            if (r == R) continue;  /* (the augmented rule) */
            for (Py_ssize_t w = 0; w < W; w++) {
                for (uint64_t word = la[c * W + w]; word; word &= word - 1) {
                    int64_t t = w * 64 + __builtin_ctzll(word);
                    if (vec_push(&pr_t, t) || vec_push(&pr_r, r)) { nomem = 1; goto done; }
                    if (l_stamp[t] != mark) { l_stamp[t] = mark; l_cnt[t] = 0; l_order[nlo++] = t; }
                    l_cnt[t]++;
                }
            }
        }
        for (Py_ssize_t i = 0, pos = 0; i < nlo; i++) { l_at[l_order[i]] = pos; pos += l_cnt[l_order[i]]; }
        if (lalr_reserve(&red, pr_t.n)) { nomem = 1; goto done; }
        for (Py_ssize_t i = 0; i < pr_t.n; i++) red.p[l_at[pr_t.p[i]]++] = pr_r.p[i];
        for (Py_ssize_t i = 0; i < nlo; i++) {
            int64_t t = l_order[i], n = l_cnt[t], *rs = red.p + l_at[t] - n;
            for (int64_t a = 1; a < n; a++) {  /* (insertion sort: a few rules) */
                int64_t r = rs[a], b = a;
                for (; b > 0 && ord_rank[rs[b - 1]] > ord_rank[r]; b--) rs[b] = rs[b - 1];
                rs[b] = r;
            }
            for (int64_t a = 0; a < n; a++) {
                int64_t r = rs[a];
                if (rule_code[r] < 0) {
                    PyObject *key = PyList_GET_ITEM(rules, r);
                    rule_code[r] = r_len.n;
                    if (vec_push(&r_len, roff[r + 1] - roff[r] - 1) || vec_push(&r_origin, lhs[r] - (lhs[r] > root))) {
                        nomem = 1;
                        goto done;
                    }
                    if (PyList_Append(keys, key)) goto done;
                }
                rs[a] = -(rule_code[r] + 1);
            }
            int64_t e;
            if (t_stamp[t] == mark) {
                e = t_ent[t];
            } else {
                e = n_ent++;
                ent_col[e] = t_col[t]; ent_shift[e] = 0;
            }
            ent_rs[e] = rs - red.p;
            ent_rn[e] = n;
        }
        Py_ssize_t n_acc = 0;
        for (Py_ssize_t e = 0; e < n_ent; e++) {
            int64_t n = (ent_shift[e] != 0) + ent_rn[e], code;
            if (n == 1) {
                code = ent_shift[e] ? ent_shift[e] : red.p[ent_rs[e]];
            } else {
                code = multi + c_off.n - 1;
                if (code > INT32_MAX) {
                    PyErr_SetString(PyExc_OverflowError, "lalr_packed: too many conflicts");
                    goto done;
                }
                if (ent_shift[e] && vec_push(&c_codes, ent_shift[e])) { nomem = 1; goto done; }
                for (int64_t a = 0; a < ent_rn[e]; a++)
                    if (vec_push(&c_codes, red.p[ent_rs[e] + a])) { nomem = 1; goto done; }
                if (vec_push(&c_off, c_codes.n)) { nomem = 1; goto done; }
            }
            act[q * n_cols + ent_col[e]] = (int32_t)code;
            if (ent_col[e] != n_cols - 1) acc[n_acc++] = ent_col[e];
        }
        lalr_sort(acc, n_acc);
        PyObject *own = PyList_New(n_acc);
        if (!own) goto done;
        PyList_SET_ITEM(accepts, q, own);
        for (Py_ssize_t i = 0; i < n_acc; i++) {
            PyObject *v = PyLong_FromLongLong(acc[i]);
            if (!v) goto done;
            PyList_SET_ITEM(own, i, v);
        }
    }
    {
        Py_ssize_t f = lalr_find(tr_sym.p, troff.p[0], troff.p[0] + ngo.p[0], start_nt);
        if (f == troff.p[0] + ngo.p[0] || tr_sym.p[f] != start_nt) {
            PyErr_SetString(PyExc_SystemError, "lalr_packed: no transition on the start symbol");
            goto done;
        }
        o_len = lalr_i32(r_len.p, r_len.n);
        o_origin = lalr_i32(r_origin.p, r_origin.n);
        o_coff = lalr_i32(c_off.p, c_off.n);
        o_codes = lalr_i32(c_codes.p, c_codes.n);
        if (o_len && o_origin && o_coff && o_codes)
            result = Py_BuildValue("(OnOOOOOLOO)", action, S, go, o_len, o_origin, o_coff, o_codes,
                                   (long long)tr_to.p[f], accepts, keys);
    }
done:
    if (nomem) PyErr_NoMemory();
    Py_XDECREF(action); Py_XDECREF(go); Py_XDECREF(accepts); Py_XDECREF(keys);
    Py_XDECREF(o_len); Py_XDECREF(o_origin); Py_XDECREF(o_coff); Py_XDECREF(o_codes);
    free(lhs); free(roff); free(after); free(rule_of); free(rank); free(ord); free(tmp); free(ord_rank);
    free(cnt); free(occ_off); free(occ); free(bl_off); free(bl); free(tail); free(queue); free(t_col); free(nullable);
    free(kpool.p); free(kstart.p); free(tr_sym.p); free(tr_to.p); free(troff.p); free(ngo.p); free(comp.p);
    free(coff.p); free(cl.p); free(grp.p); table_free(&tab);
    free(nt_stamp); free(nt_stack); free(s_stamp); free(s_cnt); free(s_at); free(syms);
    free(nt_base); free(tp); free(tf); free(rd_off); free(in_off); free(in_to);
    free(rd.p); free(inc_from.p); free(inc_to.p); free(lb_c.p); free(lb_k.p); free(bits); free(la);
    free(rule_code); free(ent_col); free(ent_shift); free(ent_rs); free(ent_rn); free(t_stamp); free(t_ent);
    free(l_stamp); free(l_cnt); free(l_at); free(l_order); free(acc);
    free(pr_t.p); free(pr_r.p); free(red.p); free(r_len.p); free(r_origin.p); free(c_off.p); free(c_codes.p);
    return result;
}

/* ---- Glushkov positions of a parse tree (glushkov._Positions.visit_sre, in C) -------------------
 *
 * glushkov_positions(tree, flags, max_positions, ops, atom, fail, combine)
 *   tree     re._parser SubPattern (or a list of (op, arg) items)
 *   ops      (LITERAL, NOT_LITERAL, ANY, IN, BRANCH, SUBPATTERN, MAX_REPEAT, MIN_REPEAT, MAXREPEAT):
 *            the opcode objects, compared by identity as the reference does
 *   atom     atom(item, flags) -> code-point ranges (a tuple; empty: the item matches nothing), called
 *            once per distinct atom (IN items keyed by the identity of their argument)
 *   fail     fail(kind, arg) raises the reference's exception: 0 too many positions, 1 bad repeat,
 *            2 a construct the builder refuses (arg: the item)
 *   combine  combine(flags, add, remove) -> the flags of a scoped group (may raise)
 * Positions are numbered as the reference numbers them (same visiting order, repetition copies
 * cloned from the first one), so the automata built from them are identical.
 * Returns (cls bytes int32[n], classes list of ranges, fol_start bytes int64[n + 2], fol bytes int64,
 * last bytes int64, nullable) where row 0 of the CSR is `first` and row 1 + p position p's follow
 * set (sorted, distinct), classes[cls[p]] the ranges of position p (distinct ranges numbered in order
 * of first use); or None for a tree nested deeper than the builder goes (the caller uses the
 * reference, which then decides). */

#define GL_MAX_DEPTH 100

typedef struct {
    int32_t *p;
    Py_ssize_t n, cap;
} gl_vec;

static int gl_reserve(gl_vec *v, Py_ssize_t extra) {
    if (v->n + extra <= v->cap) return 0;
    Py_ssize_t cap = v->cap ? v->cap : 4;
    while (cap < v->n + extra) cap *= 2;
    int32_t *p = realloc(v->p, (size_t)cap * sizeof(int32_t));
    if (!p) { PyErr_NoMemory(); return -1; }
    v->p = p;
    v->cap = cap;
    return 0;
}

static int gl_extend(gl_vec *v, const int32_t *x, Py_ssize_t n, int32_t shift) {
    if (gl_reserve(v, n)) return -1;
    for (Py_ssize_t i = 0; i < n; i++) v->p[v->n + i] = x[i] + shift;
    v->n += n;
    return 0;
}

typedef struct {
    gl_vec first, last;
    int nullable;
} gl_res;

static void gl_res_free(gl_res *r) {
    free(r->first.p); free(r->last.p);
    memset(r, 0, sizeof *r);
}

typedef struct {
    PyObject **ops;  /* borrowed, 9 */
    PyObject *atom, *fail, *combine;
    PyObject *cache;     /* (op, arg or id(arg), flags) -> class index or -1 */
    PyObject *class_of;  /* ranges -> class index */
    PyObject *classes;   /* list of ranges */
    Py_ssize_t max_pos, n_pos, cap;
    int32_t *cls;
    gl_vec *fol;
    Py_ssize_t *clean;  /* fol[p].p[:clean[p]] is sorted and distinct */
    int depth;
} gl_ctx;

enum { GL_OP_LITERAL, GL_OP_NOT_LITERAL, GL_OP_ANY, GL_OP_IN, GL_OP_BRANCH, GL_OP_SUBPATTERN, GL_OP_MAX_REPEAT,
       GL_OP_MIN_REPEAT, GL_MAXREPEAT, GL_N_OPS };

/* The reference's exception, raised by the Python callback; -1. */
static int gl_fail(gl_ctx *c, int kind, PyObject *arg) {
    PyObject *r = PyObject_CallFunction(c->fail, "iO", kind, arg ? arg : Py_None);
    if (r) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_RuntimeError, "glushkov_positions: fail() returned");
    }
    return -1;
}

static int gl_cmp32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static Py_ssize_t gl_sort_unique(int32_t *p, Py_ssize_t n) {
    if (n < 2) return n;
    qsort(p, (size_t)n, sizeof(int32_t), gl_cmp32);
    Py_ssize_t u = 1;
    for (Py_ssize_t i = 1; i < n; i++) if (p[i] != p[u - 1]) p[u++] = p[i];
    return u;
}

/* follow[p] |= f; duplicates (nested loops add a set again) are dropped when they pile up. */
static int gl_union(gl_ctx *c, int32_t p, const gl_vec *f) {
    gl_vec *v = &c->fol[p];
    if (!f->n) return 0;
    if (gl_extend(v, f->p, f->n, 0)) return -1;
    if (v->n > 2 * c->clean[p] + 64) v->n = c->clean[p] = gl_sort_unique(v->p, v->n);
    return 0;
}

static int gl_grow(gl_ctx *c, Py_ssize_t extra) {
    if (c->n_pos + extra <= c->cap) return 0;
    Py_ssize_t cap = c->cap ? c->cap : 64;
    while (cap < c->n_pos + extra) cap *= 2;
    int32_t *cls = realloc(c->cls, (size_t)cap * sizeof *cls);
    if (cls) c->cls = cls;
    gl_vec *fol = cls ? realloc(c->fol, (size_t)cap * sizeof *fol) : NULL;
    if (fol) c->fol = fol;
    Py_ssize_t *clean = fol ? realloc(c->clean, (size_t)cap * sizeof *clean) : NULL;
    if (!clean) { PyErr_NoMemory(); return -1; }
    c->clean = clean;
    c->cap = cap;
    return 0;
}

/* A fresh position of class k (its follow set empty); -1 with an exception. */
static int32_t gl_new(gl_ctx *c, int32_t k) {
    if (c->n_pos >= c->max_pos) return gl_fail(c, 0, NULL);
    if (gl_grow(c, 1)) return -1;
    Py_ssize_t p = c->n_pos++;
    c->cls[p] = k;
    memset(&c->fol[p], 0, sizeof(gl_vec));
    c->clean[p] = 0;
    return (int32_t)p;
}

/* a += part (a concatenation's step), freeing part */
static int gl_cat(gl_ctx *c, gl_res *a, gl_res *part) {
    int rc = 0;
    for (Py_ssize_t i = 0; i < a->last.n && !rc; i++) rc = gl_union(c, a->last.p[i], &part->first);
    if (!rc && a->nullable) rc = gl_extend(&a->first, part->first.p, part->first.n, 0);
    if (!rc) {
        if (part->nullable) {
            rc = gl_extend(&a->last, part->last.p, part->last.n, 0);
        } else {
            gl_vec t = a->last;
            a->last = part->last;
            part->last = t;
        }
        a->nullable = a->nullable && part->nullable;
    }
    gl_res_free(part);
    return rc;
}

static int gl_seq(gl_ctx *c, PyObject *items, long long flags, gl_res *out);

static int gl_ll(PyObject *o, long long *x) {
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "glushkov_positions: expected an int in the tree");
        return -1;
    }
    *x = PyLong_AsLongLong(o);
    return (*x == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int gl_atom(gl_ctx *c, PyObject *item, PyObject *op, PyObject *av, long long flags, gl_res *out) {
    PyObject *key = c->ops[GL_OP_IN] == op ? Py_BuildValue("(ONL)", op, PyLong_FromVoidPtr(av), flags)
                                            : Py_BuildValue("(OOL)", op, av, flags);
    if (!key) return -1;
    PyObject *got = PyDict_GetItemWithError(c->cache, key);  /* borrowed */
    long k;
    if (got) {
        k = PyLong_AsLong(got);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    } else {
        PyObject *ranges = PyObject_CallFunction(c->atom, "OL", item, flags);
        if (ranges && !PyTuple_Check(ranges)) {
            Py_DECREF(ranges);
            ranges = NULL;
            PyErr_SetString(PyExc_TypeError, "glushkov_positions: atom() must return a tuple of ranges");
        }
        int t = ranges ? PyTuple_GET_SIZE(ranges) > 0 : -1;
        if (t < 0) { Py_XDECREF(ranges); Py_DECREF(key); return -1; }
        k = -1;
        if (t) {
            PyObject *ko = PyDict_GetItemWithError(c->class_of, ranges);
            if (ko) {
                k = PyLong_AsLong(ko);
            } else if (!PyErr_Occurred()) {
                k = (long)PyList_GET_SIZE(c->classes);
                ko = PyLong_FromLong(k);
                if (!ko || PyDict_SetItem(c->class_of, ranges, ko) || PyList_Append(c->classes, ranges)) k = -2;
                Py_XDECREF(ko);
            } else {
                k = -2;
            }
        }
        Py_DECREF(ranges);
        PyObject *ko = k >= -1 ? PyLong_FromLong(k) : NULL;
        if (!ko || PyDict_SetItem(c->cache, key, ko)) k = -2;
        Py_XDECREF(ko);
        if (k == -2) { Py_DECREF(key); return -1; }
    }
    Py_DECREF(key);
    out->nullable = 0;
    if (k < 0) return 0;  /* matches nothing */
    int32_t p = gl_new(c, (int32_t)k);
    if (p < 0) return -1;
    if (gl_extend(&out->first, &p, 1, 0) || gl_extend(&out->last, &p, 1, 0)) return -1;
    return 0;
}

/* The repetition of `sub` lo to hi (-1: unbounded) times (_Positions._repeat_of with _copies). */
static int gl_repeat(gl_ctx *c, PyObject *sub, long long flags, long long lo, long long hi, gl_res *out) {
    if (hi >= 0 && hi < lo) return gl_fail(c, 1, NULL);
    if (lo < 0 || lo > ((long long)1 << 40) || hi > ((long long)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "glushkov_positions: repeat count out of range");
        return -1;
    }
    long long n_copies = lo + (hi < 0 ? 1 : hi - lo);
    int rc = 0, have = 0;
    Py_ssize_t t0 = 0, t1 = 0;
    gl_vec snap = {0};       /* the template's follow sets as they were when it was built */
    Py_ssize_t *snap_at = NULL;
    gl_res tpl = {0}, part = {0}, *chain = NULL;
    Py_ssize_t n_chain = 0;
    out->nullable = 1;

/* one copy of sub into `R` */
#define GL_MAKE(R)                                                                                           \
    do {                                                                                                     \
        memset(&(R), 0, sizeof(R));                                                                          \
        if (n_copies <= 1) {                                                                                 \
            rc = gl_seq(c, sub, flags, &(R));                                                                \
        } else if (!have) {                                                                                  \
            t0 = c->n_pos;                                                                                   \
            rc = gl_seq(c, sub, flags, &(R));                                                                \
            if (!rc) {                                                                                       \
                t1 = c->n_pos;                                                                               \
                if (t1 > t0 && n_copies - 1 > (long long)(c->max_pos - t1) / (long long)(t1 - t0))           \
                    rc = gl_fail(c, 0, NULL);                                                                \
            }                                                                                                \
            if (!rc) {                                                                                       \
                have = 1;                                                                                    \
                snap_at = malloc(((size_t)(t1 - t0) + 1) * sizeof *snap_at);                                 \
                if (!snap_at) { PyErr_NoMemory(); rc = -1; }                                                 \
                for (Py_ssize_t q = t0; q < t1 && !rc; q++) {                                                \
                    snap_at[q - t0] = snap.n;                                                                \
                    rc = gl_extend(&snap, c->fol[q].p, c->fol[q].n, 0);                                      \
                }                                                                                            \
                if (!rc) {                                                                                   \
                    snap_at[t1 - t0] = snap.n;                                                               \
                    tpl.nullable = (R).nullable;                                                             \
                    rc = gl_extend(&tpl.first, (R).first.p, (R).first.n, 0) ||                               \
                         gl_extend(&tpl.last, (R).last.p, (R).last.n, 0) ? -1 : 0;                           \
                }                                                                                            \
            }                                                                                                \
        } else {                                                                                             \
            Py_ssize_t n0 = c->n_pos;                                                                        \
            int32_t shift = (int32_t)(n0 - t0);                                                              \
            if ((long long)n0 + (t1 - t0) > (long long)c->max_pos) rc = gl_fail(c, 0, NULL);                 \
            if (!rc) rc = gl_grow(c, t1 - t0);                                                               \
            for (Py_ssize_t q = t0; q < t1 && !rc; q++) {                                                    \
                Py_ssize_t p = c->n_pos++;                                                                   \
                c->cls[p] = c->cls[q];                                                                       \
                memset(&c->fol[p], 0, sizeof(gl_vec));                                                       \
                c->clean[p] = 0;                                                                             \
                rc = gl_extend(&c->fol[p], snap.p + snap_at[q - t0], snap_at[q - t0 + 1] - snap_at[q - t0], shift); \
            }                                                                                                \
            (R).nullable = tpl.nullable;                                                                     \
            if (!rc) rc = gl_extend(&(R).first, tpl.first.p, tpl.first.n, shift) ||                          \
                          gl_extend(&(R).last, tpl.last.p, tpl.last.n, shift) ? -1 : 0;                      \
        }                                                                                                    \
    } while (0)

    /* A sub-pattern without positions gives the same empty copy every time, and concatenating it
     * again changes nothing: one copy stands for all (a huge count must not loop). */
#define GL_EMPTY_TEMPLATE (have && t1 == t0)
    for (long long k = 0; k < lo && !rc; k++) {
        if (k >= 2 && GL_EMPTY_TEMPLATE) break;
        GL_MAKE(part);
        if (!rc) rc = gl_cat(c, out, &part);
    }
    if (!rc && hi < 0) {  /* star */
        GL_MAKE(part);
        for (Py_ssize_t i = 0; i < part.last.n && !rc; i++) rc = gl_union(c, part.last.p[i], &part.first);
        part.nullable = 1;
        if (!rc) rc = gl_cat(c, out, &part);
    } else if (!rc && hi > lo) {  /* optional chain */
        long long m = hi - lo;
        chain = calloc((size_t)(m < 2 ? m : 2) , sizeof *chain);
        if (!chain) { PyErr_NoMemory(); rc = -1; }
        Py_ssize_t cap = m < 2 ? (Py_ssize_t)m : 2;
        for (long long k = 0; k < m && !rc; k++) {
            if (GL_EMPTY_TEMPLATE) break;  /* (every copy empty: the chain is empty and nullable) */
            if (n_chain == cap) {
                gl_res *nc = realloc(chain, (size_t)cap * 2 * sizeof *chain);
                if (!nc) { PyErr_NoMemory(); rc = -1; break; }
                chain = nc;
                cap *= 2;
            }
            n_chain++;  /* (counted before it is made: freed below whatever happens) */
            GL_MAKE(chain[n_chain - 1]);
        }
        if (!rc) {
            gl_res acc = {0};
            if (GL_EMPTY_TEMPLATE) {
                acc.nullable = 1;
            } else {
                gl_res *z = &chain[n_chain - 1];
                rc = gl_extend(&acc.first, z->first.p, z->first.n, 0) || gl_extend(&acc.last, z->last.p, z->last.n, 0) ? -1 : 0;
                acc.nullable = 1;
                for (Py_ssize_t i = n_chain - 2; i >= 0 && !rc; i--) {
                    gl_res *y = &chain[i];
                    for (Py_ssize_t j = 0; j < y->last.n && !rc; j++) rc = gl_union(c, y->last.p[j], &acc.first);
                    if (rc) break;
                    if (y->nullable) {
                        rc = gl_extend(&acc.first, y->first.p, y->first.n, 0);
                    } else {
                        gl_vec t = acc.first;
                        acc.first = y->first;
                        y->first = t;
                    }
                    if (!rc) rc = gl_extend(&acc.last, y->last.p, y->last.n, 0);
                }
            }
            if (!rc) rc = gl_cat(c, out, &acc);
            else gl_res_free(&acc);
        }
    }
#undef GL_MAKE
#undef GL_EMPTY_TEMPLATE
    if (chain) {
        for (Py_ssize_t i = 0; i < n_chain; i++) gl_res_free(&chain[i]);
        free(chain);
    }
    gl_res_free(&part); gl_res_free(&tpl);
    free(snap.p); free(snap_at);
    return rc;
}

static int gl_item(gl_ctx *c, PyObject *item, long long flags, gl_res *out) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_TypeError, "glushkov_positions: a tree item is not an (op, arg) pair");
        return -1;
    }
    PyObject *op = PyTuple_GET_ITEM(item, 0), *av = PyTuple_GET_ITEM(item, 1);
    PyObject **ops = c->ops;
    if (op == ops[GL_OP_LITERAL] || op == ops[GL_OP_NOT_LITERAL] || op == ops[GL_OP_ANY] || op == ops[GL_OP_IN])
        return gl_atom(c, item, op, av, flags, out);
    if (op == ops[GL_OP_BRANCH]) {
        PyObject *alts = PyTuple_Check(av) && PyTuple_GET_SIZE(av) == 2 ? PyTuple_GET_ITEM(av, 1) : NULL;
        if (!alts || !PyList_Check(alts)) {
            PyErr_SetString(PyExc_TypeError, "glushkov_positions: BRANCH without a list of alternatives");
            return -1;
        }
        out->nullable = 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(alts); i++) {
            gl_res r = {0};
            PyObject *alt = PyList_GET_ITEM(alts, i);
            Py_INCREF(alt);
            int rc = gl_seq(c, alt, flags, &r);
            Py_DECREF(alt);
            if (!rc) rc = gl_extend(&out->first, r.first.p, r.first.n, 0) || gl_extend(&out->last, r.last.p, r.last.n, 0) ? -1 : 0;
            out->nullable = out->nullable || r.nullable;
            gl_res_free(&r);
            if (rc) return rc;
        }
        return 0;
    }
    if (op == ops[GL_OP_SUBPATTERN]) {
        if (!PyTuple_Check(av) || PyTuple_GET_SIZE(av) != 4) {
            PyErr_SetString(PyExc_TypeError, "glushkov_positions: SUBPATTERN argument is not a 4-tuple");
            return -1;
        }
        long long add, remove, f = flags;
        if (gl_ll(PyTuple_GET_ITEM(av, 1), &add) || gl_ll(PyTuple_GET_ITEM(av, 2), &remove)) return -1;
        if (add || remove) {
            PyObject *r = PyObject_CallFunction(c->combine, "LOO", flags, PyTuple_GET_ITEM(av, 1), PyTuple_GET_ITEM(av, 2));
            if (!r) return -1;
            int bad = gl_ll(r, &f);
            Py_DECREF(r);
            if (bad) return -1;
        }
        return gl_seq(c, PyTuple_GET_ITEM(av, 3), f, out);
    }
    if (op == ops[GL_OP_MAX_REPEAT] || op == ops[GL_OP_MIN_REPEAT]) {
        if (!PyTuple_Check(av) || PyTuple_GET_SIZE(av) != 3) {
            PyErr_SetString(PyExc_TypeError, "glushkov_positions: repeat argument is not a 3-tuple");
            return -1;
        }
        long long lo, hi = -1;
        PyObject *h = PyTuple_GET_ITEM(av, 1);
        if (gl_ll(PyTuple_GET_ITEM(av, 0), &lo) || (h != ops[GL_MAXREPEAT] && gl_ll(h, &hi))) return -1;
        if (h != ops[GL_MAXREPEAT] && hi < 0) {
            PyErr_SetString(PyExc_ValueError, "glushkov_positions: negative repeat count");
            return -1;
        }
        return gl_repeat(c, PyTuple_GET_ITEM(av, 2), flags, lo, hi, out);
    }
    return gl_fail(c, 2, item);
}

static PyObject *gl_data_name;

static int gl_seq(gl_ctx *c, PyObject *items, long long flags, gl_res *out) {
    if (c->depth >= GL_MAX_DEPTH) return -2;
    PyObject *seq;
    if (PyList_Check(items) || PyTuple_Check(items)) {
        Py_INCREF(items);
        seq = items;
    } else {
        seq = PyObject_GetAttr(items, gl_data_name);
        if (!seq) return -1;
        if (!PyList_Check(seq)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "glushkov_positions: a sub-pattern's data is not a list");
            return -1;
        }
    }
    c->depth++;
    int rc = 0;
    out->nullable = 1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && !rc; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(it);  /* (the list may change under a callback) */
        gl_res r = {0};
        rc = gl_item(c, it, flags, &r);
        Py_DECREF(it);
        if (!rc) rc = gl_cat(c, out, &r);
        else gl_res_free(&r);
    }
    c->depth--;
    Py_DECREF(seq);
    return rc;
}

static PyObject *glushkov_positions(PyObject *self, PyObject *args) {
    PyObject *tree, *ops_t, *atom, *fail, *combine;
    long long flags;
    Py_ssize_t max_pos;
    if (!PyArg_ParseTuple(args, "OLnO!OOO", &tree, &flags, &max_pos, &PyTuple_Type, &ops_t, &atom, &fail, &combine))
        return NULL;
    if (PyTuple_GET_SIZE(ops_t) != GL_N_OPS) {
        PyErr_SetString(PyExc_ValueError, "glushkov_positions: ops must hold 9 opcodes");
        return NULL;
    }
    if (max_pos < 0 || max_pos > INT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "glushkov_positions: max_positions out of range");
        return NULL;
    }
    if (!PyCallable_Check(atom) || !PyCallable_Check(fail) || !PyCallable_Check(combine)) {
        PyErr_SetString(PyExc_TypeError, "glushkov_positions: atom, fail and combine must be callable");
        return NULL;
    }
    if (!gl_data_name && !(gl_data_name = PyUnicode_InternFromString("data"))) return NULL;
    PyObject *ops[GL_N_OPS];
    for (int i = 0; i < GL_N_OPS; i++) ops[i] = PyTuple_GET_ITEM(ops_t, i);
    gl_ctx c = {0};
    c.ops = ops;
    c.atom = atom; c.fail = fail; c.combine = combine;
    c.max_pos = max_pos;
    PyObject *result = NULL, *b_cls = NULL, *b_fs = NULL, *b_fol = NULL, *b_last = NULL;
    gl_res r = {0};
    int rc = -1;
    if (!(c.cache = PyDict_New()) || !(c.class_of = PyDict_New()) || !(c.classes = PyList_New(0))) goto done;
    rc = gl_seq(&c, tree, flags, &r);
    if (rc == -2) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    if (rc) goto done;
    {
        Py_ssize_t n = c.n_pos, total = 0;
        r.first.n = gl_sort_unique(r.first.p, r.first.n);
        total = r.first.n;
        for (Py_ssize_t p = 0; p < n; p++) total += c.fol[p].n = gl_sort_unique(c.fol[p].p, c.fol[p].n);
        b_cls = PyBytes_FromStringAndSize(NULL, n * 4);
        b_fs = PyBytes_FromStringAndSize(NULL, (n + 2) * 8);
        b_fol = PyBytes_FromStringAndSize(NULL, total * 8);
        b_last = PyBytes_FromStringAndSize(NULL, r.last.n * 8);
        if (!b_cls || !b_fs || !b_fol || !b_last) goto done;
        if (n) memcpy(PyBytes_AS_STRING(b_cls), c.cls, (size_t)n * 4);
        int64_t *fs = (int64_t *)PyBytes_AS_STRING(b_fs), *fol = (int64_t *)PyBytes_AS_STRING(b_fol);
        int64_t *last = (int64_t *)PyBytes_AS_STRING(b_last);
        Py_ssize_t k = 0;
        fs[0] = 0;
        for (Py_ssize_t i = 0; i < r.first.n; i++) fol[k++] = r.first.p[i];
        fs[1] = k;
        for (Py_ssize_t p = 0; p < n; p++) {
            for (Py_ssize_t i = 0; i < c.fol[p].n; i++) fol[k++] = c.fol[p].p[i];
            fs[p + 2] = k;
        }
        for (Py_ssize_t i = 0; i < r.last.n; i++) last[i] = r.last.p[i];
        result = Py_BuildValue("(OOOOOO)", b_cls, c.classes, b_fs, b_fol, b_last, r.nullable ? Py_True : Py_False);
    }
done:
    for (Py_ssize_t p = 0; p < c.n_pos; p++) free(c.fol[p].p);
    free(c.fol); free(c.cls); free(c.clean);
    gl_res_free(&r);
    Py_XDECREF(c.cache); Py_XDECREF(c.class_of); Py_XDECREF(c.classes);
    Py_XDECREF(b_cls); Py_XDECREF(b_fs); Py_XDECREF(b_fol); Py_XDECREF(b_last);
    return result;
}

/* subset_classes's set lookup: the id of the set of NFA states bp[:nt] (sorted and deduplicated
 * here), added as the next set when new; 0, 1 past max_states, -1 out of memory. */
static int sc_target(table *tab, vec *pool, vec *start, int64_t *single, int64_t *bp, Py_ssize_t nt,
                     Py_ssize_t max_states, int64_t *out) {
    if (nt > 1) {
        qsort(bp, (size_t)nt, sizeof(int64_t), cmp_i64);
        Py_ssize_t u = 1;
        for (Py_ssize_t i = 1; i < nt; i++) if (bp[i] != bp[u - 1]) bp[u++] = bp[i];
        nt = u;
    }
    if (nt == 1 && single[bp[0]] >= 0) { *out = single[bp[0]]; return 0; }
    uint64_t h = set_hash(bp, nt);
    Py_ssize_t slot = table_slot(tab, h);
    for (;;) {
        int64_t id = tab->slots[slot];
        if (id < 0) break;
        Py_ssize_t len = start->p[id + 1] - start->p[id];
        if (len == nt && memcmp(pool->p + start->p[id], bp, (size_t)nt * 8) == 0) { *out = id; return 0; }
        slot = (slot + 1) & (tab->cap - 1);
    }
    int64_t target = start->n - 1;
    if (target >= max_states) return 1;
    for (Py_ssize_t i = 0; i < nt; i++) if (vec_push(pool, bp[i])) return -1;
    if (vec_push(start, pool->n) || table_add(tab, slot, h)) return -1;
    if (nt == 1) single[bp[0]] = target;
    *out = target;
    return 0;
}


/* subset_classes(cls, roots, node_off, nodes, base, owner, fol_start, fol, accepting, max_states, max_work)
 * The subset construction of `subset` over the same NFA, its rows given per class instead of per
 * state: position p's row is its class's root row (roots[cls[p]]: -1 none, -2 to 1 + p, v >= 0 to
 * base[p] + v) and state 1 + n_pos + i (a mid-character node of position p = owner[i], node
 * j = 1 + n_pos + i - base[p]) has its class's node row j (nodes[node_off[cls[p]] + j], the same
 * codes). The rows of all positions' nodes (a repetition's thousands of copies of a class's UTF-8
 * trie) are then never written out. A target set of one state is looked up by state, not hashed.
 * Same result as `subset` on the expanded rows: (trans bytes, accepting bytes), None, or False. */
static PyObject *subset_classes(PyObject *self, PyObject *args) {
    Py_buffer b_cls, b_roots, b_noff, b_nodes, b_base, b_owner, b_fs, b_fol, b_acc;
    Py_ssize_t max_states;
    long long max_work = -1;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*n|L", &b_cls, &b_roots, &b_noff, &b_nodes, &b_base, &b_owner,
                          &b_fs, &b_fol, &b_acc, &max_states, &max_work))
        return NULL;
    Py_buffer *held[9] = {&b_cls, &b_roots, &b_noff, &b_nodes, &b_base, &b_owner, &b_fs, &b_fol, &b_acc};
    PyObject *result = NULL;
    const int32_t *cls = b_cls.buf, *roots = b_roots.buf, *nodes = b_nodes.buf, *base = b_base.buf,
                  *owner = b_owner.buf;
    const int64_t *noff = b_noff.buf, *fs = b_fs.buf, *fol = b_fol.buf;
    const uint8_t *acc_nfa = b_acc.buf;
    Py_ssize_t n_pos = b_cls.len / 4, n_cls = b_roots.len / (256 * 4), n_det = b_owner.len / 4;
    Py_ssize_t n_fol = b_fol.len / 8, n_nodes = b_nodes.len / (256 * 4);
    Py_ssize_t n_nfa = 1 + n_pos + n_det;
    const char *bad = NULL;
    if (b_cls.len % 4 || b_roots.len % (256 * 4) || b_nodes.len % (256 * 4) || b_owner.len % 4 || b_fol.len % 8)
        bad = "buffer sizes are not whole rows";
    else if (b_noff.len != (n_cls + 1) * 8 || b_base.len != n_pos * 4 || b_fs.len != (n_pos + 2) * 8 ||
             b_acc.len != n_nfa)
        bad = "buffer lengths disagree";
    else if (max_states < 1)
        bad = "max_states must be positive";
    if (!bad) {
        if (noff[0] != 0 || noff[n_cls] != n_nodes) bad = "node_off must run from 0 to the number of nodes";
        for (Py_ssize_t c = 0; c < n_cls && !bad; c++)
            if (noff[c + 1] < noff[c]) bad = "node_off must not decrease";
        for (Py_ssize_t c = 0; c < n_cls && !bad; c++) {
            int64_t m = noff[c + 1] - noff[c];
            for (int64_t k = 0; k < 256 * (m + 1) && !bad; k++) {
                int32_t v = k < 256 ? roots[c * 256 + k] : nodes[noff[c] * 256 + k - 256];
                if (v < -2 || v >= m) bad = "a row code is out of range";
            }
        }
    }
    for (Py_ssize_t p = 0; p < n_pos && !bad; p++) {
        if (cls[p] < 0 || cls[p] >= n_cls) { bad = "a class is out of range"; break; }
        int64_t m = noff[cls[p] + 1] - noff[cls[p]];
        if (m && (base[p] < 1 + n_pos || (int64_t)base[p] + m > n_nfa)) bad = "a base is out of range";
    }
    for (Py_ssize_t i = 0; i < n_det && !bad; i++) {
        int32_t p = owner[i];
        if (p < 0 || p >= n_pos) { bad = "an owner is out of range"; break; }
        int64_t j = 1 + n_pos + i - (int64_t)base[p];
        if (j < 0 || j >= noff[cls[p] + 1] - noff[cls[p]]) bad = "an owner disagrees with its base";
    }
    if (!bad && (fs[0] != 0 || fs[n_pos + 1] != n_fol)) bad = "fol_start must run from 0 to len(fol)";
    for (Py_ssize_t s = 0; s <= n_pos && !bad; s++)
        if (fs[s + 1] < fs[s]) bad = "fol_start must not decrease";
    for (Py_ssize_t k = 0; k < n_fol && !bad; k++)
        if (fol[k] < 0 || fol[k] >= n_pos) bad = "a follow position is out of range";
    if (bad) {
        PyErr_Format(PyExc_ValueError, "subset_classes: %s", bad);
        for (int h = 0; h < 9; h++) PyBuffer_Release(held[h]);
        return NULL;
    }
    if (max_work < 0) max_work = LLONG_MAX;
    long long work = 0;
    vec uni = {0};
    int heavy = 0;
    vec pool = {0}, start = {0};
    PyObject *trb = NULL;
    Py_ssize_t trn = 0, trcap = 0;
    table tab = {0};
    int nomem = 0, over = 0;
    int64_t cnt[257], at[256];
    vec tg = {0};  /* one set's targets, by byte */
    int64_t *live_off = NULL;
    uint8_t *live_b = NULL;
    int32_t *live_v = NULL;
    int64_t *stamp = calloc((size_t)n_pos + 1, sizeof(int64_t));
    int64_t *single = malloc((size_t)n_nfa * sizeof(int64_t));  /* NFA state -> DFA id of {state}, -1 */
    if (!stamp || !single || table_init(&tab, 1024) || vec_push(&start, 0) || vec_push(&pool, 0) ||
        vec_push(&start, 1)) {
        nomem = 1;
        goto done;
    }
    /* live (byte, code) pairs of every row: roots, then nodes */
    live_off = malloc(((size_t)(n_cls + n_nodes) + 1) * sizeof *live_off);
    if (!live_off) { nomem = 1; goto done; }
    live_off[0] = 0;
    {
        Py_ssize_t n_live = 0;
        for (Py_ssize_t r = 0; r < n_cls + n_nodes; r++) {
            const int32_t *row = r < n_cls ? roots + r * 256 : nodes + (r - n_cls) * 256;
            for (int b = 0; b < 256; b++) n_live += row[b] != -1;
        }
        live_b = malloc((size_t)n_live + 1);
        live_v = malloc(((size_t)n_live + 1) * sizeof *live_v);
        if (!live_b || !live_v) { nomem = 1; goto done; }
        n_live = 0;
        for (Py_ssize_t r = 0; r < n_cls + n_nodes; r++) {
            const int32_t *row = r < n_cls ? roots + r * 256 : nodes + (r - n_cls) * 256;
            for (int b = 0; b < 256; b++)
                if (row[b] != -1) { live_b[n_live] = (uint8_t)b; live_v[n_live++] = row[b]; }
            live_off[r + 1] = n_live;
        }
    }
    for (Py_ssize_t s = 0; s < n_nfa; s++) single[s] = -1;
    single[0] = 0;
    {
        uint64_t h = set_hash(pool.p, 1);
        if (table_add(&tab, table_slot(&tab, h), h)) { nomem = 1; goto done; }
    }
    for (Py_ssize_t d = 0; d < start.n - 1; d++) {
        if (follow_union(fs, fol, n_pos, &start, &pool, d, stamp, &uni, &work)) { nomem = 1; goto done; }
        work += 256 * (uni.n + (start.p[d + 1] - start.p[d]));
        if (work > max_work) { heavy = 1; goto done; }
        /* This state's row, written in place (trb grows by whole rows). */
        if (trn + 256 > trcap) {
            Py_ssize_t nc = trcap ? 2 * trcap : 256 * 64;
            if (!trb) trb = PyBytes_FromStringAndSize(NULL, nc * 4);
            else if (_PyBytes_Resize(&trb, nc * 4)) trb = NULL;
            if (!trb) { PyErr_Clear(); nomem = 1; goto done; }
            trcap = nc;
        }
        int32_t *row_out = (int32_t *)PyBytes_AS_STRING(trb) + trn;
        trn += 256;
        memset(row_out, 0xff, 256 * sizeof(int32_t));
        Py_ssize_t n_det_members = 0;
        int64_t one_p = -1, one_r = -1;
        for (int64_t k = start.p[d]; k < start.p[d + 1]; k++) {
            int64_t s = pool.p[k];
            if (s <= n_pos) continue;
            n_det_members++;
            one_p = owner[s - 1 - n_pos];
            one_r = n_cls + noff[cls[one_p]] + (s - base[one_p]);
        }
        if (n_det_members + uni.n == 1) {
            /* One row (most states of a deterministic pattern): every byte has at most one target. */
            if (uni.n) { one_p = uni.p[0]; one_r = cls[one_p]; }
            for (int64_t q = live_off[one_r]; q < live_off[one_r + 1]; q++) {
                int32_t v = live_v[q];
                int64_t t = v == -2 ? 1 + one_p : (int64_t)base[one_p] + v;
                int64_t target = single[t];
                if (target < 0) {
                    int rc = sc_target(&tab, &pool, &start, single, &t, 1, max_states, &target);
                    if (rc) { if (rc > 0) over = 1; else nomem = 1; goto done; }
                }
                row_out[live_b[q]] = (int32_t)target;
            }
            continue;
        }
        /* Several rows: their targets bucketed by byte, a counting sort over the rows' live bytes
         * (rows are sparse: a literal's has one). */
        memset(cnt, 0, sizeof cnt);
        for (int pass = 0; pass < 2; pass++) {
            for (int64_t k = start.p[d]; k < start.p[d + 1] + uni.n; k++) {
                int64_t p, r;
                if (k < start.p[d + 1]) {
                    int64_t s = pool.p[k];
                    if (s <= n_pos) continue;
                    p = owner[s - 1 - n_pos];
                    r = n_cls + noff[cls[p]] + (s - base[p]);
                } else {
                    p = uni.p[k - start.p[d + 1]];
                    r = cls[p];
                }
                if (!pass) {
                    for (int64_t q = live_off[r]; q < live_off[r + 1]; q++) cnt[live_b[q] + 1]++;
                } else {
                    for (int64_t q = live_off[r]; q < live_off[r + 1]; q++) {
                        int32_t v = live_v[q];
                        tg.p[at[live_b[q]]++] = v == -2 ? 1 + p : (int64_t)base[p] + v;
                    }
                }
            }
            if (!pass) {
                for (int b = 0; b < 256; b++) cnt[b + 1] += cnt[b];
                while (tg.cap < cnt[256]) if (vec_grow(&tg)) { nomem = 1; goto done; }
                memcpy(at, cnt, sizeof at);
            }
        }
        for (int b = 0; b < 256; b++) {
            Py_ssize_t nt = cnt[b + 1] - cnt[b];
            if (!nt) continue;
            int64_t *bp = tg.p + cnt[b];
            int64_t target = nt == 1 ? single[bp[0]] : -1;
            if (target < 0) {
                int rc = sc_target(&tab, &pool, &start, single, bp, nt, max_states, &target);
                if (rc) { if (rc > 0) over = 1; else nomem = 1; goto done; }
            }
            row_out[b] = (int32_t)target;
        }
    }
done:
    result = subset_result(nomem, over, heavy, &trb, &start, &pool, acc_nfa);
    free(pool.p); free(start.p); Py_XDECREF(trb); table_free(&tab); free(uni.p); free(stamp); free(single);
    free(tg.p); free(live_off); free(live_b); free(live_v);
    for (int h = 0; h < 9; h++) PyBuffer_Release(held[h]);
    return result;
}

/* ---- Regex reader: dotvllm_plugin.regex.fastparse._Parser in C ----------------------------------
 *
 * regex_parse(text) returns what re._parser.parse(text) returns (a re._parser.SubPattern tree built
 * through the classes and opcode objects handed over once by regex_setup) for the subset the Python
 * reader reads, and None wherever that reader hands the text to Python's parser. The rewrites are
 * Python's: a prefix shared by all branches moved out, single-item branches joined into one class
 * (duplicates dropped, first kept), an unquantified (?:...) spliced, a quantified one unwrapped.
 * Every repeat, group and branch argument is a fresh object (the translator keys a cache on their
 * ids); literal items of ASCII and of U+100000..U+100003 are shared, as the Python reader shares them.
 *
 * Internally a NULL return with no exception set means "outside the subset" (None to the caller).
 */

enum { RX_LITERAL, RX_NOT_LITERAL, RX_IN, RX_RANGE, RX_NEGATE, RX_SUBPATTERN, RX_BRANCH, RX_MAX_REPEAT,
       RX_MIN_REPEAT, RX_POSS_REPEAT, RX_ANY, RX_AT, RX_AT_BEGINNING, RX_AT_END, RX_MAXREPEAT, RX_UNICODE,
       RX_N_CONST };
#define RX_N_CAT 6             /* \d \D \s \S \w \W */
#define RX_PRIVATE 0x100000    /* the translator's most frequent private code points: U+100000.. */
#define RX_N_PRIVATE 4
#define RX_MAX_DEPTH 100       /* deeper nesting of groups is left to Python's parser */

static struct {
    int ready, busy;  /* busy: readings under way (a setup then is refused) */
    PyObject *subpattern, *state;             /* re._parser.SubPattern, re._parser.State */
    PyObject *c[RX_N_CONST];                  /* opcodes and constants, in the enum's order */
    PyObject *cat[RX_N_CAT];                  /* (IN, [(CATEGORY, X)]) of re._parser.CATEGORIES */
    PyObject *catcode[RX_N_CAT];              /* its (CATEGORY, X) */
    PyObject *lit[0x80 + RX_N_PRIVATE];       /* shared (LITERAL, cp) items */
    unsigned long long maxrepeat;
    PyObject *s_str, *s_flags, *s_data;
} rx;

typedef struct {
    int kind;
    const void *t;
    Py_ssize_t n;
    PyObject *state;
    int depth;
} rx_ctx;

#define RX_CH(p, i) PyUnicode_READ((p)->kind, (p)->t, (i))

static PyObject *rx_lit(Py_UCS4 cp) {
    PyObject *o;
    if (cp < 0x80) o = rx.lit[cp];
    else if (cp >= RX_PRIVATE && cp < RX_PRIVATE + RX_N_PRIVATE) o = rx.lit[0x80 + cp - RX_PRIVATE];
    else {
        PyObject *v = PyLong_FromUnsignedLong(cp);
        if (!v) return NULL;
        o = PyTuple_Pack(2, rx.c[RX_LITERAL], v);
        Py_DECREF(v);
        return o;
    }
    Py_INCREF(o);
    return o;
}

/* (op, av), av stolen */
static PyObject *rx_item(PyObject *op, PyObject *av) {
    if (!av) return NULL;
    PyObject *t = PyTuple_Pack(2, op, av);
    Py_DECREF(av);
    return t;
}

/* A tuple of n objects, all stolen (released if the tuple cannot be made). */
static PyObject *rx_tuple(Py_ssize_t n, PyObject *a, PyObject *b, PyObject *c, PyObject *d) {
    PyObject *o[4] = {a, b, c, d}, *t = PyTuple_New(n);
    for (Py_ssize_t j = 0; j < n; j++) {
        if (t) PyTuple_SET_ITEM(t, j, o[j]);
        else Py_DECREF(o[j]);
    }
    return t;
}

/* SubPattern(state, data) */
static PyObject *rx_subpattern(rx_ctx *p, PyObject *data) {
    PyObject *args[2] = {p->state, data};
    return PyObject_Vectorcall(rx.subpattern, args, 2, NULL);
}

/* An (op, av) pair: every item the reader builds is one (checked where an item is read back from a
 * list a SubPattern holds: those lists are in the hands of the SubPattern class given to setup). */
#define RX_IS_ITEM(o) (PyTuple_CheckExact(o) && PyTuple_GET_SIZE(o) == 2)
/* The SubPattern of a group item (SUBPATTERN, (None, 0, 0, body)), or NULL. */
static PyObject *rx_group_body(PyObject *item) {
    PyObject *av = PyTuple_GET_ITEM(item, 1);
    if (!PyTuple_CheckExact(av) || PyTuple_GET_SIZE(av) != 4) return NULL;
    return PyTuple_GET_ITEM(av, 3);
}

/* Characters re reads as literals one by one outside a class. */
static int rx_plain(Py_UCS4 c) {
    if (c >= 0x80) return 1;
    switch (c) {
    case '.': case '\\': case '[': case '{': case '(': case ')': case '*': case '+': case '?': case '^': case '$':
    case '|':
        return 0;
    }
    return 1;
}

static int rx_hex(Py_UCS4 c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* An escape at i: 0 a literal (*cp), 1 a category (*cat), -1 outside the subset; *end after it. */
static int rx_escape(rx_ctx *p, Py_ssize_t i, int in_class, Py_UCS4 *cp, int *cat, Py_ssize_t *end) {
    if (i + 1 >= p->n) return -1;  /* a backslash at the end */
    Py_UCS4 c = RX_CH(p, i + 1);
    *end = i + 2;
    switch (c) {
    case 'd': *cat = 0; return 1;
    case 'D': *cat = 1; return 1;
    case 's': *cat = 2; return 1;
    case 'S': *cat = 3; return 1;
    case 'w': *cat = 4; return 1;
    case 'W': *cat = 5; return 1;
    case 'a': *cp = 7; return 0;
    case 'b':
        if (!in_class) return -1;  /* a word boundary */
        *cp = 8;
        return 0;
    case 'f': *cp = 12; return 0;
    case 'n': *cp = 10; return 0;
    case 'r': *cp = 13; return 0;
    case 't': *cp = 9; return 0;
    case 'v': *cp = 11; return 0;
    case '\\': *cp = 92; return 0;
    case 'x': case 'u': {
        int k = c == 'x' ? 2 : 4;
        if (i + 2 + k > p->n) return -1;
        Py_UCS4 v = 0;
        for (int j = 0; j < k; j++) {
            int h = rx_hex(RX_CH(p, i + 2 + j));
            if (h < 0) return -1;
            v = v * 16 + (Py_UCS4)h;
        }
        if (c == 'u' && v >= 0xD800 && v <= 0xDFFF) return -1;  /* (re reads a lone surrogate; left to it) */
        *cp = v;
        *end = i + 2 + k;
        return 0;
    }
    }
    if ((c < 0x80 && Py_ISALPHA(c)) || Py_UNICODE_ISDIGIT(c)) return -1;  /* \U \N \0, references, ... */
    *cp = c;
    return 0;
}

typedef struct {
    int kind;  /* 0 literal, 1 category, 2 range */
    Py_UCS4 a, b;
} rx_member;

static PyObject *rx_member_obj(const rx_member *m) {
    if (m->kind == 0) return rx_lit(m->a);
    if (m->kind == 1) {
        Py_INCREF(rx.catcode[m->a]);
        return rx.catcode[m->a];
    }
    return rx_item(rx.c[RX_RANGE], Py_BuildValue("(kk)", (unsigned long)m->a, (unsigned long)m->b));
}

/* [...] at i: re._parser's set reading. */
static PyObject *rx_class(rx_ctx *p, Py_ssize_t *pi) {
    Py_ssize_t i = *pi + 1, n = p->n, cnt = 0, cap = 16;
    rx_member small[16], *set = small;
    PyObject *res = NULL;
    if (i < n && RX_CH(p, i) == '[') return NULL;  /* (re warns: a possible nested set) */
    int negate = i < n && RX_CH(p, i) == '^';
    if (negate) i++;
    for (;;) {
        if (i >= n) goto done;  /* unterminated */
        Py_UCS4 c = RX_CH(p, i);
        if (c == ']' && cnt) {
            i++;
            break;
        }
        rx_member m1, m2;
        int cat;
        if (cnt + 2 > cap) {  /* room for the two members a step may add */
            rx_member *grown = set == small ? PyMem_Malloc(2 * cap * sizeof *set)
                                            : PyMem_Realloc(set, 2 * cap * sizeof *set);
            if (!grown) {
                PyErr_NoMemory();
                goto done;
            }
            if (set == small) memcpy(grown, small, sizeof small);
            set = grown;
            cap *= 2;
        }
        if (c == '\\') {
            int r = rx_escape(p, i, 1, &m1.a, &cat, &i);
            if (r < 0) goto done;
            m1.kind = r;
            if (r == 1) m1.a = (Py_UCS4)cat;
        } else {
            if (cnt && (c == '-' || c == '&' || c == '~' || c == '|') && i + 1 < n && RX_CH(p, i + 1) == c)
                goto done;  /* (re warns: a possible set operation) */
            m1.kind = 0;
            m1.a = c;
            i++;
        }
        if (i < n && RX_CH(p, i) == '-') {
            i++;
            if (i >= n) goto done;
            Py_UCS4 that = RX_CH(p, i);
            if (that == ']') {
                set[cnt++] = m1;
                set[cnt].kind = 0;
                set[cnt++].a = '-';
                i++;
                break;
            }
            if (that == '\\') {
                int r = rx_escape(p, i, 1, &m2.a, &cat, &i);
                if (r != 0) goto done;  /* outside the subset, or a category: a bad range */
            } else {
                if (that == '-') goto done;  /* (re warns) */
                m2.a = that;
                i++;
            }
            if (m1.kind != 0 || m2.a < m1.a) goto done;  /* a bad range */
            set[cnt].kind = 2;
            set[cnt].a = m1.a;
            set[cnt++].b = m2.a;
        } else {
            set[cnt++] = m1;
        }
    }
    /* duplicates dropped, the first kept (dict.fromkeys) */
    Py_ssize_t k = 0;
    for (Py_ssize_t j = 0; j < cnt; j++) {
        Py_ssize_t q = 0;
        while (q < k && !(set[q].kind == set[j].kind && set[q].a == set[j].a &&
                          (set[j].kind != 2 || set[q].b == set[j].b)))
            q++;
        if (q == k) set[k++] = set[j];
    }
    if (k == 1 && set[0].kind == 0) {
        if (negate) {
            res = rx_item(rx.c[RX_NOT_LITERAL], PyLong_FromUnsignedLong(set[0].a));
        } else {
            res = rx_lit(set[0].a);
        }
    } else {
        PyObject *list = PyList_New(k + negate);
        if (!list) goto done;
        if (negate) {
            PyObject *neg = PyTuple_Pack(2, rx.c[RX_NEGATE], Py_None);
            if (!neg) {
                Py_DECREF(list);
                goto done;
            }
            PyList_SET_ITEM(list, 0, neg);
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *o = rx_member_obj(&set[j]);
            if (!o) {
                Py_DECREF(list);
                goto done;
            }
            PyList_SET_ITEM(list, j + negate, o);
        }
        res = rx_item(rx.c[RX_IN], list);
    }
    *pi = i;
done:
    if (set != small) PyMem_Free(set);
    return res;
}

/* Unsigned decimal digits at *pi, saturated far above MAXREPEAT; -1 when there are none. */
static long long rx_digits(rx_ctx *p, Py_ssize_t *pi) {
    Py_ssize_t i = *pi;
    long long v = -1;
    for (; i < p->n; i++) {
        Py_UCS4 c = RX_CH(p, i);
        if (c < '0' || c > '9') break;
        v = (v < 0 ? 0 : v) * 10 + (long long)(c - '0');
        if (v > ((long long)1 << 40)) v = (long long)1 << 40;
    }
    *pi = i;
    return v;
}

static PyObject *rx_sub(rx_ctx *p, Py_ssize_t *pi, PyObject **data_out);

/* Items up to |, ) or the end: re._parser._parse. *data_out: the SubPattern's list (a new reference). */
static PyObject *rx_seq(rx_ctx *p, Py_ssize_t *pi, PyObject **data_out) {
    Py_ssize_t i = *pi, n = p->n;
    PyObject *data = PyList_New(0), *item = NULL;
    int groups = 0;  /* an unquantified (?:...) is spliced into the sequence at the end, as re does */
    if (!data) return NULL;
    while (i < n) {
        Py_UCS4 c = RX_CH(p, i);
        if (rx_plain(c)) {
            item = rx_lit(c);
            i++;
        } else if (c == '|' || c == ')') {
            break;
        } else if (c == '\\') {
            Py_UCS4 cp;
            int cat;
            int r = rx_escape(p, i, 0, &cp, &cat, &i);
            if (r < 0) goto fail;
            if (r == 1) {
                item = rx.cat[cat];
                Py_INCREF(item);
            } else {
                item = rx_lit(cp);
            }
        } else if (c == '[') {
            item = rx_class(p, &i);
        } else if (c == '(') {
            if (!(i + 2 < n && RX_CH(p, i + 1) == '?' && RX_CH(p, i + 2) == ':'))
                goto fail;  /* capturing groups, flags, lookarounds, ... */
            i += 3;
            PyObject *body_data;
            PyObject *g = rx_sub(p, &i, &body_data);
            if (!g) goto fail;
            Py_DECREF(body_data);
            if (i >= n) {  /* missing ) */
                Py_DECREF(g);
                goto fail;
            }
            i++;
            Py_INCREF(Py_None);  /* (0 is a preallocated int: PyLong_FromLong cannot fail for it) */
            item = rx_item(rx.c[RX_SUBPATTERN], rx_tuple(4, Py_None, PyLong_FromLong(0), PyLong_FromLong(0), g));
            groups = 1;
        } else if (c == '.') {
            item = PyTuple_Pack(2, rx.c[RX_ANY], Py_None);
            i++;
        } else if (c == '^' || c == '$') {
            item = PyTuple_Pack(2, rx.c[RX_AT], rx.c[c == '^' ? RX_AT_BEGINNING : RX_AT_END]);
            i++;
        } else {  /* ? * + { */
            long long lo, hi;
            int hi_max = 0;  /* hi is the MAXREPEAT constant itself (no digits written) */
            if (c == '{') {
                Py_ssize_t j = i + 1;
                int comma = 0;
                long long hv = -1, lv = -1;
                if (j < n && RX_CH(p, j) == '}') {
                    item = rx_lit('{');
                    i++;
                    goto append;
                }
                lv = rx_digits(p, &j);
                if (j < n && RX_CH(p, j) == ',') {
                    comma = 1;
                    j++;
                    hv = rx_digits(p, &j);
                }
                if (!(j < n && RX_CH(p, j) == '}')) {
                    item = rx_lit('{');  /* not a quantifier: a literal brace, the rest read on */
                    i++;
                    goto append;
                }
                lo = lv < 0 ? 0 : lv;
                if (!comma) hi = lo;
                else if (hv < 0) hi = (long long)rx.maxrepeat, hi_max = 1;
                else hi = hv;
                if ((unsigned long long)lo >= rx.maxrepeat ||
                    (!hi_max && ((unsigned long long)hi >= rx.maxrepeat || hi < lo)))
                    goto fail;  /* (re: an upper bound written as MAXREPEAT is too large too) */
                i = j + 1;
            } else {
                lo = c == '+';
                hi = c == '?' ? 1 : (long long)rx.maxrepeat;
                hi_max = c != '?';
                i++;
            }
            Py_ssize_t last = PyList_GET_SIZE(data) - 1;
            if (last < 0) goto fail;  /* nothing to repeat */
            PyObject *prev = PyList_GET_ITEM(data, last), *op, *body;
            if (!RX_IS_ITEM(prev)) goto fail;
            op = PyTuple_GET_ITEM(prev, 0);
            if (op == rx.c[RX_AT] || op == rx.c[RX_MAX_REPEAT] || op == rx.c[RX_MIN_REPEAT] ||
                op == rx.c[RX_POSS_REPEAT])
                goto fail;  /* nothing to repeat / multiple repeat */
            if (i < n && (RX_CH(p, i) == '?' || RX_CH(p, i) == '+')) goto fail;  /* lazy or possessive */
            if (op == rx.c[RX_SUBPATTERN]) {
                body = rx_group_body(prev);  /* (None, 0, 0, body): always unwrapped */
                if (!body) goto fail;
                Py_INCREF(body);
            } else {
                PyObject *one = PyList_New(1);
                if (!one) goto fail;
                Py_INCREF(prev);
                PyList_SET_ITEM(one, 0, prev);
                body = rx_subpattern(p, one);
                Py_DECREF(one);
                if (!body) goto fail;
            }
            PyObject *lo_o = PyLong_FromLongLong(lo), *hi_o;
            if (hi_max) {
                hi_o = rx.c[RX_MAXREPEAT];
                Py_INCREF(hi_o);
            } else {
                hi_o = PyLong_FromLongLong(hi);
            }
            if (!lo_o || !hi_o) {
                Py_XDECREF(lo_o);
                Py_XDECREF(hi_o);
                Py_DECREF(body);
                goto fail;
            }
            item = rx_item(rx.c[RX_MAX_REPEAT], rx_tuple(3, lo_o, hi_o, body, NULL));
            if (!item) goto fail;
            PyList_SetItem(data, last, item);  /* (steals item, drops the repeated one) */
            item = NULL;
            continue;
        }
    append:
        if (!item) goto fail;
        if (PyList_Append(data, item) < 0) goto fail;
        Py_DECREF(item);
        item = NULL;
    }
    if (groups) {
        PyObject *flat = PyList_New(0);
        if (!flat) goto fail;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(data); j++) {
            PyObject *it = PyList_GET_ITEM(data, j);
            int r;
            if (!RX_IS_ITEM(it)) {
                Py_DECREF(flat);
                goto fail;
            }
            if (PyTuple_GET_ITEM(it, 0) == rx.c[RX_SUBPATTERN]) {
                PyObject *body = rx_group_body(it);
                PyObject *inner = body ? PyObject_GetAttr(body, rx.s_data) : NULL;
                if (!inner) {
                    Py_DECREF(flat);
                    goto fail;
                }
                r = PyList_SetSlice(flat, PyList_GET_SIZE(flat), PyList_GET_SIZE(flat), inner);
                Py_DECREF(inner);
            } else {
                r = PyList_Append(flat, it);
            }
            if (r < 0) {
                Py_DECREF(flat);
                goto fail;
            }
        }
        Py_SETREF(data, flat);
    }
    PyObject *sp = rx_subpattern(p, data);
    if (!sp) goto fail;
    *pi = i;
    *data_out = data;
    return sp;
fail:
    Py_XDECREF(item);
    Py_DECREF(data);
    return NULL;
}

/* Items without repeats: dict.fromkeys(items) as a list (the first of equal items kept, in order). */
static PyObject *rx_unique(PyObject *items) {
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    if (n <= 16) {
        for (Py_ssize_t j = 0; j < n; j++) {
            PyObject *it = PyList_GET_ITEM(items, j);
            int seen = 0;
            for (Py_ssize_t q = 0; q < PyList_GET_SIZE(out) && !seen; q++) {
                seen = PyObject_RichCompareBool(PyList_GET_ITEM(out, q), it, Py_EQ);
                if (seen < 0) goto fail;
            }
            if (!seen && PyList_Append(out, it) < 0) goto fail;
        }
        return out;
    }
    PyObject *d = PyDict_New();
    if (!d) goto fail;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *it = PyList_GET_ITEM(items, j);
        int seen = PyDict_Contains(d, it);
        if (seen < 0 || (!seen && (PyDict_SetItem(d, it, Py_None) < 0 || PyList_Append(out, it) < 0))) {
            Py_DECREF(d);
            goto fail;
        }
    }
    Py_DECREF(d);
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* An alternation a|b|c up to ) or the end: re._parser._parse_sub. */
static PyObject *rx_sub(rx_ctx *p, Py_ssize_t *pi, PyObject **data_out) {
    Py_ssize_t i = *pi, n = p->n, nb = 0, cap = 8;
    PyObject *items = NULL, *res = NULL, *outer = NULL, *set = NULL;
    PyObject *small[8], **br = small;  /* the branches' data lists (held) */
    if (++p->depth > RX_MAX_DEPTH) goto done;
    if (!(items = PyList_New(0))) goto done;
    for (;;) {
        PyObject *data, *seq = rx_seq(p, &i, &data);
        if (!seq) goto done;
        int r = PyList_Append(items, seq);
        Py_DECREF(seq);
        if (r < 0) {
            Py_DECREF(data);
            goto done;
        }
        if (nb == cap) {
            PyObject **grown = br == small ? PyMem_Malloc(2 * cap * sizeof *br) : PyMem_Realloc(br, 2 * cap * sizeof *br);
            if (!grown) {
                Py_DECREF(data);
                PyErr_NoMemory();
                goto done;
            }
            if (br == small) memcpy(grown, small, sizeof small);
            br = grown;
            cap *= 2;
        }
        br[nb++] = data;
        if (i < n && RX_CH(p, i) == '|') {
            i++;
            continue;
        }
        break;
    }
    if (nb == 1) {
        res = PyList_GET_ITEM(items, 0);
        Py_INCREF(res);
        *data_out = br[0];
        Py_INCREF(br[0]);
        *pi = i;
        goto done;
    }
    if (!(outer = PyList_New(0))) goto done;
    for (;;) {  /* a common first item moves out of the branches */
        PyObject *prefix = NULL;
        Py_ssize_t k;
        for (k = 0; k < nb; k++) {
            if (!PyList_GET_SIZE(br[k])) break;
            PyObject *first = PyList_GET_ITEM(br[k], 0);
            if (!RX_IS_ITEM(first)) goto done;
            if (!prefix) {
                prefix = first;
            } else {
                int eq = PyObject_RichCompareBool(first, prefix, Py_EQ);
                if (eq < 0) goto done;
                if (!eq) break;
            }
        }
        if (k < nb) break;
        if (PyList_Append(outer, prefix) < 0) goto done;  /* (before the branches drop it) */
        for (k = 0; k < nb; k++)
            if (PyList_SetSlice(br[k], 0, 1, NULL) < 0) goto done;
    }
    /* single literals or classes: one class */
    if (!(set = PyList_New(0))) goto done;
    Py_ssize_t k;
    for (k = 0; k < nb; k++) {
        if (PyList_GET_SIZE(br[k]) != 1) break;
        PyObject *it = PyList_GET_ITEM(br[k], 0), *op, *av;
        if (!RX_IS_ITEM(it)) break;
        op = PyTuple_GET_ITEM(it, 0);
        av = PyTuple_GET_ITEM(it, 1);
        if (op == rx.c[RX_LITERAL]) {
            if (PyList_Append(set, it) < 0) goto done;
        } else if (op == rx.c[RX_IN]) {
            /* (a category's list is shared with re._parser: checked, not trusted) */
            if (!PyList_Check(av) || !PyList_GET_SIZE(av) || !PyTuple_Check(PyList_GET_ITEM(av, 0)) ||
                !PyTuple_GET_SIZE(PyList_GET_ITEM(av, 0)))
                break;
            if (PyTuple_GET_ITEM(PyList_GET_ITEM(av, 0), 0) == rx.c[RX_NEGATE]) break;
            if (PyList_SetSlice(set, PyList_GET_SIZE(set), PyList_GET_SIZE(set), av) < 0) goto done;
        } else {
            break;
        }
    }
    PyObject *last;
    if (k == nb) {
        last = rx_item(rx.c[RX_IN], rx_unique(set));
    } else {
        Py_INCREF(items);
        last = rx_item(rx.c[RX_BRANCH], PyTuple_Pack(2, Py_None, items));
        Py_DECREF(items);
    }
    if (!last) goto done;
    int r = PyList_Append(outer, last);
    Py_DECREF(last);
    if (r < 0) goto done;
    res = rx_subpattern(p, outer);
    if (res) {
        *pi = i;
        *data_out = outer;
        Py_INCREF(outer);
    }
done:
    p->depth--;
    for (Py_ssize_t j = 0; j < nb; j++) Py_DECREF(br[j]);
    if (br != small) PyMem_Free(br);
    Py_XDECREF(items);
    Py_XDECREF(outer);
    Py_XDECREF(set);
    return res;
}

static PyObject *regex_setup(PyObject *self, PyObject *args) {
    PyObject *sp, *st, *consts, *cats;
    if (!PyArg_ParseTuple(args, "OOO!O!", &sp, &st, &PyTuple_Type, &consts, &PyTuple_Type, &cats)) return NULL;
    if (rx.busy) {
        PyErr_SetString(PyExc_RuntimeError, "regex_setup: called while a regex is being read");
        return NULL;
    }
    if (!PyType_Check(sp) || !PyType_Check(st)) {
        PyErr_SetString(PyExc_TypeError, "regex_setup: SubPattern and State must be classes");
        return NULL;
    }
    if (PyTuple_GET_SIZE(consts) != RX_N_CONST || PyTuple_GET_SIZE(cats) != RX_N_CAT) {
        PyErr_Format(PyExc_ValueError, "regex_setup: %d constants and %d categories expected", RX_N_CONST, RX_N_CAT);
        return NULL;
    }
    for (int j = 0; j < RX_N_CONST; j++)
        if (!PyLong_Check(PyTuple_GET_ITEM(consts, j))) {
            PyErr_Format(PyExc_TypeError, "regex_setup: constant %d is not an int", j);
            return NULL;
        }
    unsigned long long maxrepeat = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(consts, RX_MAXREPEAT));
    if (maxrepeat == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (maxrepeat == 0 || maxrepeat >= ((unsigned long long)1 << 40)) {  /* (below rx_digits' cap) */
        PyErr_SetString(PyExc_ValueError, "regex_setup: MAXREPEAT out of range");
        return NULL;
    }
    for (int j = 0; j < RX_N_CAT; j++) {
        PyObject *c = PyTuple_GET_ITEM(cats, j), *av;
        if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 2 || PyTuple_GET_ITEM(c, 0) != PyTuple_GET_ITEM(consts, RX_IN) ||
            !PyList_Check(av = PyTuple_GET_ITEM(c, 1)) || PyList_GET_SIZE(av) != 1 ||
            !PyTuple_Check(PyList_GET_ITEM(av, 0)) || PyTuple_GET_SIZE(PyList_GET_ITEM(av, 0)) != 2) {
            PyErr_Format(PyExc_ValueError, "regex_setup: category %d is not (IN, [(CATEGORY, code)])", j);
            return NULL;
        }
    }
    PyObject *lit[0x80 + RX_N_PRIVATE];
    for (int j = 0; j < 0x80 + RX_N_PRIVATE; j++) {
        PyObject *v = PyLong_FromLong(j < 0x80 ? j : RX_PRIVATE + j - 0x80);
        lit[j] = v ? PyTuple_Pack(2, PyTuple_GET_ITEM(consts, RX_LITERAL), v) : NULL;
        Py_XDECREF(v);
        if (!lit[j]) {
            while (j--) Py_DECREF(lit[j]);
            return NULL;
        }
    }
    if ((!rx.s_str && !(rx.s_str = PyUnicode_InternFromString("str"))) ||
        (!rx.s_flags && !(rx.s_flags = PyUnicode_InternFromString("flags"))) ||
        (!rx.s_data && !(rx.s_data = PyUnicode_InternFromString("data")))) {
        for (int j = 0; j < 0x80 + RX_N_PRIVATE; j++) Py_DECREF(lit[j]);
        return NULL;
    }
    /* (a second setup replaces the first: the old objects are dropped after the new are held) */
    Py_INCREF(sp);
    Py_XSETREF(rx.subpattern, sp);
    Py_INCREF(st);
    Py_XSETREF(rx.state, st);
    for (int j = 0; j < RX_N_CONST; j++) {
        Py_INCREF(PyTuple_GET_ITEM(consts, j));
        Py_XSETREF(rx.c[j], PyTuple_GET_ITEM(consts, j));
    }
    for (int j = 0; j < RX_N_CAT; j++) {
        PyObject *c = PyTuple_GET_ITEM(cats, j), *code = PyList_GET_ITEM(PyTuple_GET_ITEM(c, 1), 0);
        Py_INCREF(c);
        Py_XSETREF(rx.cat[j], c);
        Py_INCREF(code);
        Py_XSETREF(rx.catcode[j], code);
    }
    for (int j = 0; j < 0x80 + RX_N_PRIVATE; j++) Py_XSETREF(rx.lit[j], lit[j]);
    rx.maxrepeat = maxrepeat;
    rx.ready = 1;
    Py_RETURN_NONE;
}

static PyObject *regex_parse(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "regex_parse: str expected, got %.80s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (!rx.ready) {
        PyErr_SetString(PyExc_RuntimeError, "regex_parse: regex_setup was not called");
        return NULL;
    }
    if (PyUnicode_READY(text) < 0) return NULL;
    rx_ctx p = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), NULL, 0};
    PyObject *res = NULL, *data = NULL;
    Py_ssize_t i = 0;
    rx.busy++;  /* (the classes' code may run: no setup may replace what the reading uses) */
    p.state = PyObject_CallNoArgs(rx.state);
    if (!p.state || PyObject_SetAttr(p.state, rx.s_str, text) < 0) goto done;
    res = rx_sub(&p, &i, &data);
    if (res && (i != p.n || PyObject_SetAttr(p.state, rx.s_flags, rx.c[RX_UNICODE]) < 0))  /* ) unbalanced */
        Py_CLEAR(res);
    if (!res && !PyErr_Occurred()) {
        res = Py_None;
        Py_INCREF(res);
    }
done:
    rx.busy--;
    Py_XDECREF(data);
    Py_XDECREF(p.state);
    return res;
}

static PyMethodDef methods[] = {
    {"subset_classes", subset_classes, METH_VARARGS, "subset, the NFA rows given per class (see its comment)."},
    {"glushkov_positions", glushkov_positions, METH_VARARGS, "Glushkov positions, first/last/follow of a parse tree (see its comment)."},
    {"regex_setup", regex_setup, METH_VARARGS, "The classes and constants regex_parse builds with (re._parser's)."},
    {"regex_parse", regex_parse, METH_O, "re._parser.parse(text) for the subset fastparse reads, else None."},
    {"lalr_packed", lalr_packed, METH_VARARGS, "LALR(1) parser tables, packed (lalr.lalr_tables and pushdown._packed)."},
    {"mask_hit", (PyCFunction)(void (*)(void))mask_hit, METH_FASTCALL, "A mask row cached under a stack's top states."},
    {"copy_row", (PyCFunction)(void (*)(void))copy_row, METH_FASTCALL, "A packed row copied into a row of a bitmask."},
    {"mask_miss", (PyCFunction)(void (*)(void))mask_miss, METH_FASTCALL, "A mask row computed from a state's walks and a probe."},
    {"path_id", (PyCFunction)(void (*)(void))path_id, METH_FASTCALL, "A cache key's number in a dict of them, new ones numbered by its size."},
    {"lr_step", (PyCFunction)(void (*)(void))lr_step, METH_FASTCALL, "A deterministic grammar's step over a token's bytes."},
    {"lr_commit", (PyCFunction)(void (*)(void))lr_commit, METH_FASTCALL, "A matcher's commit of a token its mask row allows."},
    {"lr_step_all", (PyCFunction)(void (*)(void))lr_step_all, METH_FASTCALL, "Every configuration's step over a token's bytes."},
    {"lr_tables", lr_tables, METH_VARARGS, "The parser tables the probe functions read, as a capsule."},
    {"lr_feed", (PyCFunction)(void (*)(void))lr_feed, METH_FASTCALL, "Every outcome of feeding a terminal to a probe's stack."},
    {"lr_viable", (PyCFunction)(void (*)(void))lr_viable, METH_FASTCALL, "Whether a probe's stack takes one of some terminals."},
    {"json_cut", json_cut, METH_VARARGS, "An automaton's product with a reader of JSON strings spelling given names."},
    {"reach_sets", reach_sets, METH_VARARGS, "Terminals each state or a later one chooses, as distinct bitsets."},
    {"ball", ball, METH_VARARGS, "States within a depth of one, breadth first, and the ball's signature."},
    {"ball_reader", ball_reader, METH_VARARGS, "A lexer's tables checked and held for ball_at."},
    {"ball_at", (PyCFunction)(void (*)(void))ball_at, METH_FASTCALL, "ball() of one state through a ball_reader."},
    {"run_rows", run_rows, METH_VARARGS, "Rows of the tokens spelled inside a character set, by count."},
    {"run_rows_at", run_rows_at, METH_VARARGS, "Row 0 of run_rows from another one's, re-read at some tokens."},
    {"byte_classes", byte_classes_c, METH_VARARGS, "Byte equivalence classes of a byte DFA table."},
    {"merge_twins", merge_twins_c, METH_VARARGS, "Merge states with identical rows, repeatedly."},
    {"live_states", live_states, METH_VARARGS, "States from which an accepting state is reachable."},
    {"trim", trim_c, METH_VARARGS, "A byte DFA's live states, twins merged, with its byte classes."},
    {"chain", chain, METH_VARARGS, "The automaton of one byte string, with its byte classes."},
    {"class_targets", class_targets, METH_VARARGS, "Where every character of a class leads, per state."},
    {"run_first", run_first, METH_VARARGS, "The state most printable ASCII characters lead to, and which do."},
    {"donor_cut", donor_cut, METH_VARARGS, "The first bytes taken from another state's walk, and its rows less the others'."},
    {"donor_parts", donor_parts, METH_VARARGS, "A donor walk's exits of the first bytes taken, and its pending states in the ball."},
    {"prefix_blocks", prefix_blocks, METH_VARARGS, "Blocks of states with equal byte futures up to a depth."},
    {"walk_rows", walk_rows, METH_VARARGS, "Token-trie walk straight into deduplicated packed rows."},
    {"longest_path", longest_path, METH_VARARGS, "Longest path of an acyclic automaton, -1 if cyclic."},
    {"subset", subset, METH_VARARGS, "Subset construction of a position automaton over bytes."},
    {"product", product, METH_VARARGS, "Breadth-first product of automata laid out in one class table."},
    {"lexer_chosen", lexer_chosen, METH_VARARGS, "A longest-match contextual lexer and its states' terminals."},
    {"gadgets", gadgets, METH_VARARGS, "Members of look-alike loop gadgets around self-loop roots."},
    {"walker", walker, METH_VARARGS, "A lexer's walk arguments checked and held once, for walk_at."},
    {"walk_at", (PyCFunction)(void (*)(void))walk_at, METH_FASTCALL, "cwalk's split walk of a walker's lexer."},
    {"reach_tuples", reach_tuples, METH_VARARGS, "Reach bitsets read as sorted tuples of terminals (None: empty or ignored)."},
    {"walk", cwalk, METH_VARARGS, "Depth-first token-trie walk through a DFA (see the file header)."},
    {"token_csr", token_csr, METH_VARARGS, "Tokens ending at each trie node, as CSR arrays."},
    {"token_bits", token_bits, METH_VARARGS, "Packed token mask of the tokens ending at some nodes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cwalk", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cwalk(void) {
    const char *names[4] = {"cells", "stack", "max_read", "depth"};
    for (int i = 0; i < 4; i++)
        if (!lr_names[i] && !(lr_names[i] = PyUnicode_InternFromString(names[i]))) return NULL;
    const char *mt[6] = {"_cross", "feed", "viable", "_sub_count", "lr", "_reach"};
    for (int i = 0; i < 6; i++)
        if (!mt_names[i] && !(mt_names[i] = PyUnicode_InternFromString(mt[i]))) return NULL;
    return PyModule_Create(&module);
}
