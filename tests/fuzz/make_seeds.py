#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, made from tests/data (nothing is
downloaded). Usage: make_seeds.py OUT_DIR [DATA_DIR]; writes OUT_DIR/<target>/.

The files are small on purpose (libFuzzer mutates small inputs faster and
the repository keeps none of them): safetensors and GGUF files keep their
headers, metadata and name sets with every tensor shrunk to a few elements
(consistently, so scale tensors still match their weights) and their data
cut to match; tokenizer seeds use a mini vocabulary (the 256 byte symbols,
the first merges of tests/data's merges.txt, three special tokens).
"""
import json
import os
import struct
import sys
import zlib

OUT = sys.argv[1]
DATA = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
SEP = b"\n--8<--\n"  # fuzz.h FUZZ_SEP


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def data_files(suffix):
    seen, out = set(), []
    for root, _, files in os.walk(DATA, followlinks=True):
        for f in sorted(files):
            p = os.path.realpath(os.path.join(root, f))
            if f.endswith(suffix) and p not in seen:
                seen.add(p)
                out.append(p)
    return sorted(out)


# ---- safetensors ------------------------------------------------------------------------

ST_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E4M3FN": 1, "F8_E5M2": 1, "I32": 4, "I64": 8, "U8": 1,
           "F64": 8, "I8": 1, "I16": 2, "BOOL": 1}


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    return hdr, data


def write_st(entries, meta=None):
    """entries: [(name, dtype, shape, bytes)] -> a safetensors image."""
    hdr, blob = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in entries:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def shrink_st(path, keep=24):
    hdr, data = read_st(path)
    meta = hdr.pop("__metadata__", None)
    names = sorted(hdr)
    special = [n for n in names if any(s in n for s in ("scale", "comfy_quant", "scaled_fp8", "alpha"))]
    chosen = sorted(set(names[:keep]) | set(special[:keep]))
    entries = []
    for n in chosen:
        e = hdr[n]
        b, _ = e["data_offsets"]
        if e["dtype"] == "U8" and e["data_offsets"][1] - b <= 4096:
            shape = e["shape"]  # a comfy_quant JSON blob: kept whole
        else:
            shape = [min(d, 4) for d in e["shape"]]
        size = ST_SIZE.get(e["dtype"], 1)
        for d in shape:
            size *= d
        entries.append((n, e["dtype"], shape, data[b:b + size].ljust(size, b"\0")))
    return write_st(entries, meta)


def safetensors_seeds():
    for p in data_files(".safetensors"):
        put("safetensors", os.path.basename(os.path.dirname(p)) + "_" + os.path.basename(p), shrink_st(p))
    put("safetensors", "empty_header", write_st([]))
    put("safetensors", "metadata_only", write_st([], {"format": "pt", "note": "x"}))
    put("safetensors", "all_dtypes", write_st([(dt.lower(), dt, [2], b"\1" * 2 * sz) for dt, sz in ST_SIZE.items()
                                               if dt in ("F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I32", "I64", "U8")]))


# ---- GGUF -------------------------------------------------------------------------------

GG_BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
            10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210)}
GG_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GReader:
    def __init__(self, d):
        self.d, self.o = d, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.o)
        self.o += struct.calcsize("<" + fmt)
        return v if len(v) > 1 else v[0]

    def string(self):
        n = self.take("Q")
        s = self.d[self.o:self.o + n]
        self.o += n
        return s

    def value(self, t, cap):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("I"), self.take("Q")
            vals = [self.value(et, cap) for _ in range(n)]
            return (et, vals[:cap])
        return self.take(GG_FMT[t])


def g_string(s):
    s = s if isinstance(s, bytes) else s.encode()
    return struct.pack("<Q", len(s)) + s


def g_value(t, v):
    if t == 8:
        return g_string(v)
    if t == 9:
        et, vals = v
        return struct.pack("<IQ", et, len(vals)) + b"".join(g_value(et, x) for x in vals)
    return struct.pack("<" + GG_FMT[t], v)


def write_gguf(kvs, tensors, align=32):
    """kvs: [(key, type, value)], tensors: [(name, ne list (GGUF order), ggml type, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += g_string(k) + struct.pack("<I", t) + g_value(t, v)
    blob = b""
    for name, ne, t, raw in tensors:
        blob += b"\0" * (-len(blob) % align)
        out += g_string(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
        out += struct.pack("<IQ", t, len(blob))
        blob += raw
    out += b"\0" * (-len(out) % align)
    return out + blob


def shrink_gguf(path, keep=16, cap=16):
    with open(path, "rb") as f:
        d = f.read()
    r = GReader(d)
    r.o = 4
    _, nt, nkv = r.take("IQQ")
    kvs = []
    for _ in range(nkv):
        k = r.string()
        t = r.take("I")
        kvs.append((k, t, r.value(t, cap)))
    infos = []
    for _ in range(nt):
        name = r.string()
        nd = r.take("I")
        ne = [r.take("Q") for _ in range(nd)]
        t, off = r.take("I"), r.take("Q")
        infos.append((name, ne, t, off))
    data_start = r.o + (-r.o % 32)
    by_type, tensors = {}, []
    for name, ne, t, off in infos:  # a few of each type, shrunk to one or two blocks
        if t not in GG_BLOCK or by_type.get(t, 0) >= 2 or len(tensors) >= keep:
            continue
        by_type[t] = by_type.get(t, 0) + 1
        blk, bsz = GG_BLOCK[t]
        ne2 = [blk if blk > 1 else min(ne[0], 8)] + [min(x, 2) for x in ne[1:]]
        n = 1
        for x in ne2:
            n *= x
        size = n // blk * bsz
        tensors.append((name, ne2, t, d[data_start + off:data_start + off + size]))
    return write_gguf(kvs, tensors)


# ---- a mini tokenizer -------------------------------------------------------------------

def byte_symbols():
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE]
    sym, k = {}, 0
    for b in range(256):
        if b in printable:
            sym[b] = chr(b)
        else:
            sym[b] = chr(0x100 + k)
            k += 1
    return [sym[b] for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def mini_tokenizer(n_merges=300):
    vocab = {s: i for i, s in enumerate(byte_symbols())}
    merges = []
    with open(os.path.join(DATA, "tiny-model", "tokenizer", "merges.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith("#version") or not line:
                continue
            a, b = line.split(" ")
            if a in vocab and b in vocab:
                merges.append(line)
                vocab.setdefault(a + b, len(vocab))
                if len(merges) >= n_merges:
                    break
    first_special = len(vocab)
    return vocab, merges, first_special


def tokenizer_files_seeds():
    vocab, merges, first = mini_tokenizer()
    vocab_json = json.dumps(vocab, ensure_ascii=False).encode()
    merges_txt = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode()
    decoder = {str(first + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    config = json.dumps({"added_tokens_decoder": decoder, "pad_token": "<|endoftext|>"}).encode()
    added = json.dumps({s: first + i for i, s in enumerate(SPECIALS)}).encode()
    text = "<|im_start|>user\nA cat in the snow, 3 fish \u732b\u00e9e\u0301!<|im_end|>".encode()
    put("tokenizer_files", "mini_all", SEP.join([vocab_json, merges_txt, config, added, text]))
    put("tokenizer_files", "mini_crlf_added_only", SEP.join([vocab_json, merges_txt.replace(b"\n", b"\r\n"), b"", added,
                                                              b"hello world"]))
    lstrip = dict(decoder)
    lstrip[str(first + 1)] = dict(decoder[str(first + 1)], lstrip=True, rstrip=True)
    put("tokenizer_files", "mini_lstrip_null_pad",
        SEP.join([vocab_json, merges_txt, json.dumps({"added_tokens_decoder": lstrip, "pad_token": None}).encode()]))
    return vocab, merges, first


def gguf_tokenizer_seed(vocab, merges, first):
    tokens = sorted(vocab, key=vocab.get) + SPECIALS
    types = [1] * first + [3] * len(SPECIALS)
    kvs = [("general.architecture", 8, "qwen2vl"), ("tokenizer.ggml.model", 8, "gpt2"),
           ("tokenizer.ggml.pre", 8, "qwen2"),
           ("tokenizer.ggml.tokens", 9, (8, [t.encode() for t in tokens])),
           ("tokenizer.ggml.token_type", 9, (5, types)),
           ("tokenizer.ggml.merges", 9, (8, [m.encode() for m in merges])),
           ("tokenizer.ggml.padding_token_id", 4, first),
           # one key of every other value type, and an array of arrays
           ("t.u8", 0, 1), ("t.i8", 1, -1), ("t.u16", 2, 2), ("t.i16", 3, -2), ("t.i32", 5, -3), ("t.f32", 6, 0.5),
           ("t.bool", 7, True), ("t.u64", 10, 2 ** 63), ("t.i64", 11, -4), ("t.f64", 12, 0.25),
           ("t.nested", 9, (9, [(4, [1, 2]), (8, [b"a", b""])])), ("general.alignment", 4, 64)]
    tensors = [("token_embd.weight", [8, 2], 0, b"\0" * 64), ("q8", [32, 1], 8, b"\1" * 34)]
    put("gguf", "mini_tokenizer.gguf", write_gguf(kvs, tensors, align=64))


def gguf_seeds():
    for p in data_files(".gguf"):
        put("gguf", os.path.basename(p), shrink_gguf(p))
    put("gguf", "empty_v2", b"GGUF" + struct.pack("<IQQ", 2, 0, 0))


# ---- JSON configs (fuzz_config: first byte picks the reader) ------------------------------

def config_seeds():
    tm = os.path.join(DATA, "tiny-model")
    files = {0: [os.path.join(tm, "model_index.json")],
             1: [os.path.join(tm, "transformer", "config.json")] + data_files(".config.json"),
             2: [os.path.join(tm, "text_encoder", "config.json")],
             3: [os.path.join(tm, "vae", "config.json")],
             4: [os.path.join(tm, "scheduler", "scheduler_config.json")]}
    for sel, paths in files.items():
        for i, p in enumerate(paths):
            with open(p, "rb") as f:
                put("config", "%d_%s_%d" % (sel, os.path.basename(p), i), bytes([sel]) + f.read())
    lightning = {"base_image_seq_len": 256, "base_shift": 1.0986, "invert_sigmas": False, "max_image_seq_len": 8192,
                 "max_shift": 1.0986, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": None,
                 "time_shift_type": "exponential", "use_dynamic_shifting": True}
    put("config", "4_lightning", bytes([4]) + json.dumps(lightning).encode())
    put("config", "4_case_nested", bytes([4]) + json.dumps({"scheduler": lightning, "steps": 4}).encode())
    te = json.load(open(os.path.join(tm, "text_encoder", "config.json")))
    put("config", "2_text_config_nested", bytes([2]) + json.dumps({"text_config": te}).encode())
    index = {"metadata": {"total_size": 28}, "weight_map": {"x": "a.safetensors", "y": "a.safetensors",
                                                            "z": "b.safetensors"}}
    put("config", "5_index", bytes([5]) + json.dumps(index).encode())


# ---- tokenizer texts -----------------------------------------------------------------------

def encode_seeds():
    with open(os.path.join(DATA, "shared", "tokenizer", "llamacpp-qwen2.inp"), "rb") as f:
        texts = f.read().split(b"\n__ggml_vocab_test__\n")
    for i, t in enumerate(texts):
        if t.strip(b"\n"):
            put("tokenizer_encode", "llamacpp_%02d" % i, t)
    for p in data_files("case.json"):
        c = json.load(open(p, encoding="utf-8"))
        for k in ("prompt", "negative_prompt"):
            if isinstance(c.get(k), str) and c[k].strip():
                put("tokenizer_encode", "%s_%s" % (os.path.basename(os.path.dirname(p)), k), c[k])
    put("tokenizer_encode", "specials", "<|im_start|>system\nDescribe<|im_end|>\n<|im_start|>user\ne\u0301<|endoftext|>")


# ---- LoRA key lines (fuzz_lora) -------------------------------------------------------------

def lora_seeds():
    hdr, _ = read_st(os.path.join(DATA, "cases", "lora.safetensors"))
    hdr.pop("__metadata__", None)
    rows = [(n, ",".join(str(d) for d in e["shape"])) for n, e in sorted(hdr.items())]

    def lines(rename, typ="", meta=None):
        out = ["@meta\t" + json.dumps(meta)] if meta else []
        out += ["%s\t%s%s" % (rename(n), s, ("\t" + typ) if typ else "") for n, s in rows]
        return "\n".join(out) + "\n"

    put("lora", "kohya", lines(lambda n: n))
    put("lora", "kohya_bf16_prefix", lines(lambda n: "diffusion_model." + n, "bf16"))
    put("lora", "kohya_flat", lines(lambda n: "lora_unet_" + n.rsplit(".", 2)[0].replace(".", "_") + "." +
                                    ".".join(n.rsplit(".", 2)[1:]) if "lora_" in n else
                                    "lora_unet_" + n.rsplit(".", 1)[0].replace(".", "_") + ".alpha"))

    def peft(n):
        n = n.replace(".lora_down.weight", ".lora_A.default.weight").replace(".lora_up.weight", ".lora_B.default.weight")
        return "base_model.model." + n

    cfg = {"r": 4, "lora_alpha": 8, "use_rslora": False, "target_modules": ["to_q"]}
    put("lora", "peft_metadata", lines(peft, "f16", {"format": "pt", "lora_adapter_metadata": json.dumps(cfg)}))
    put("lora", "dora", lines(lambda n: n) + "transformer_blocks.0.attn.to_q.dora_scale\t1,64\n")


# ---- images -------------------------------------------------------------------------------

def png(width, height, color, depth, rows, chunks_before=(), chunks_after=(), palette=None):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    for k, b in chunks_before:
        out += chunk(k, b)
    out += chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows)))
    for k, b in chunks_after:
        out += chunk(k, b)
    return out + chunk(b"IEND", b"")


def image_seeds():
    params = b"a cat in the snow\nNegative prompt: blurry\nSteps: 8, Sampler: Euler, CFG scale: 1, Seed: 42, Size: 8x4"
    put("image", "rgb8_text.png", png(8, 4, 2, 8, [bytes(range(i, i + 24)) for i in range(4)],
                                      [(b"tEXt", b"parameters\0" + params)]))
    itxt = b"parameters\0\0\0\0\0" + "\u732b in snow\nSteps: 4, Seed: 7".encode()
    put("image", "palette_itxt_after.png", png(4, 2, 3, 8, [b"\0\1\2\0", b"\2\1\0\1"], (), [(b"iTXt", itxt)],
                                               palette=b"\xff\0\0\0\xff\0\0\0\xff"))
    ztxt = b"parameters\0\0" + zlib.compress(params)
    put("image", "grey16_ztxt.png", png(2, 2, 0, 16, [b"\x12\x34\xff\xff", b"\0\0\x80\0"], [(b"zTXt", ztxt)]))
    put("image", "rgba8.png", png(2, 1, 6, 8, [b"\1\2\3\4\5\6\7\x08"]))
    put("image", "grey1.png", png(8, 1, 0, 1, [b"\xa5"]))

    def seg(marker, body):
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body
    jfif = seg(0xE0, b"JFIF\0\1\1\0\0\1\0\1\0\0")
    put("image", "comments.jpg", b"\xff\xd8" + jfif + seg(0xFE, params[:40]) + seg(0xFE, params[40:]) +
        seg(0xDA, b"\1\1\0\0\x3f\0") + b"\0\0\xff\xd9")


# ---- server request bodies (fuzz_serve_request: first byte even = OpenAI, odd = A1111) ----------

def serve_seeds():
    openai = [{"model": "any", "prompt": "a cat", "size": "32x48", "steps": 2, "seed": 7, "negative_prompt": "blur",
               "cfg": 3},
              {"prompt": "x", "size": "32x32", "steps": 1, "n": 2, "output_format": "jpeg", "seed": 3,
               "stream": True, "partial_images": 2, "output_compression": 80, "response_format": "b64_json"},
              {"prompt": "\u732b", "size": "auto", "scheduler": "lightning", "loras": [], "user": "u", "seed": None},
              {"prompt": "x", "loras": [{"name": "nope", "strength": 1}], "stream": "yes"}]
    for i, o in enumerate(openai):
        put("serve_request", "openai_%d" % i, b"\0" + json.dumps(o, ensure_ascii=False).encode())
    a1111 = [{"prompt": "a cat", "negative_prompt": "", "width": 512, "height": 768, "steps": 8, "cfg_scale": 4.5,
              "seed": -1, "batch_size": 2, "sampler_name": "Euler"},
             {"prompt": ["not", "a string"], "width": 30, "seed": 1.5}]
    for i, o in enumerate(a1111):
        put("serve_request", "a1111_%d" % i, b"\1" + json.dumps(o).encode())


safetensors_seeds()
serve_seeds()
gguf_seeds()
vocab, merges, first = tokenizer_files_seeds()
gguf_tokenizer_seed(vocab, merges, first)
config_seeds()
encode_seeds()
lora_seeds()
image_seeds()
for t in sorted(os.listdir(OUT)):
    files = os.listdir(os.path.join(OUT, t))
    size = sum(os.path.getsize(os.path.join(OUT, t, f)) for f in files)
    print("%-18s %3d seeds, %7d bytes" % (t, len(files), size))
