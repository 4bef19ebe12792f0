/*
 * test_backend_ops.c — every op case of backend_cases.h on every backend of
 * the build, one line per case × backend:
 *   - the CPU backend against the op's formula in double precision;
 *   - any other backend (CUDA) against the CPU backend on the same inputs;
 *   - on each backend, a fused op against the composition of plain ops it
 *     replaces, and an in-place call against the out-of-place one ("twin").
 * Tolerances and their reasons are in backend_cases.h.
 *
 *   test_backend_ops [-b cpu,cuda] [-l] [FILTER]
 *
 * -b: the backends to judge (default: cpu, and cuda in a CUDA build; the CPU
 * backend is made in any case, as the reference). FILTER: only the cases
 * whose name contains it, e.g. "attention" or "rope [1, 4224". -l: list the
 * cases and what each covers. QI_TEST_SEED sets the inputs' seed (default 1);
 * each case draws from its own seed, so a filter reproduces the same data.
 * ctest runs "-b cpu" as test_backend_ops and "-b cuda" as
 * test_backend_ops_cuda (label cuda).
 */
#include "backend_cases.h"

static qi_backend *ref_cpu; /* the CPU backend: judged as "cpu" and the other backends' reference */

typedef struct line {
    char text[768];
    size_t len;
} line;

static void say(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(line *l, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->text + l->len, sizeof l->text - l->len, fmt, ap);
    va_end(ap);
    if (n > 0) l->len = l->len + (size_t)n < sizeof l->text ? l->len + (size_t)n : sizeof l->text - 1;
}

static int have_outputs(float **out) {
    for (int i = 0; i < BC_MAX_T; i++)
        if (out[i]) return 1;
    return 0;
}

static int n_outputs(const bc_inst *in) {
    int n = 0;
    for (int i = 0; i < BC_MAX_T; i++) n += in->t[i].out;
    return n;
}

/* The op's outputs on `be` against the formula (CPU) or the CPU's outputs. */
static void judge_outputs(const bc_inst *in, int is_cpu, float **out, float **cpu_out, const char *what, line *l) {
    const bc_op *op = in->c->op;
    for (int i = 0; i < BC_MAX_T; i++) {
        const bc_host *h = &in->t[i];
        if (!h->out) continue;
        bc_tols tol = op->tols;
        if (op->adjust) op->adjust(in, i, &tol);
        const int64_t row = op->row_metric ? h->ne[h->ndim - 1] : 0;
        double e, limit = is_cpu ? tol.ref : tol.dev;
        if (is_cpu) {
            double *r = malloc((size_t)h->n * sizeof(double));
            op->ref(in, i, r);
            e = bc_err(out[i], r, NULL, h->n, row);
            free(r);
        } else {
            e = bc_err(out[i], NULL, cpu_out[i], h->n, row);
        }
        if (n_outputs(in) > 1) say(l, "[t%d] ", i);
        say(l, "%s %.2e (tol %.1e)  ", is_cpu ? "vs formula" : "vs cpu", e, limit);
        CHECK(e <= limit, "%s: output t%d: relative L2 %.3e %s over tolerance %.1e%s", what, i, e,
              is_cpu ? "against the formula" : "against the CPU backend", limit,
              e != e ? " (NaN: an element not written, or a NaN computed)" : "");
    }
}

/* The op against its twin on the same backend. */
static void judge_twin(qi_backend *be, const bc_inst *in, int is_cpu, float **out, const char *what, line *l) {
    const bc_op *op = in->c->op;
    if (!op->twin || (op->twin_for && !op->twin_for(in->c))) return;
    float *tw[BC_MAX_T];
    qi_error err = {{0}};
    qi_status st = bc_run(be, in, 1, tw, &err);
    CHECK(st == QI_OK, "%s: the twin (plain ops) failed: %s", what, err.msg);
    for (int i = 0; i < BC_MAX_T && st == QI_OK; i++) {
        const bc_host *h = &in->t[i];
        if (!h->out) continue;
        bc_tols tol = op->tols;
        if (op->adjust) op->adjust(in, i, &tol);
        const double limit = is_cpu ? tol.twin_cpu : tol.twin_dev;
        if (n_outputs(in) > 1) say(l, "[t%d] ", i);
        if (limit == 0) {
            int64_t differ = 0;
            for (int64_t k = 0; k < h->n; k++) differ += qi_f32_bits(out[i][k]) != qi_f32_bits(tw[i][k]);
            say(l, "twin %s", differ ? "DIFFERS" : "bit-identical  ");
            CHECK(differ == 0, "%s: output t%d: %lld of %lld elements differ from the twin (%s), which must give "
                  "the same bits", what, i, (long long)differ, (long long)h->n,
                  op->twin_for ? "the out-of-place call" : "the plain-op composition");
        } else {
            double e = bc_err(out[i], NULL, tw[i], h->n, 0);
            say(l, "twin %.2e (tol %.1e)  ", e, limit);
            CHECK(e <= limit, "%s: output t%d: relative L2 %.3e against the twin over tolerance %.1e", what, i, e,
                  limit);
        }
    }
    bc_outs_free(tw);
}

/* One case on one backend: one line, ok or FAIL. */
static void judge(qi_backend *be, const char *be_name, const bc_inst *in, float **cpu_out, const char *name) {
    const int before = qi_test_failed_checks, is_cpu = be == ref_cpu;
    char what[320];
    snprintf(what, sizeof what, "%s on %s", name, be_name);
    line l = {{0}, 0};
    float *out[BC_MAX_T];
    qi_error err = {{0}};
    qi_status st = bc_run(be, in, 0, out, &err);
    if (st != QI_OK) {
        say(&l, "the op failed: %s", err.msg);
        CHECK(0, "%s: the op failed: %s", what, err.msg);
    } else if (!is_cpu && !have_outputs(cpu_out)) {
        say(&l, "no CPU reference (it failed above)");
        CHECK(0, "%s: no CPU reference", what);
    } else {
        judge_outputs(in, is_cpu, out, cpu_out, what, &l);
        judge_twin(be, in, is_cpu, out, what, &l);
    }
    bc_outs_free(out);
    const int ok = qi_test_failed_checks == before;
    ok ? qi_test_passed++ : qi_test_failed++;
    printf("%-4s %-5s %-66s %s\n", ok ? "ok" : "FAIL", be_name, name, l.text);
    fflush(stdout);
}

typedef struct target {
    const char *name;
    qi_backend *be;
} target;

/* The backends named in `list` (comma-separated); one that cannot be made is
 * a failed claim, and left out. */
static int open_targets(char *list, target *t, int cap) {
    int n = 0;
    for (char *tok = strtok(list, ","); tok && n < cap; tok = strtok(NULL, ",")) {
        if (strcmp(tok, "cpu") == 0) {
            t[n].name = "cpu", t[n].be = ref_cpu, n++;
            continue;
        }
        qi_error err = {{0}};
        qi_backend *be = NULL;
        if (qi_backend_create(tok, 0, (size_t)12 << 30, &be, &err) != QI_OK) {
            printf("FAIL %-5s cannot create the backend: %s\n", tok, err.msg);
            CHECK(0, "backend %s: %s", tok, err.msg);
            qi_test_failed++;
            continue;
        }
        t[n].name = tok, t[n].be = be, n++;
    }
    return n;
}

static void list_cases(void) {
    char name[256];
    for (int k = 0; k < BC_N_CASES; k++) {
        bc_case_name(&bc_cases[k], name, sizeof name);
        printf("%-66s %s\n", name, bc_cases[k].why);
    }
}

int main(int argc, char **argv) {
#ifdef QI_WITH_CUDA
    char backends[256] = "cpu,cuda";
#else
    char backends[256] = "cpu";
#endif
    const char *filter = NULL;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "-b") == 0 && a + 1 < argc) {
            snprintf(backends, sizeof backends, "%s", argv[++a]);
        } else if (strcmp(argv[a], "-l") == 0) {
            list_cases();
            return 0;
        } else if (argv[a][0] == '-') {
            fprintf(stderr, "usage: %s [-b cpu,cuda] [-l] [FILTER]\n", argv[0]);
            return 2;
        } else {
            filter = argv[a];
        }
    }
    const char *seed_env = getenv("QI_TEST_SEED");
    const uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : 1;
    printf("seed %llu (QI_TEST_SEED to change), backends %s%s%s\n", (unsigned long long)seed, backends,
           filter ? ", cases matching " : "", filter ? filter : "");
    qi_error err = {{0}};
    bc_must(qi_backend_cpu_create(0, 0, &ref_cpu, &err), "cpu backend", &err);
    target targets[8];
    const int nt = open_targets(backends, targets, 8);
    int matched = 0;
    for (int k = 0; k < BC_N_CASES; k++) {
        char name[256];
        bc_case_name(&bc_cases[k], name, sizeof name);
        if (filter && !strstr(name, filter)) continue;
        matched++;
        bc_inst in;
        bc_inst_build(&bc_cases[k], seed * 0x9e3779b97f4a7c15ull + (uint64_t)k, &in);
        float *cpu_out[BC_MAX_T] = {0};
        for (int b = 0; b < nt; b++) {
            if (targets[b].be != ref_cpu && !have_outputs(cpu_out)) {
                qi_status st = bc_run(ref_cpu, &in, 0, cpu_out, &err);
                CHECK(st == QI_OK, "%s: the CPU reference failed: %s", name, err.msg);
            }
            judge(targets[b].be, targets[b].name, &in, cpu_out, name);
        }
        bc_outs_free(cpu_out);
        bc_inst_free(&in);
    }
    CHECK(matched > 0, "no case matches '%s' (-l lists them)", filter ? filter : "");
    if (matched == 0) qi_test_failed++;
    for (int b = 0; b < nt; b++)
        if (targets[b].be != ref_cpu) targets[b].be->ops->destroy(targets[b].be);
    ref_cpu->ops->destroy(ref_cpu);
    TEST_END();
}
