#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

  make_corpus.py --models DIR     all targets
  make_corpus.py                  fuzz_image only (PIL, no models needed)

DIR holds what `dreambooth init-model` wrote (see tests/fuzz/README.md):
  tiny-sd1.safetensors, tiny-sd2.safetensors (single files) and
  tiny-sd1-dir/, tiny-sd2-dir/ (diffusers folders with a tokenizer),
  optionally sd15-sf.header.json / sd21-sf.header.json (headers of the full-size single files).
Model seeds are headers only (fuzz_model adds offsets and a sparse data section), without
data_offsets to keep the corpus small. Reproducers of fixed findings are kept in
corpus/<target>/crash-* and are never overwritten here.
"""
import argparse
import io
import json
import os
import pickle
import struct
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def st_file(entries, meta=None, trailing=b"", raw_header=None):
    """entries: [(name, dtype, shape, bytes)] in data order."""
    h, data, at = {}, b"", 0
    if meta is not None:
        h["__metadata__"] = meta
    for name, dt, shape, b in entries:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [at, at + len(b)]}
        data += b
        at += len(b)
    hb = raw_header if raw_header is not None else json.dumps(h, separators=(",", ":")).encode()
    return struct.pack("<Q", len(hb)) + hb + data + trailing


def st_raw(header_text, data=b""):
    hb = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(hb)) + hb + data


def safetensors_seeds():
    f32 = struct.pack("<4f", 1, -2, float("inf"), float("nan"))
    s = {
        "empty": st_file([]),
        "meta_only": st_file([], {"format": "pt", "k": "v"}),
        "scalar_f32": st_file([("s", "F32", [], f32[:4])]),
        "zero_size": st_file([("z", "F16", [0, 3], b""), ("a", "F32", [2, 2], f32)]),
        "f16_bf16": st_file([("h", "F16", [2], b"\x00\x3c\x00\x7c"), ("b", "BF16", [2], b"\x80\x3f\xc0\x7f")]),
        "all_dtypes": st_file([(d, d, [1], b"\x01" * n) for d, n in
                               [("BOOL", 1), ("U8", 1), ("I8", 1), ("F8_E5M2", 1), ("F8_E4M3", 1),
                                ("I16", 2), ("U16", 2), ("I32", 4), ("U32", 4), ("F64", 8),
                                ("I64", 8), ("U64", 8)]]),
        "rank8": st_file([("r", "U8", [1] * 8, b"\x07")]),
        "padded_header": st_raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}      ', b"xy"),
        "unicode_name": st_file([("w\u00e9ight.\u4e2d", "U8", [1], b"\x00")]),
        "escapes": st_raw('{"a\\u0041\\n\\"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"z"),
        "out_of_order": st_raw('{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},'
                               '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"ab"),
        # malformed
        "short": b"\x02\x00\x00",
        "len_only": struct.pack("<Q", 2),
        "huge_len": struct.pack("<Q", 1 << 63) + b"{}",
        "len_past_end": struct.pack("<Q", 100) + b"{}",
        "not_object": st_raw("[]"),
        "bad_utf8": st_raw('{"\xff":1}'.encode("latin-1")),
        "nul": st_raw(b'{"a\x00":{}}'),
        "missing_dtype": st_raw('{"a":{"shape":[1],"data_offsets":[0,1]}}', b"x"),
        "unknown_field": st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}', b"x"),
        "negative": st_raw('{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', b"x"),
        "float_num": st_raw('{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', b"x"),
        "exp_num": st_raw('{"a":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}', b"x"),
        "unknown_dtype": st_raw('{"a":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}}', b"x"),
        "duplicate": st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                            '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy"),
        "dup_field": st_raw('{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
        "meta_not_str": st_raw('{"__metadata__":{"k":1}}'),
        "meta_nested": st_raw('{"__metadata__":{"k":{"x":"y"}}}'),
        "overflow": st_raw('{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'),
        "overflow2": st_raw('{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}'),
        "bigint": st_raw('{"a":{"dtype":"U8","shape":[99999999999999999999999],"data_offsets":[0,1]}}', b"x"),
        "size_mismatch": st_raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"xxxx"),
        "hole": st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy"),
        "overlap": st_raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                          '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', b"xyz"),
        "trailing": st_file([("a", "U8", [1], b"x")], trailing=b"PK\x03\x04 polyglot"),
        "truncated": st_file([("a", "F32", [4], f32)])[:-3],
        "rank9": st_raw('{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}', b"x"),
        "deep": st_raw("{" + '"a":' * 1 + "[" * 2000 + "]" * 2000 + "}"),
        "pickle": b"\x80\x02}q\x00(X\x05\x00\x00\x00state",
    }
    return s


def model_seeds(models):
    s = {}
    for name in ("tiny-sd1", "tiny-sd2"):
        p = os.path.join(models, name + ".safetensors")
        with open(p, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            h = json.loads(f.read(n))
        for e in h.values():
            if "data_offsets" in e:
                del e["data_offsets"]
        s[name] = json.dumps(h, separators=(",", ":")).encode()
        # the text encoder with the OpenAI layout without text_model. (old SD1 files)
        if name == "tiny-sd1":
            bare = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
                    for k, v in h.items()}
            s[name + "-bare-clip"] = json.dumps(bare, separators=(",", ":")).encode()
            bf = {k: dict(v, dtype="BF16") if k != "__metadata__" else v for k, v in h.items()}
            s[name + "-bf16"] = json.dumps(bf, separators=(",", ":")).encode()
            s[name + "-v-pred"] = s[name].replace(b'"prediction_type":"epsilon"', b'"prediction_type":"v"')
    for name in ("sd15-sf", "sd21-sf"):
        p = os.path.join(models, name + ".header.json")
        if os.path.exists(p):
            with open(p) as f:
                h = json.load(f)
            for e in h.values():
                if "data_offsets" in e:
                    del e["data_offsets"]
            s[name] = json.dumps(h, separators=(",", ":")).encode()
    s["empty-header"] = b"{}"
    s["unet-only"] = b'{"model.diffusion_model.input_blocks.0.0.weight":{"dtype":"F32","shape":[32,4,3,3]}}'
    s["diffusers-net"] = b'{"conv_in.weight":{"dtype":"F32","shape":[32,4,3,3]}}'
    s["raw-small"] = st_file([("model.diffusion_model.input_blocks.0.0.weight", "F32", [1, 1, 1, 1], b"\0" * 4)])
    s.update(ckpt_seeds())
    return s


def ckpt_seeds():
    """What .ckpt files look like: an old protocol-2 pickle of a state dict and torch.save's zip
    with archive/data.pkl (refused by content, never unpickled)."""
    s = {}
    s["pickle"] = b"\x80\x02}q\x00."
    s["zip"] = b"PK\x03\x04" + b"\0" * 26
    s["ckpt-pickle"] = pickle.dumps({"state_dict": {"model.diffusion_model.out.2.bias": [0.0] * 4},
                                     "global_step": 470000}, protocol=2)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        t = (1980, 1, 1, 0, 0, 0)  # fixed, so the seed does not change between runs
        zf.writestr(zipfile.ZipInfo("archive/data.pkl", t), pickle.dumps({"state_dict": {}}, protocol=2))
        zf.writestr(zipfile.ZipInfo("archive/version", t), "3\n")
    s["ckpt-zip"] = z.getvalue()
    return s


def config_seeds(models):
    s = {}
    files = {0: "unet/config.json", 1: "vae/config.json", 2: "text_encoder/config.json",
             3: "scheduler/scheduler_config.json", 4: "tokenizer/special_tokens_map.json"}
    for arch in ("tiny-sd1", "tiny-sd2"):
        d = os.path.join(models, arch + "-dir")
        for mode, rel in files.items():
            with open(os.path.join(d, rel), "rb") as f:
                s["%s-%d-%s" % (arch, mode, rel.replace("/", "_"))] = bytes([mode]) + f.read()
        with open(os.path.join(d, "tokenizer/tokenizer_config.json"), "rb") as f:
            s[arch + "-4-tokenizer_config"] = bytes([4]) + f.read()
    # the same configs under the other text-encoder layouts (first byte / 6 % 3)
    s["tiny-sd1-unet-openclip"] = bytes([12]) + s["tiny-sd1-0-unet_config.json"][1:]
    s["tiny-sd2-text-bare"] = bytes([8]) + s["tiny-sd2-2-text_encoder_config.json"][1:]
    s["unet-sd15-defaults"] = b"\x00{}"
    s["unet-legacy-heads"] = b'\x00{"attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true}'
    s["unet-num-heads"] = b'\x00{"num_attention_heads": 8, "attention_head_dim": 3}'
    s["unet-8-blocks"] = (b'\x00{"block_out_channels": [32,32,32,32,32,32,32,32], "norm_num_groups": 8,'
                          b' "attention_head_dim": 1, "layers_per_block": 1}')
    s["unet-inpaint"] = b'\x00{"in_channels": 9}'
    s["unet-bad-types"] = b'\x00{"block_out_channels": "x", "layers_per_block": [1, 2, 2, 2]}'
    s["unet-big"] = b'\x00{"block_out_channels": [65536, 65536, 65536, 65536], "cross_attention_dim": 65536}'
    s["vae-defaults"] = b"\x01{}"
    s["vae-sd"] = b'\x01{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}'
    s["vae-no-quant"] = b'\x01{"use_quant_conv": false}'
    s["text-defaults"] = b"\x02{}"
    s["text-sd2"] = b'\x02{"hidden_act": "gelu", "hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 23}'
    s["text-big"] = b'\x02{"vocab_size": 1048576, "hidden_size": 65536, "intermediate_size": 262144, "num_hidden_layers": 256}'
    s["sched-v"] = b'\x03{"prediction_type": "v_prediction"}'
    s["sched-bad"] = b'\x03{"prediction_type": 5}'
    s["pad-added-token"] = b'\x04{"pad_token": {"content": "!", "lstrip": false}}'
    s["pad-none"] = b'\x04{"pad_token": null}'
    s["index"] = (b'\x05{"metadata": {"total_size": 10}, "weight_map": {"a": "m-00001.safetensors",'
                  b' "b": "m-00002.safetensors", "c": "m-00001.safetensors"}}')
    s["index-traversal"] = b'\x05{"weight_map": {"a": "../x.safetensors"}}'
    s["index-empty"] = b'\x05{"weight_map": {}}'
    s["deep-array"] = b"\x00{\"a\": " + b"[" * 3000 + b"]" * 3000 + b"}"
    s["not-object"] = b"\x00[1, 2]"
    s["bad-utf8"] = b'\x00{"\xff": 1}'
    s["dup-keys"] = b'\x00{"in_channels": 4, "in_channels": 9}'
    return s


def tokenizer_seeds(models, prompts_file):
    s = {}
    prompts = ["a photo of sks dog", "", "   ", "A PHOTO OF <|startoftext|>x<|endoftext|>",
               "&amp;&lt;b&gt; &#39;quoted&#39; &amp;amp;", "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u0130stanbul",
               "\u4e2d\u6587\u63d0\u793a \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4", "emoji \U0001F436\U0001F3FC\u200d",
               "I'm you'll they'd we've it's", "x" * 300, " ".join(["dog"] * 100),
               "\u00df\u0130\u03a3\u1e9e", "tab\tnew\nline\r", "123,456.789 $%^", "\u2026\u201cfancy\u201d"]
    for i, p in enumerate(prompts):
        s["prompt-%02d" % i] = b"\x00" + p.encode()
    s["invalid-utf8"] = b"\x00abc\xff\xfe"
    s["overlong-utf8"] = b"\x00\xc0\xaf"
    s["surrogate"] = b"\x00\xed\xa0\x80"
    if prompts_file and os.path.exists(prompts_file):
        with open(prompts_file, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        for i, ln in enumerate(lines[:12]):
            s["dreambooth-%02d" % i] = b"\x00" + ln.encode()
    s["ctx-0"] = b"\xa0\x00a photo"
    s["ctx-1"] = b"\xa0\x01a photo"
    s["ctx-2"] = b"\xa0\x02a photo"
    s["ctx-3"] = b"\xa0\x03a photo of sks dog"
    # small vocab.json + merges.txt (rejected: too few merges / missing byte symbols)
    vocab = b'{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}'
    merges = b"#version: 0.2\na b\n"
    s["hf-small"] = b"\xc0" + struct.pack("<H", len(vocab)) + vocab + merges
    s["hf-dup-id"] = b"\xc0" + struct.pack("<H", 15) + b'{"a": 0, "b": 0}' + merges
    s["hf-bad-json"] = b"\xc0" + struct.pack("<H", 3) + b"{[}" + merges
    s["bpe-plain"] = b"\xd8" + b"\"bpe_simple_vocab_16e6.txt#version: 0.2\na b\nab c\n"
    s["bpe-gzip-bad"] = b"\xd8" + b"\x1f\x8b\x08\x00garbage"
    # patches of the real files (mode 240+: which, offset u32, removed u16, inserted)
    s["patch-vocab-id"] = b"\xf0\x00" + struct.pack("<IH", 20, 1) + b"9"
    s["patch-vocab-dup"] = b"\xf0\x00" + struct.pack("<IH", 1, 0) + b'"a": 5, '
    s["patch-merges-line"] = b"\xf0\x01" + struct.pack("<IH", 20, 3) + b"q\n"
    s["patch-merges-cut"] = b"\xf0\x01" + struct.pack("<IH", 300000, 65535)
    s["patch-none"] = b"\xf0\x00" + struct.pack("<IH", 0, 0)
    return s


IMAGE_EXT = {"png": 0, "jpg": 1, "tif": 2, "gif": 3, "ppm": 4, "pgm": 5, "webp": 6, "pnm": 7}


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(w, h, depth=8, colour=2, rows=None):
    """A PNG written by hand (for sizes and corruptions PIL would not write)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"")
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bad_dqt(jpeg):
    """The first quantisation table's index set to 5 (valid ones are 0..3)."""
    at = jpeg.index(b"\xff\xdb") + 4
    return jpeg[:at] + bytes([5]) + jpeg[at + 1:]


def image_seeds():
    """fuzz_image: first byte = extension index | target size (0 own, 1 64x64, 2 16x40, 3 8x8) << 3."""
    from PIL import Image

    def sel(ext, size=0):
        return bytes([IMAGE_EXT[ext] | size << 3])

    def pil(mode, w, h, fmt, **kw):
        im = Image.new(mode, (w, h))
        n = len(im.getbands())
        maxv = {"I;16": 65535, "I": 65535, "F": 1.0}.get(mode, 255)
        px = [tuple((x * 37 + y * 11 + c * 53) % (maxv + 1) if maxv != 1.0 else (x - y) / 8.0
                    for c in range(n)) if n > 1 else
              ((x * 37 + y * 11) % (maxv + 1) if maxv != 1.0 else (x - y) / 8.0)
              for y in range(h) for x in range(w)]
        im.putdata(px)
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return b.getvalue()

    s = {
        "png-rgb": sel("png") + pil("RGB", 16, 16, "PNG"),
        "png-rgba-crop": sel("png", 2) + pil("RGBA", 8, 16, "PNG"),
        "png-gray": sel("png", 1) + pil("L", 8, 8, "PNG"),
        "png-gray16": sel("png") + pil("I;16", 8, 8, "PNG"),
        "png-la": sel("png", 3) + pil("LA", 9, 9, "PNG"),
        "png-palette": sel("png") + pil("P", 8, 8, "PNG", transparency=3),
        "png-1bit": sel("png") + pil("1", 16, 8, "PNG"),
        "png-handmade": sel("png", 1) + png_raw(8, 8, rows=b"".join(b"\0" + bytes(range(y, y + 24))
                                                                  for y in range(8))),
        "png-truncated": sel("png") + pil("RGB", 16, 16, "PNG")[:-30],
        "png-0x0": sel("png") + png_raw(0, 0),
        "png-4x4": sel("png") + png_raw(4, 4, rows=b"\0" * 13 * 4),
        "png-huge": sel("png") + png_raw(30000, 30000),
        "png-short-rows": sel("png") + png_raw(8, 8, rows=b"\0" * 20),
        "jpg-rgb": sel("jpg") + pil("RGB", 16, 16, "JPEG", quality=50),
        "jpg-gray-crop": sel("jpg", 2) + pil("L", 16, 8, "JPEG"),
        "jpg-cmyk": sel("jpg", 1) + pil("CMYK", 8, 8, "JPEG"),
        "jpg-progressive": sel("jpg") + pil("RGB", 8, 8, "JPEG", progressive=True),
        "jpg-truncated": sel("jpg") + pil("RGB", 16, 16, "JPEG")[:200],
        # libjpeg errors (here "Bogus DQT index 5") made GEGL's jpg-load exit(1)
        "jpg-bad-dqt": sel("jpg") + bad_dqt(pil("RGB", 8, 8, "JPEG")),
        "tif-rgb": sel("tif") + pil("RGB", 8, 8, "TIFF"),
        "tif-lzw": sel("tif", 2) + pil("RGBA", 16, 8, "TIFF", compression="tiff_lzw"),
        "tif-float": sel("tif") + pil("F", 8, 8, "TIFF"),
        "tif-gray16": sel("tif", 1) + pil("I;16", 8, 8, "TIFF"),
        "tif-cmyk": sel("tif") + pil("CMYK", 8, 8, "TIFF"),
        "gif": sel("gif") + pil("P", 8, 8, "GIF"),
        "gif-transparent": sel("gif", 1) + pil("P", 16, 8, "GIF", transparency=0),
        "webp-lossless": sel("webp") + pil("RGBA", 8, 8, "WEBP", lossless=True),
        "webp-lossy": sel("webp", 2) + pil("RGB", 16, 16, "WEBP", quality=20),
        "ppm-p6": sel("ppm") + b"P6\n8 8\n255\n" + bytes(range(192)),
        "ppm-p6-16bit": sel("ppm", 1) + b"P6 8 8 65535\n" + bytes(i % 256 for i in range(384)),
        "ppm-p3-ascii": sel("ppm") + b"P3\n# comment\n8 8\n15\n" + b" ".join(b"%d" % (i % 16) for i in range(192)),
        "ppm-truncated": sel("ppm") + b"P6\n8 8\n255\n" + bytes(100),
        "ppm-huge": sel("ppm") + b"P6\n65535 65535\n255\n" + bytes(16),
        "pgm-p5": sel("pgm", 3) + b"P5\n8 16\n255\n" + bytes(range(128)),
        "pgm-p2-ascii": sel("pgm") + b"P2 8 8 100 " + b" ".join(b"%d" % i for i in range(64)),
        "pnm-pbm": sel("pnm") + b"P4\n8 8\n" + bytes(8),
        "garbage": sel("png") + b"not an image at all",
        "empty": sel("jpg"),
        "wrong-ext": sel("gif") + pil("RGB", 8, 8, "PNG"),
    }
    return s


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if not name.startswith("crash-"):
            os.remove(os.path.join(d, name))
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds, %d bytes" % (target, len(seeds), sum(len(v) for v in seeds.values())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", help="what init-model wrote (see the docstring); without it, "
                    "only the fuzz_image seeds are written")
    ap.add_argument("--prompts", default=os.path.join(HERE, "..", "..", "..", "shared", "data",
                                                      "dreambooth", "prompts_and_classes.txt"))
    a = ap.parse_args()
    write("fuzz_image", image_seeds())
    if not a.models:
        return
    write("fuzz_safetensors", safetensors_seeds())
    write("fuzz_model", model_seeds(a.models))
    write("fuzz_config", config_seeds(a.models))
    write("fuzz_tokenizer", tokenizer_seeds(a.models, a.prompts))


if __name__ == "__main__":
    main()
