# SPDX-License-Identifier: GPL-3.0-or-later
"""safetensors reading and writing in pure Python + numpy (torch only for BF16).

Format (shared/docs/formats.md): 8-byte little-endian header length N, N bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
row-major little-endian data; offsets are relative to the end of the header. The header is
padded with spaces to a multiple of 8 bytes, as the reference writer does.
"""
import json
import os
import struct

import numpy as np

# dtype name -> (numpy dtype used for the raw bytes, element size)
_RAW = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
# numpy dtype (native little-endian machine) -> dtype name; BF16 has no numpy type
_FROM_NUMPY = {v: k for k, v in _RAW.items() if k != "BF16"}


def dtype_size(name):
    return _RAW[name].itemsize


def _f32_to_bf16_bits(a):
    """Round-to-nearest-even f32 -> bf16, returned as uint16 bits (torch does the rounding)."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def bf16_bits_to_f32(bits):
    bits = np.asarray(bits)
    return (bits.reshape(-1).astype(np.uint32) << 16).view(np.float32).reshape(bits.shape)


def to_storage(value, dtype=None):
    """numpy array / torch tensor / number -> (dtype name, shape, raw little-endian bytes).
    dtype (e.g. "F16") converts floating values; None keeps the value's own dtype."""
    try:
        import torch
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                bits = value.contiguous().view(torch.int16).numpy().view(np.uint16)
                if dtype in (None, "BF16"):
                    return "BF16", list(bits.shape), bits.astype("<u2").tobytes()
                value = bf16_bits_to_f32(bits)
            else:
                value = value.numpy()
    except ImportError:
        pass
    a = np.asarray(value)
    if dtype is None:
        name = _FROM_NUMPY.get(a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype)
        if name is None:
            raise ValueError("unsupported dtype %s" % a.dtype)
        dtype = name
    if dtype == "BF16":
        return "BF16", list(a.shape), _f32_to_bf16_bits(a.astype(np.float32)).astype("<u2").tobytes()
    return dtype, list(a.shape), np.ascontiguousarray(a.astype(_RAW[dtype])).tobytes()


def build_header(entries, metadata=None):
    """entries: list of (name, dtype, shape, nbytes) in data order -> (header bytes, data size)."""
    hdr = {}
    if metadata is not None:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for name, dt, shape, nbytes in entries:
        if name in hdr:
            raise ValueError("duplicate tensor name %s" % name)
        hdr[name] = {"dtype": dt, "shape": [int(s) for s in shape], "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw, off


def _atomic_write(path, chunks):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def save_file(tensors, path, metadata=None, dtype=None, keep=()):
    """Writes {name: array|tensor} in the given order. dtype ("F32", "F16", "BF16") converts
    floating-point tensors; integer tensors and names in keep stay as they are."""
    entries, blobs = [], []
    for name, v in tensors.items():
        conv = dtype
        if name in keep or not _is_float(v):
            conv = None
        dt, shape, raw = to_storage(v, conv)
        entries.append((name, dt, shape, len(raw)))
        blobs.append(raw)
    head, _ = build_header(entries, metadata)
    _atomic_write(path, [head] + blobs)


def save_sparse(entries, path, metadata=None):
    """Writes a valid safetensors file whose data are all zeros without materialising them:
    entries is a list of (name, dtype, shape); the file is extended with truncate (sparse)."""
    full = []
    for name, dt, shape in entries:
        n = 1
        for s in shape:
            n *= int(s)
        full.append((name, dt, shape, n * dtype_size(dt)))
    head, size = build_header(full, metadata)
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(head)
        f.truncate(len(head) + size)
    os.replace(tmp, path)


def _is_float(v):
    try:
        import torch
        if isinstance(v, torch.Tensor):
            return v.is_floating_point()
    except ImportError:
        pass
    return np.asarray(v).dtype.kind == "f"


def read_header(path):
    """-> (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n).decode("utf-8"))
    meta = hdr.pop("__metadata__", {})
    return hdr, meta, 8 + n


def load_file(path, as_f32=False):
    """-> {name: numpy array}. BF16 comes back as float32; with as_f32 every float is float32."""
    hdr, _, start = read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, e in hdr.items():
            b, end = e["data_offsets"]
            f.seek(start + b)
            raw = f.read(end - b)
            a = np.frombuffer(raw, dtype=_RAW[e["dtype"]]).reshape(e["shape"])
            if e["dtype"] == "BF16":
                a = bf16_bits_to_f32(a)
            elif as_f32 and a.dtype.kind == "f":
                a = a.astype(np.float32)
            out[name] = a.copy()
    return out


def load_metadata(path):
    return read_header(path)[1]
