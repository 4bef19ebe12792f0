#!/usr/bin/env python3
"""Copies the subset of shared/reference/edit the Edit tests read into
tests/data/edit (standard library only): each Edit case's case.json and the
tensors named below (pixel_values cut to its first and last rows), plus the
Edit text encoder's config.json. Run from the repository root:

    python3 dev/edit/make_testdata.py /work/shared/reference/edit
"""
import json, os, shutil, struct, sys

CASES = ["edit2509_1img_lightning4_lora", "edit2509_1img_lightning4_lora_plainpos",
         "edit2509_2img_cfg4", "edit2511_2img_lightning4_lora"]
KEEP = ["image_grid_thw", "input_ids", "attention_mask", "mm_token_type_ids", "te.position_ids",
        "prompt_embeds", "neg.input_ids", "neg.attention_mask", "neg.mm_token_type_ids",
        "neg.te.position_ids", "neg.prompt_embeds", "vision.pooler_output", "vision.window_index",
        "vision.cu_window_seqlens"]
KEEP_PREFIX = ["cond0.vl_", "cond1.vl_"]
# the denoising (not for plainpos): every call's prediction, the steps, the condition latents
DENOISE = ["image_latents", "noise", "sigmas", "timesteps", "final_latents", "call0.noise_pred_all_tokens",
           "image_u8"]
DENOISE_PREFIX = ["call", "step", "cond0.vae_mean", "cond1.vae_mean"]
HEAD_ROWS, TAIL_ROWS = 8, 4


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            f.seek(base + a)
            out[k] = (v["dtype"], v["shape"], f.read(b - a))
        return out


def write(path, tensors):
    hdr, blobs, off = {}, [], 0
    for k in sorted(tensors):
        dt, shape, raw = tensors[k]
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main(src):
    dst = os.path.join("tests", "data", "edit")
    for case in CASES:
        t = read(os.path.join(src, case, "tensors.safetensors"))
        # plainpos shares its pictures with edit2509_1img: only its token tensors are kept
        pictures = not case.endswith("_plainpos")
        keep = {k: v for k, v in t.items()
                if k in KEEP or (pictures and any(k.startswith(p) for p in KEEP_PREFIX))}
        if pictures:
            for k, v in t.items():
                if k in DENOISE or (any(k.startswith(p) for p in DENOISE_PREFIX)
                                    and not k.endswith("encoder_hidden_states")):
                    keep[k] = v
            dt, shape, raw = t["pixel_values"]
            row = shape[1] * 4
            keep["pixel_values.head"] = (dt, [HEAD_ROWS, shape[1]], raw[:HEAD_ROWS * row])
            keep["pixel_values.tail"] = (dt, [TAIL_ROWS, shape[1]], raw[-TAIL_ROWS * row:])
        os.makedirs(os.path.join(dst, case), exist_ok=True)
        write(os.path.join(dst, case, "tensors.safetensors"), keep)
        shutil.copy(os.path.join(src, case, "case.json"), os.path.join(dst, case, "case.json"))
    shutil.copy(os.path.join(src, "sizes.json"), os.path.join(dst, "sizes.json"))
    os.makedirs(os.path.join(dst, "inputs"), exist_ok=True)
    for png in ["in_a.png", "in_b.png", "in_c.png"]:
        shutil.copy(os.path.join(src, "inputs", png), os.path.join(dst, "inputs", png))
    for m in ["model-2509", "model-2511"]:
        for comp, weights in [("text_encoder", "model.safetensors"),
                              ("transformer", "diffusion_pytorch_model.safetensors")]:
            d = os.path.join(dst, m, comp)
            os.makedirs(d, exist_ok=True)
            target = os.path.join(d, "config.json")
            if os.path.exists(target):
                os.chmod(target, 0o644)
            shutil.copy(os.path.join(src, m, comp, "config.json"), d)
            link = os.path.join(d, weights)
            if not os.path.lexists(link):
                os.symlink("../../../tiny-model/%s/%s" % (comp, weights), link)
        # the rest of the diffusers layout, for the engine (the tiny model's own parts)
        for name in ["model_index.json", os.path.join("scheduler", "scheduler_config.json")]:
            os.makedirs(os.path.dirname(os.path.join(dst, m, name)), exist_ok=True)
            target = os.path.join(dst, m, name)
            if os.path.exists(target):
                os.chmod(target, 0o644)
            shutil.copy(os.path.join(src, m, name), target)
        for comp in ["tokenizer", "vae"]:
            link = os.path.join(dst, m, comp)
            if not os.path.lexists(link):
                os.symlink("../../tiny-model/" + comp, link)


if __name__ == "__main__":
    main(sys.argv[1])
