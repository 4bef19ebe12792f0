/*
 * stages.c — the host-side stages of a generation around the denoising
 * loop: text (tokenize → text encoder → per-image rows), the initial noise,
 * and the decode (unpack → VAE → RGB8). Each reads the plan and the engine's
 * components; none knows about ranks.
 *
 * One deliberate divergence from diffusers' QwenImagePipeline (spec
 * denoiser.md §3): for several prompts with num_images_per_prompt > 1
 * diffusers tiles the text mask in a different order from the embeddings
 * (a quirk, denoiser spec "num_images_per_prompt"); we repeat both per prompt.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/finite.h"
#include "engine/engine.h"
#include "io/image.h"
#include "model/prompt.h"
#include "sample/latents.h"
#include "sample/rng.h"

double qi_peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

int qi_stage_report(const qi_plan *p, const char *stage, int step, int total) {
    return p->req->progress ? p->req->progress(p->req->progress_user, stage, step, total) : 0;
}

void qi_text_embeds_free(qi_text_embeds *t) {
    free(t->embeds);
    free(t->mask);
    memset(t, 0, sizeof *t);
}

/* Encodes n prompts, then repeats each prompt's rows `repeat` times
 * ([e0, e0, e1, e1, …], as diffusers does for num_images_per_prompt). */
static qi_status encode_prompts(qi_engine *e, const char *const *prompts, int n, int repeat, int max_len,
                                qi_text_embeds *out) {
    qi_prompt_batch pb;
    qi_status st = qi_prompt_tokenize(e->tok, prompts, n, max_len, &pb, &e->err);
    if (st) return st;
    float *emb = NULL;
    int32_t *mask = NULL;
    int L = 0;
    st = qi_text_encoder_encode(e->te, pb.ids, pb.mask, pb.batch, pb.seq_len, max_len, &emb, &mask, &L, &e->err);
    qi_prompt_batch_free(&pb);
    if (st) return st;
    int D = qi_text_encoder_dim(e->te);
    int is_nan = 1;
    int64_t bad = qi_find_nonfinite_f32(emb, (int64_t)n * L * D, &is_nan);
    if (bad >= 0) {
        free(emb);
        free(mask);
        return qi_fail(&e->err, QI_ERR_BACKEND,
                       "text encoder: the prompt embeddings have %s at value %lld (prompt %lld, token "
                       "%lld); nothing was written. The text encoder's weights or precision are at "
                       "fault: check the file, or try another precision",
                       is_nan ? "a NaN" : "an Inf", (long long)bad, (long long)(bad / ((int64_t)L * D)),
                       (long long)(bad / D % L));
    }
    out->batch = n * repeat;
    out->len = L;
    out->dim = D;
    out->embeds = malloc((size_t)out->batch * L * D * sizeof(float));
    out->mask = malloc((size_t)out->batch * L * sizeof(int32_t));
    if (!out->embeds || !out->mask) {
        free(emb);
        free(mask);
        return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for text embeddings");
    }
    out->all_valid = 1;
    for (int p = 0; p < n; p++)
        for (int r = 0; r < repeat; r++) {
            int b = p * repeat + r;
            memcpy(out->embeds + (size_t)b * L * D, emb + (size_t)p * L * D, (size_t)L * D * sizeof(float));
            memcpy(out->mask + (size_t)b * L, mask + (size_t)p * L, (size_t)L * sizeof(int32_t));
        }
    for (size_t i = 0; i < (size_t)out->batch * L; i++)
        if (!out->mask[i]) out->all_valid = 0;
    free(emb);
    free(mask);
    return QI_OK;
}

qi_status qi_stage_text(qi_engine *e, const qi_plan *p, qi_text_embeds text[2]) {
    int max_len = p->req->max_sequence_length;
    if (qi_stage_report(p, "text encoder", 0, p->do_cfg ? 2 : 1))
        return qi_fail(&e->err, QI_ERR_CANCELLED, "generation cancelled");
    qi_status st = encode_prompts(e, p->prompts, p->n_prompts, p->per_prompt, max_len, &text[0]);
    if (st || !p->do_cfg) return st;
    const char **negs = malloc(sizeof(char *) * (size_t)p->n_prompts);
    if (!negs) return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory");
    for (int i = 0; i < p->n_prompts; i++) negs[i] = p->req->negative_prompt;
    st = encode_prompts(e, negs, p->n_prompts, p->per_prompt, max_len, &text[1]);
    free(negs);
    return st;
}

/* torch.randn in the diffusers latent shape, packed. The dtype follows the run
 * (diffusers draws in the dtype of the prompt embeddings) unless the request
 * names one. With the CUDA generator on a backend that draws it (torch's
 * curand kernel, bit for bit) the device draws; elsewhere the values are
 * recomputed on the CPU (the GPU's hardware sine cannot be matched exactly:
 * within ~3e-6). */
qi_status qi_stage_noise(qi_engine *e, const qi_plan *p, float **latents) {
    const qi_request *req = p->req;
    int B = p->batch;
    *latents = malloc(sizeof(float) * (size_t)B * p->img_tokens * p->packed_ch);
    if (!*latents) return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory");
    qi_dtype dt = req->noise_dtype == 1 ? QI_F32 : req->noise_dtype == 2 ? QI_BF16 : e->be->act_dtype;
#ifdef QI_WITH_CUDA
    if (req->rng == QI_RNG_CUDA && qi_backend_supports(e->be, QI_CAP_CUDA_RNG, 0)) {
        qi_latent_shape s;
        qi_status st = qi_latent_shape_of(req->height, req->width, &s, &e->err);
        if (st) return st;
        int64_t total = (int64_t)B * s.per_image;
        float *raw = malloc(sizeof(float) * (size_t)total);
        if (!raw) return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the initial noise");
        st = qi_randn_philox_cuda(req->seed, 0, total, dt, raw, &e->err);
        if (!st) qi_latents_pack(raw, B, s.lat_h, s.lat_w, *latents);
        free(raw);
        return st;
    }
#endif
    return qi_initial_noise(req->seed, req->rng, dt, B, req->height, req->width, *latents, &e->err);
}

/* Unpack → de-normalise → VAE → RGB8, one image at a time. The VAE returns
 * 8-bit pixels (qi_vae_decode_u8): on a GPU the float picture is converted
 * and checked on the device and only its bytes come back, so this stage
 * makes no pass over a float32 picture on the host. */
qi_status qi_stage_decode(qi_engine *e, const qi_plan *p, const float *latents, qi_image *out) {
    int B = p->batch;
    size_t lat_per_image = (size_t)QI_LATENT_CHANNELS * p->lat_h * p->lat_w;
    size_t px_per_image = (size_t)p->width * p->height;
    double t0 = qi_now_s();
    out->latents = malloc(sizeof(float) * B * lat_per_image);
    out->rgb = malloc((size_t)B * px_per_image * 3);
    qi_status st = QI_OK;
    if (!out->latents || !out->rgb)
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for %d images of %dx%d", B, p->width, p->height);
    int is_nan = 1;
    int64_t bad = st ? -1 : qi_find_nonfinite_f32(latents, (int64_t)B * p->img_tokens * p->packed_ch, &is_nan);
    if (bad >= 0) /* caught per step unless QI_CHECK_FINITE=0 or the backend cannot count */
        st = qi_fail(&e->err, QI_ERR_BACKEND,
                     "denoise: the final latents have %s at value %lld; nothing was written",
                     is_nan ? "a NaN" : "an Inf", (long long)bad);
    if (!st)
        qi_latents_to_vae_in(latents, B, p->height, p->width, qi_vae_latents_mean(e->vae),
                             qi_vae_latents_std(e->vae), out->latents);
    double t1 = qi_now_s();
    for (int b = 0; b < B && !st; b++) {
        if (qi_stage_report(p, "vae", b, B)) {
            st = qi_fail(&e->err, QI_ERR_CANCELLED, "generation cancelled");
            break;
        }
        int64_t nonfinite = 0;
        st = qi_vae_decode_u8(e->vae, out->latents + b * lat_per_image, p->lat_h, p->lat_w,
                              out->rgb + (size_t)b * px_per_image * 3, &nonfinite, &e->err);
        if (!st && nonfinite)
            st = qi_fail(&e->err, QI_ERR_BACKEND,
                         "vae: the decoded image %d has %lld NaN or Inf values (of %lld; the latents were finite); "
                         "nothing was written. The VAE's weights or precision are at fault",
                         b, (long long)nonfinite, (long long)(3 * px_per_image));
    }
    e->decode_split.prepare_s = t1 - t0;
    e->decode_split.vae_s = qi_now_s() - t1;
    e->decode_split.on_device = qi_vae_u8_on_device(e->vae, p->lat_h, p->lat_w);
    if (!st) qi_stage_report(p, "vae", B, B);
    if (!st) {
        out->width = p->width;
        out->height = p->height;
        out->count = B;
    }
    return st;
}
