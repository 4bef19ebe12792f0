"""The peer: diffusers (and transformers) on the same shapes, random bf16 weights.

Run on the GPU machine with its PyTorch, diffusers' source on PYTHONPATH (it is
fetched, kept out of git, and carried; see bench/RESULTS.md). Prints one
markdown row per measurement: median of CUDA-event timings after warm-up.

    PYTHONPATH=.peer/src python3 bench/diffusers_peer.py [--compile] [--skip-te]
"""
import argparse
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--runs", type=int, default=7)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--compile", action="store_true", help="also time compile_repeated_blocks()")
p.add_argument("--skip-te", action="store_true")
p.add_argument("--skip-vae", action="store_true")
args = p.parse_args()

from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel  # noqa: E402


def timed(fn, warmup=args.warmup, runs=args.runs):
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(runs):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def row(what, shape, ms, note=""):
    print(f"| diffusers {what} | {shape} | {ms:.1f} ms | {note} |", flush=True)


torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
dev = torch.device("cuda")
t0 = time.time()
with dev:
    tr = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
tr.eval()
print(f"# transformer built in {time.time() - t0:.1f} s, "
      f"{sum(p.numel() for p in tr.parameters()) / 1e9:.2f} B params", flush=True)


def dit_call(h, w, txt=128):
    L = (h // 16) * (w // 16)
    x = torch.randn(1, L, 64, device=dev)
    ctx = torch.randn(1, txt, 3584, device=dev)
    t = torch.full((1,), 0.9, device=dev)

    def f():
        tr(hidden_states=x, encoder_hidden_states=ctx, encoder_hidden_states_mask=None, timestep=t,
           img_shapes=[(1, h // 16, w // 16)], return_dict=False)
    return f


sizes = [(1024, 1024), (1328, 1328), (512, 512)]
for h, w in sizes:
    row("transformer call, eager", f"{w}x{h}, txt 128", timed(dit_call(h, w)))
if args.compile:
    t0 = time.time()
    tr.compile_repeated_blocks(fullgraph=True)
    for h, w in sizes:
        row("transformer call, compile_repeated_blocks", f"{w}x{h}, txt 128",
            timed(dit_call(h, w), warmup=max(args.warmup, 3)))
    print(f"# compiling and timing took {time.time() - t0:.0f} s", flush=True)
del tr
torch.cuda.empty_cache()

if not args.skip_vae:
    with dev:
        vae = AutoencoderKLQwenImage(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                     attn_scales=[], temperal_downsample=[False, True, True])
    vae.eval()
    z = torch.randn(1, 16, 1, 128, 128, device=dev)
    row("VAE decode", "1024x1024", timed(lambda: vae.decode(z, return_dict=False)))
    del vae
    torch.cuda.empty_cache()

if not args.skip_te:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_hidden_layers=28,
                         num_key_value_heads=4, rms_norm_eps=1e-6, vocab_size=152064, rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=1), )
    with dev:
        te = Qwen2_5_VLForConditionalGeneration(cfg)
    te.eval()
    ids = torch.randint(0, 151000, (1, 167), device=dev)
    mask = torch.ones_like(ids)
    row("text encoder", "167 tokens",
        timed(lambda: te(input_ids=ids, attention_mask=mask, output_hidden_states=True)))
print(f"# peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
