#!/usr/bin/env python3
"""Copies the img2img / inpaint tensors the tests read out of shared/reference/edit
into tests/data/shared/reference/edit (same layout, only those tensors).

    scripts/subset-edit-fixtures.py /work/shared/reference/edit tests/data/shared/reference/edit
"""
import json, os, re, shutil, struct, sys

CASES = ["img2img_s06_lightning8_lora", "img2img_s09_cfg4", "inpaint_s10_cfg4", "inpaint_s07_lightning8_lora"]
KEEP = re.compile(r"^(init_resized_u8|mask_resized_u8|mask_condition|mask_packed|vae_enc\.(mean|logvar|eps)|"
                  r"vae_enc1\.eps|image_latents|noise|noised_latents|sigmas|timesteps_used|final_latents|"
                  r"image_u8|call\d+\.(hidden_states|timestep))$")


def subset(src, dst):
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out_header, chunks, off = {}, [], 0
    for name in sorted(k for k in header if k != "__metadata__" and KEEP.match(k)):
        t = header[name]
        a, b = t["data_offsets"]
        chunks.append(body[a:b])
        out_header[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [off, off + (b - a)]}
        off += b - a
    h = json.dumps(out_header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def main(src_root, dst_root):
    for case in CASES:
        os.makedirs(os.path.join(dst_root, case), exist_ok=True)
        shutil.copyfile(os.path.join(src_root, case, "case.json"), os.path.join(dst_root, case, "case.json"))
        subset(os.path.join(src_root, case, "tensors.safetensors"), os.path.join(dst_root, case, "tensors.safetensors"))
    os.makedirs(os.path.join(dst_root, "inputs"), exist_ok=True)
    for png in ["in_a.png", "in_b.png", "in_c.png", "mask_a.png"]:
        shutil.copyfile(os.path.join(src_root, "inputs", png), os.path.join(dst_root, "inputs", png))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
