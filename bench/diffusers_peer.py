"""The peer: diffusers (and transformers) on the same shapes, random bf16 weights.

Run on the GPU machine with its PyTorch, diffusers' source on PYTHONPATH (fetched, kept out of git, carried;
see bench/RESULTS.md). One markdown row per measurement: median of CUDA-event timings after warm-up
(end-to-end rows: wall clock between device synchronisations).

    PYTHONPATH=.peer/src python3 bench/diffusers_peer.py [--compile] [--skip-te]
    PYTHONPATH=.peer/src python3 bench/diffusers_peer.py --edit [--compile] [--dry]

--edit: QwenImageEditPlusPipeline (Edit-2509) built from configs at full size (Qwen-Image's transformer,
Qwen2.5-VL-7B with its vision tower, the VAE with its encoder), one 1024x1024 reference picture, true CFG
off, 4 and 8 steps, the prompt of `qwen-image bench --edit`; the processor from the repository's Qwen2.5
tokenizer and the Qwen-Image-Edit repos' preprocessor settings. --dry: processor and configs only (no
weights, no GPU), prints the picture's token counts.
"""
import argparse, json, math, os, shutil, tempfile, time  # noqa: E401

p = argparse.ArgumentParser()
p.add_argument("--runs", type=int, default=7)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--compile", action="store_true", help="also time compile_repeated_blocks()")
p.add_argument("--skip-te", action="store_true")
p.add_argument("--sizes", default="1024,1328,512", help="transformer call sizes (square), comma-separated")
p.add_argument("--offload", action="store_true",
               help="only the transformer call under diffusers' block-level group offload (its low-VRAM mode), "
                    "without and with a CUDA stream, with the peak device memory of each")
p.add_argument("--offload-stream", choices=["both", "on", "off"], default="both",
               help="--offload: which use_stream settings to time (each builds and moves the 40 GB model once)")
p.add_argument("--skip-vae", action="store_true")
p.add_argument("--edit", action="store_true", help="the Edit-2509 pipeline rows instead")
p.add_argument("--dry", action="store_true", help="--edit: processor and configs only, no weights")
p.add_argument("--tokenizer", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                   "data", "tiny-model", "tokenizer"))
args = p.parse_args()

import torch  # noqa: E402

EDIT_PROMPT = ("Make the cat in Picture 1 wear a red knitted hat and a blue scarf, keep the sunlit library "
               "background, photorealistic, 35mm, shallow depth of field.")  # as app/bench_edit.c
TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                   num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
           temperal_downsample=[False, True, True])
TEXT = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_hidden_layers=28,
            num_key_value_heads=4, rms_norm_eps=1e-6, vocab_size=152064, rope_theta=1e6,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
# Qwen2.5-VL-7B-Instruct's vision_config (its config.json)
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
              in_channels=3, hidden_act="silu", tokens_per_second=2)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


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


def wall(fn, warmup, runs):
    """Median seconds of fn() between device synchronisations (the pipeline mixes host and device work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def row(what, shape, ms, note=""):
    print(f"| diffusers {what} | {shape} | {ms:.1f} ms | {note} |", flush=True)


def edit_processor():
    """Qwen2VLProcessor as the Edit repos' processor/ folder holds it: the Qwen2.5 tokenizer files and the
    image processor's settings (patch 14, merge 2, min/max pixels, CLIP mean/std, bicubic)."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor
    img = dict(do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True, image_mean=CLIP_MEAN,
               image_std=CLIP_STD, max_pixels=12845056, min_pixels=3136, merge_size=2, patch_size=14, resample=3,
               rescale_factor=1 / 255, temporal_patch_size=2, size={"longest_edge": 12845056, "shortest_edge": 3136})
    d = tempfile.mkdtemp()
    try:
        for f in os.listdir(args.tokenizer):
            shutil.copy(os.path.join(args.tokenizer, f), d)
        for name, kind in (("preprocessor_config.json", "image_processor_type"),
                           ("video_preprocessor_config.json", "video_processor_type")):
            with open(os.path.join(d, name), "w") as f:
                json.dump({**img, kind: "Qwen2VL" + kind.split("_")[0].title() + "Processor",
                           "processor_class": "Qwen2VLProcessor"}, f)
        try:
            return Qwen2VLProcessor.from_pretrained(d)
        except Exception as e:  # e.g. no torchvision for the (unused) video processor
            print(f"# processor folder did not load ({type(e).__name__}: {e}); built without the video part")
            return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**img),
                                    tokenizer=AutoTokenizer.from_pretrained(d))
    finally:
        shutil.rmtree(d)


def edit_main():
    import numpy as np
    from PIL import Image
    from transformers import Qwen2_5_VLConfig
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    y, x = np.mgrid[0:1024, 0:1024]
    disc = (x - 512) ** 2 + (y - 341) ** 2 < 1024 * 1024 // 16  # as app/bench_edit.c draws it
    rgb = np.stack([np.where(disc, 230, x * 255 // 1024), np.where(disc, 180, y * 255 // 1024),
                    ((x ^ y) & 0x3F) + np.where(disc, 20, 120)], -1).astype(np.uint8)
    picture = Image.fromarray(rgb, "RGB")
    proc = edit_processor()
    te_cfg = Qwen2_5_VLConfig(text_config=TEXT, vision_config=VISION, image_token_id=151655, video_token_id=151656,
                              vision_start_token_id=151652, vision_end_token_id=151653)
    # the Lightning scheduler: shift fixed at ln 3
    sched = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=math.log(3), max_image_seq_len=8192,
                                            max_shift=math.log(3), num_train_timesteps=1000, shift=1.0,
                                            shift_terminal=None, time_shift_type="exponential",
                                            use_dynamic_shifting=True)
    if args.dry:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions
        cw, ch = calculate_dimensions(384 * 384, 1.0)
        inp = proc(text=["Picture 1: <|vision_start|><|image_pad|><|vision_end|>" + EDIT_PROMPT],
                   images=[picture.resize((cw, ch), Image.LANCZOS)], padding=True, return_tensors="pt")
        print(f"# dry: condition picture {cw}x{ch}, image_grid_thw {inp['image_grid_thw'].tolist()}, "
              f"pixel_values {tuple(inp['pixel_values'].shape)}, {inp['input_ids'].shape[1]} ids (no template); "
              f"vision depth {te_cfg.vision_config.depth}, scheduler shift ln 3: {sched.config.base_shift:.4f}")
        return
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    dev = torch.device("cuda")
    t0 = time.time()
    with dev:
        from transformers import Qwen2_5_VLForConditionalGeneration
        tr = QwenImageTransformer2DModel(**TRANSFORMER).eval().to(torch.bfloat16)  # .to: a no-op when
        te = Qwen2_5_VLForConditionalGeneration(te_cfg).eval().to(torch.bfloat16)  # built in the default dtype
        vae = AutoencoderKLQwenImage(**VAE).eval().to(torch.bfloat16)
    pipe = QwenImageEditPlusPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=proc.tokenizer,
                                     processor=proc, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    n = lambda m: sum(q.numel() for q in m.parameters()) / 1e9  # noqa: E731
    print(f"# Edit pipeline built in {time.time() - t0:.1f} s: transformer {n(tr):.2f} B, text encoder {n(te):.2f} B "
          f"(vision {n(getattr(te.model, 'visual', None) or te.visual):.2f} B), VAE {n(vae):.3f} B params", flush=True)
    cond = pipe.image_processor.resize(picture, 384, 384)  # calculate_dimensions(384², 1) = 384×384
    vae_px = pipe.image_processor.preprocess(picture, 1024, 1024).unsqueeze(2).to(dev, torch.bfloat16)
    tag = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
    inp = proc(text=[tag], images=[cond], return_tensors="pt").to(dev)
    pv, thw = inp["pixel_values"].to(torch.bfloat16), inp["image_grid_thw"]
    with torch.no_grad():
        emb, mask = pipe.encode_prompt(EDIT_PROMPT, image=[cond], device=dev)
    L = emb.shape[1]
    row("Edit vision tower", f"384x384 → {int(thw[0, 2]) * 14}x{int(thw[0, 1]) * 14}, {pv.shape[0]} patches",
        timed(lambda: te.get_image_features(pv, thw)), "pixel values ready (processor not timed)")
    row("Edit encode_prompt (processor + vision tower + text encoder)", f"{L + 64} tokens", timed(
        lambda: pipe.encode_prompt(EDIT_PROMPT, image=[cond], device=dev)), f"{L} rows kept after the template's 64")
    row("Edit VAE encode", "1024x1024", timed(lambda: pipe._encode_vae_image(vae_px, None)), "latent_dist.mode()")
    z = torch.randn(1, 16, 1, 128, 128, device=dev)
    row("VAE decode", "1024x1024", timed(lambda: vae.decode(z, return_dict=False)))
    x = torch.randn(1, 8192, 64, device=dev)
    t = torch.full((1,), 0.9, device=dev)
    call = lambda: tr(hidden_states=x, encoder_hidden_states=emb, encoder_hidden_states_mask=mask,  # noqa: E731
                      timestep=t, img_shapes=[[(1, 64, 64), (1, 64, 64)]], return_dict=False)
    req = lambda s: pipe(image=picture, prompt=EDIT_PROMPT, true_cfg_scale=1.0, num_inference_steps=s,  # noqa: E731
                         generator=torch.Generator(dev).manual_seed(1), output_type="pil")
    runs = min(args.runs, 5)
    for mode in ("eager", "compile_repeated_blocks") if args.compile else ("eager",):
        if mode != "eager":
            t0 = time.time()
            tr.compile_repeated_blocks(fullgraph=True)
        row(f"Edit transformer call, {mode}", f"4096 + 4096 condition tokens, txt {L}",
            timed(call, warmup=max(args.warmup, 3 if mode != "eager" else 1)))
        e2e = {}
        for steps in (4, 8):
            with torch.no_grad():
                e2e[steps] = wall(lambda: req(steps), max(args.warmup, 1), runs)
            print(f"| diffusers Edit-2509 end to end, {mode} | 1024² picture → 1024x1024, {steps} steps, "
                  f"true_cfg 1 | {e2e[steps]:.3f} s | picture + prompt → PIL; median of {runs} |", flush=True)
        row(f"Edit-2509 step, {mode}", "(8-step − 4-step) / 4", (e2e[8] - e2e[4]) / 4 * 1e3, "marginal cost of a step")
        if mode != "eager":
            print(f"# compiling and timing took {time.time() - t0:.0f} s", flush=True)
    print(f"# peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


def t2i_main():
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    dev = torch.device("cuda")
    t0 = time.time()
    with dev:
        tr = QwenImageTransformer2DModel(**TRANSFORMER).eval()
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

    sizes = [(int(n), int(n)) for n in args.sizes.split(",")]
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
            vae = AutoencoderKLQwenImage(**VAE).eval()
        z = torch.randn(1, 16, 1, 128, 128, device=dev)
        row("VAE decode", "1024x1024", timed(lambda: vae.decode(z, return_dict=False)))
        del vae
        torch.cuda.empty_cache()

    if not args.skip_te:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        cfg = Qwen2_5_VLConfig(text_config=TEXT, vision_config=dict(depth=1))
        with dev:
            te = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        ids = torch.randint(0, 151000, (1, 167), device=dev)
        mask = torch.ones_like(ids)
        row("text encoder", "167 tokens",
            timed(lambda: te(input_ids=ids, attention_mask=mask, output_hidden_states=True)))
    print(f"# peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


def offload_main():
    """The low-VRAM peer of `qwen-image bench --vram`: the transformer's weights live in host memory and
    diffusers' group offload copies one block at a time to the GPU (use_stream: the next block's copy on a
    second stream, from pinned memory). One 1024² call; peak device memory from the allocator's counter."""
    from diffusers import QwenImageTransformer2DModel
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    dev = torch.device("cuda")
    for use_stream in {"both": (False, True), "on": (True,), "off": (False,)}[args.offload_stream]:
        t0 = time.time()
        with dev:  # random init on the GPU is fast; then the weights move to host memory
            tr = QwenImageTransformer2DModel(**TRANSFORMER).eval()
        print(f"# offload use_stream={use_stream}: built on the GPU in {time.time() - t0:.1f} s", flush=True)
        tr.to("cpu")
        torch.cuda.empty_cache()
        print(f"# moved to host memory at {time.time() - t0:.1f} s", flush=True)
        tr.enable_group_offload(onload_device=dev, offload_device=torch.device("cpu"), offload_type="block_level",
                                num_blocks_per_group=1, use_stream=use_stream)
        print(f"# group offload enabled at {time.time() - t0:.1f} s", flush=True)
        h = w = 1024
        x = torch.randn(1, (h // 16) * (w // 16), 64, device=dev)
        ctx = torch.randn(1, 128, 3584, device=dev)
        t = torch.full((1,), 0.9, device=dev)
        torch.cuda.reset_peak_memory_stats()

        def f():
            tr(hidden_states=x, encoder_hidden_states=ctx, encoder_hidden_states_mask=None, timestep=t,
               img_shapes=[(1, h // 16, w // 16)], return_dict=False)
        ms = timed(f, warmup=1, runs=min(args.runs, 3))
        peak = torch.cuda.max_memory_allocated() / 2**30
        row(f"transformer call, group offload block_level use_stream={use_stream}", "1024x1024, txt 128", ms,
            f"peak {peak:.2f} GiB")
        del tr
        torch.cuda.empty_cache()


if args.offload:
    offload_main()
elif args.edit:
    edit_main()
else:
    t2i_main()
