/*
 * test_pipeline_parallel.c — claims about several devices through the public
 * API (qi_open_options.devices) and the CLI (--devices): every public case on
 * 2 and 4 simulated CPU ranks gives the single-device image (true CFG as
 * CFG-parallel, and CFG-parallel x Ulysses; Ulysses alone otherwise); a
 * cancel stops every rank and leaves the engine usable; device lists the
 * transformer cannot use are refused by name. In CUDA builds on a machine
 * with a GPU, two ranks sharing GPU 0 are checked against one GPU.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image_check.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "qwen_image.h"
#include "test.h"
#include "testdata.h"

#define MODEL QI_TEST_DATA "/tiny-model"

/* ---- a case run through qi_generate ---------------------------------------------------- */

static double num(const ref_run_case *rc, const char *key) { return ref_run_case_number(rc, key); }

static qi_request case_request(const ref_run_case *rc) {
    qi_request r = qi_request_default();
    r.prompts = rc->prompts;
    r.n_prompts = rc->n_prompts;
    cJSON *neg = cJSON_GetObjectItem(rc->json, "negative_prompt");
    r.negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL;
    r.width = (int)num(rc, "width");
    r.height = (int)num(rc, "height");
    r.steps = (int)num(rc, "steps");
    r.cfg = (float)num(rc, "cfg");
    r.seed = (uint64_t)num(rc, "seed");
    r.scheduler = rc->sched_path;
    return r;
}

static qi_status open_engine(const char *device, const char *devices, qi_test_log *log, qi_engine **e) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = MODEL;
    if (device) o.device = device;
    o.devices = devices;
    o.log = qi_test_log_line;
    o.log_user = log;
    return qi_engine_open(&o, e);
}

/* Case `name` through qi_generate on `devices` (NULL: the one device). */
static qi_status run_case(const ref_run_case *rc, const char *device, const char *devices, qi_test_log *log,
                          qi_image *img) {
    memset(img, 0, sizeof *img);
    qi_engine *e;
    qi_status st = open_engine(device, devices, log, &e);
    if (st == QI_OK && cJSON_IsTrue(cJSON_GetObjectItem(rc->json, "lora")))
        st = qi_engine_add_lora(e, QI_TEST_DATA "/cases/lora.safetensors", 1.0f);
    qi_request r = case_request(rc);
    if (st == QI_OK) st = qi_generate(e, &r, img);
    if (st != QI_OK) fprintf(stderr, "  %s: %s\n", devices ? devices : device, qi_engine_error(e));
    qi_engine_close(e);
    return st;
}

/* The case on one CPU device, then on 2 and 4 CPU ranks: same image (max
 * abs pixel diff <= 1) and vae_in (rel L2 <= 1e-5), in the layout named by
 * want_layout[i] (a fragment of the engine's log line). */
static void case_on_cpu_ranks_matches_one_device(const char *name, const char *const want_layout[2]) {
    static const char *const DEVICES[2] = {"cpu,cpu", "cpu,cpu,cpu,cpu"};
    ref_run_case rc;
    if (ref_run_case_load(name, &rc) != 0) {
        CHECK(0, "case %s loads", name);
        return;
    }
    qi_test_log log = {{0}};
    qi_image one;
    qi_status st = run_case(&rc, NULL, NULL, &log, &one);
    CHECK(st == QI_OK, "%s on one device", name);
    const qi_st_tensor *want = qi_st_file_find(rc.tensors, "vae_in");
    for (int d = 0; st == QI_OK && d < 2; d++) {
        qi_image par;
        log.text[0] = 0;
        double t0 = qi_now_s();
        qi_status pst = run_case(&rc, NULL, DEVICES[d], &log, &par);
        double secs = qi_now_s() - t0;
        CHECK(pst == QI_OK, "%s on %s", name, DEVICES[d]);
        if (pst != QI_OK) continue;
        size_t n_px = (size_t)par.count * par.height * par.width * 3;
        size_t n_lat = (size_t)par.count * 16 * (par.height / 8) * (par.width / 8);
        CHECK(par.count == one.count && par.width == one.width && par.height == one.height, "image shape");
        int maxd = pixel_diff(par.rgb, one.rgb, n_px, NULL);
        double rel = qi_rel_l2(par.latents, one.latents, n_lat);
        double ref_rel = want && want->nbytes == n_lat * 4 ? qi_rel_l2(par.latents, want->data, n_lat) : -1;
        printf("  case %s on %s (%s): vs one device: pixels max abs diff %d, vae_in rel L2 = %.2e%s; "
               "vae_in vs reference rel L2 = %.2e; %.2f s\n",
               name, DEVICES[d], want_layout[d], maxd, rel,
               memcmp(par.latents, one.latents, n_lat * sizeof(float)) ? "" : " (bit-identical)", ref_rel,
               secs);
        CHECK(maxd <= 1, "%s on %s: pixels differ by %d", name, DEVICES[d], maxd);
        CHECK(rel <= 1e-5, "%s on %s: vae_in rel L2 %.3g", name, DEVICES[d], rel);
        CHECK(strstr(log.text, want_layout[d]), "%s on %s: expected the layout '%s'; the log said:\n%s", name,
              DEVICES[d], want_layout[d], log.text);
        qi_image_free(&par);
    }
    qi_image_free(&one);
    ref_run_case_free(&rc);
}

static void zh_cfg4_base_runs_cfg_parallel_and_cfg_x_ulysses(void) {
    const char *const layouts[2] = {"2 cpu ranks: CFG-parallel (cond | uncond), local",
                                    "4 cpu ranks: CFG-parallel (cond | uncond) x 2-way Ulysses, local"};
    case_on_cpu_ranks_matches_one_device("zh_cfg4_base", layouts);
}

static void en_lightning8_lora_runs_ulysses(void) {
    const char *const layouts[2] = {"2 cpu ranks: 2-way Ulysses, local", "4 cpu ranks: 4-way Ulysses, local"};
    case_on_cpu_ranks_matches_one_device("en_lightning8_lora", layouts);
}

static void batch2_lightning4_lora_runs_ulysses(void) {
    const char *const layouts[2] = {"2 cpu ranks: 2-way Ulysses, local", "4 cpu ranks: 4-way Ulysses, local"};
    case_on_cpu_ranks_matches_one_device("batch2_lightning4_lora", layouts);
}

/* ---- the engine over several generations ----------------------------------------------- */

typedef struct cancel_at {
    int step, calls;
} cancel_at;

static int cancel_progress(void *user, const char *stage, int step, int total) {
    (void)total;
    cancel_at *c = user;
    if (strcmp(stage, "denoise")) return 0;
    c->calls++;
    return step == c->step;
}

/* Cancelling in the middle of a CFG x Ulysses loop stops all 4 ranks at
 * that step; the same engine then still generates the single-device image
 * (its communicators survived), and a request too small for 4 ranks is
 * refused before any rank starts. */
static void cancel_and_errors_leave_the_ranks_usable(void) {
    ref_run_case rc;
    if (ref_run_case_load("zh_cfg4_base", &rc) != 0) {
        CHECK(0, "case loads");
        return;
    }
    qi_test_log log = {{0}};
    qi_image one, img;
    CHECK(run_case(&rc, NULL, NULL, &log, &one) == QI_OK, "one device");
    qi_engine *e;
    qi_status st = open_engine(NULL, "cpu,cpu,cpu,cpu", &log, &e);
    CHECK(st == QI_OK, "open: %s", qi_engine_error(e));
    if (st == QI_OK) {
        qi_request r = case_request(&rc);
        cancel_at c = {.step = 2};
        r.progress = cancel_progress;
        r.progress_user = &c;
        double t0 = qi_now_s();
        st = qi_generate(e, &r, &img);
        CHECK(st == QI_ERR_CANCELLED && strstr(qi_engine_error(e), "cancelled"), "cancel: %s (%s)",
              qi_status_name(st), qi_engine_error(e));
        CHECK(c.calls == 3, "progress called for steps 0, 1, 2, then stopped: %d calls", c.calls);
        printf("  cancelled at step 2 of %d on 4 ranks in %.3f s: %s\n", r.steps, qi_now_s() - t0,
               qi_engine_error(e));

        r.progress = NULL;
        r.width = r.height = 16; /* one image token for 2-way Ulysses groups */
        st = qi_generate(e, &r, &img);
        CHECK(st == QI_ERR_ARG && strstr(qi_engine_error(e), "image tokens"), "16x16 on 4 ranks: %s",
              qi_engine_error(e));
        printf("  16x16 on 4 ranks with CFG: %s\n", qi_engine_error(e));

        r = case_request(&rc);
        st = qi_generate(e, &r, &img);
        CHECK(st == QI_OK, "after a cancel and an error: %s", qi_engine_error(e));
        if (st == QI_OK) {
            size_t n_px = (size_t)img.count * img.height * img.width * 3;
            int maxd = pixel_diff(img.rgb, one.rgb, n_px, NULL);
            printf("  the next generation on the same ranks: pixels max abs diff %d vs one device\n", maxd);
            CHECK(maxd <= 1, "pixels differ by %d", maxd);
            qi_image_free(&img);
        }
    }
    qi_engine_close(e);
    qi_image_free(&one);
    ref_run_case_free(&rc);
}

/* A list of one device is that device; devices beats device. */
static void a_list_of_one_is_the_single_device(void) {
    qi_request r = qi_request_default();
    r.prompt = "one";
    r.width = r.height = 32;
    r.steps = 2;
    qi_test_log log = {{0}};
    qi_engine *a, *b;
    qi_image ia, ib;
    CHECK(open_engine(NULL, NULL, &log, &a) == QI_OK && open_engine("cuda:7", " cpu ", &log, &b) == QI_OK,
          "open: %s", log.text);
    CHECK(qi_generate(a, &r, &ia) == QI_OK && qi_generate(b, &r, &ib) == QI_OK, "generate");
    CHECK(!memcmp(ia.rgb, ib.rgb, (size_t)32 * 32 * 3), "devices \" cpu \" gives the cpu image");
    qi_image_free(&ia);
    qi_image_free(&ib);
    qi_engine_close(a);
    qi_engine_close(b);
}

static void refused(const char *devices, const char *want1, const char *want2) {
    qi_test_log log = {{0}};
    qi_engine *e;
    qi_status st = open_engine(NULL, devices, &log, &e);
    const char *msg = qi_engine_error(e);
    CHECK(st == QI_ERR_ARG && strstr(msg, want1) && strstr(msg, want2), "devices \"%s\": %s, '%s'", devices,
          qi_status_name(st), msg);
    printf("  \"%s\": %s\n", devices, msg);
    qi_engine_close(e);
}

static void device_lists_the_model_cannot_use_are_refused_by_name(void) {
    refused("cpu,cpu,cpu", "3 devices", "4 attention heads"); /* the tiny model has 4 heads */
    refused("cpu,tpu:0", "'tpu:0'", "cuda:N");
    refused("cpu,,cpu", "device 2 is empty", "cpu, cuda or cuda:N");
    refused("cuda:0,cuda:x", "'cuda:x'", "cuda:N");
    refused("cpu,cuda:0", "mixes cpu and cuda", "one kind");
}

/* ---- the CLI ---------------------------------------------------------------------------- */

static int read_file(const char *path, char **data, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = malloc((size_t)*size + 1);
    size_t got = fread(*data, 1, (size_t)*size, f);
    fclose(f);
    return got == (size_t)*size ? 0 : -1;
}

static void cli_devices_flag_writes_the_same_png(void) {
    char out[8192], dir[] = "/tmp/qi_devices_XXXXXX";
    CHECK(mkdtemp(dir), "temp dir");
    const char *common = "-p 'a red apple' -n ' ' --cfg 4 --steps 2 -W 64 -H 32";
    int rc1 = run_shell(out, sizeof out, "%s generate -m %s %s --quiet -o %s/one.png", qi_cli(), MODEL, common, dir);
    CHECK(rc1 == 0, "one device: %s", out);
    int rc2 = run_shell(out, sizeof out, "%s generate -m %s %s --devices cpu,cpu,cpu,cpu -o %s/four.png", qi_cli(),
                      MODEL, common, dir);
    CHECK(rc2 == 0 && strstr(out, "CFG-parallel"), "--devices cpu,cpu,cpu,cpu: %s", out);
    char p1[512], p2[512], *a = NULL, *b = NULL;
    long na = 0, nb = 0;
    snprintf(p1, sizeof p1, "%s/one.png", dir);
    snprintf(p2, sizeof p2, "%s/four.png", dir);
    CHECK(read_file(p1, &a, &na) == 0 && read_file(p2, &b, &nb) == 0, "both images written");
    CHECK(a && b && na == nb && !memcmp(a, b, (size_t)na), "the PNG files differ (%ld vs %ld bytes)", na, nb);
    free(a);
    free(b);
    int rc3 = run_shell(out, sizeof out, "%s generate -m %s -p x --devices cpu,cpu,cpu -o %s/three.png", qi_cli(),
                      MODEL, dir);
    CHECK(rc3 == 2 && strstr(out, "3 devices") && strstr(out, "4 attention heads"), "exit %d: %s", rc3, out);
    printf("  --devices cpu,cpu,cpu: exit %d, %s", rc3, out);
    CHECK(run_shell(out, sizeof out, "%s generate --help", qi_cli()) == 0 && strstr(out, "--devices LIST"),
          "usage lists --devices");
    run_shell(out, sizeof out, "rm -rf %s", dir);
}

/* ---- CUDA ---------------------------------------------------------------------------- */

#ifdef QI_WITH_CUDA
/* Two ranks sharing GPU 0 (host-staged communicator; NCCL needs one GPU
 * per rank) against one GPU, bf16: mean abs pixel difference <= 3/255. */
static void two_ranks_on_one_gpu_match_one_gpu(void) {
    const char *const names[] = {"zh_cfg4_base", "en_lightning8_lora"};
    for (int i = 0; i < 2; i++) {
        ref_run_case rc;
        if (ref_run_case_load(names[i], &rc) != 0) {
            CHECK(0, "case loads");
            return;
        }
        qi_test_log log = {{0}};
        qi_image one, two;
        qi_status st1 = run_case(&rc, "cuda", NULL, &log, &one);
        if (st1 != QI_OK) {
            /* only a missing device is a skip; any other failure on a GPU machine fails */
            if (st1 == QI_ERR_UNSUPPORTED) printf("  skipped: no CUDA device\n");
            else CHECK(0, "%s on one GPU: status %d", names[i], (int)st1);
            ref_run_case_free(&rc);
            return;
        }
        log.text[0] = 0;
        qi_status st = run_case(&rc, NULL, "cuda:0,cuda:0", &log, &two);
        CHECK(st == QI_OK, "%s on cuda:0,cuda:0", names[i]);
        if (st == QI_OK) {
            size_t n_px = (size_t)two.count * two.height * two.width * 3;
            double mean;
            int maxd = pixel_diff(two.rgb, one.rgb, n_px, &mean);
            printf("  case %s on cuda:0,cuda:0: pixels mean abs diff %.4f, max %d vs one GPU\n", names[i], mean, maxd);
            CHECK(mean <= 3.0, "%s: mean abs pixel diff %.3f", names[i], mean);
            CHECK(strstr(log.text, "share a GPU"), "log: %s", log.text);
            qi_image_free(&two);
        }
        qi_image_free(&one);
        ref_run_case_free(&rc);
    }
}
#endif

int main(void) {
    RUN(zh_cfg4_base_runs_cfg_parallel_and_cfg_x_ulysses);
    RUN(en_lightning8_lora_runs_ulysses);
    RUN(batch2_lightning4_lora_runs_ulysses);
    RUN(cancel_and_errors_leave_the_ranks_usable);
    RUN(a_list_of_one_is_the_single_device);
    RUN(device_lists_the_model_cannot_use_are_refused_by_name);
    RUN(cli_devices_flag_writes_the_same_png);
#ifdef QI_WITH_CUDA
    RUN(two_ranks_on_one_gpu_match_one_gpu);
#endif
    TEST_END();
}
