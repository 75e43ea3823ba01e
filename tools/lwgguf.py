"""lwgguf: llmwall's own GGUF v3 writer and reader (pure Python + numpy).

Used by the tools that train and export the project's own models and by the
Python reference tests.  One module, no dependencies besides numpy.

File layout (all little-endian):

    u32 magic "GGUF", u32 version (3; 2 is read too), u64 n_tensors, u64 n_kv
    n_kv times:       string key, u32 value_type, value
    n_tensors times:  string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type,
                      u64 offset (relative to the data section, a multiple of
                      the alignment)
    zero padding up to the alignment, then the data section: each tensor's
    bytes, each padded with zeros to the alignment.

    string = u64 byte length + UTF-8 bytes (no terminator)
    array  = u32 element value_type + u64 count + the elements
    bool   = one byte, 0 or 1

The alignment is `general.alignment` (u32) when present, else 32.

Shapes are GGUF's: ne[0] is the innermost (contiguous) dimension, so a numpy
array of shape (out, in) -- a PyTorch Linear weight -- is stored with
ne = (in, out) and its row-major bytes unchanged.  The writer derives ne from
the numpy shape that way, and the reader returns arrays of shape reversed(ne).

Tensor types written and read: F32 (0), F16 (1), Q4_0 (2), Q8_0 (8), BF16 (30).
Q8_0 and Q4_0 are quantised as ggml's reference quantisers do (per block of 32):
    Q8_0: d = amax/127, q = roundf(x * (1/d))               -> f16 d, 32 x i8
    Q4_0: m = the element of largest |x| (signed), d = m/-8,
          q = min(15, (int)(x * (1/d) + 8.5))              -> f16 d, 16 bytes,
          byte j holds element j in its low nibble and element j+16 in its high.
BF16 is rounded to nearest even from float32, as ggml does.

Writer:
    w = GGUFWriter()                      # alignment=32
    w.add("general.architecture", "llama")            # type inferred: STRING
    w.add("llama.block_count", 4, UINT32)             # explicit type
    w.add("tokenizer.ggml.scores", scores, ARRAY, FLOAT32)
    w.add_tensor("output_norm.weight", np_array)      # F32
    w.add_tensor("blk.0.attn_q.weight", np_array, Q8_0)
    w.write("model.gguf")

Reader:
    g = read_gguf("model.gguf")
    g.metadata["llama.block_count"]      # Python value (arrays: list / numpy)
    g.value_types[key]                   # (value_type, element_type or None)
    g.tensor_infos[name]                 # TensorInfo(name, ne, type, offset, nbytes)
    g.tensor(name)                       # float32 numpy, shape reversed(ne)
"""

import collections
import struct

import numpy as np

# ---------------------------------------------------------------------------
# constants

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# metadata value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

VALUE_TYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]

# fixed-size scalar value types -> numpy little-endian dtype
_SCALAR_DTYPE = {
    UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
    FLOAT32: "<f4", BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8",
}

# tensor types (ggml_type ids; they are the file format)
F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30

# type -> (elements per block, bytes per block)
TENSOR_TYPES = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q8_0: (32, 34), BF16: (1, 2)}
TENSOR_TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q8_0: "Q8_0", BF16: "BF16"}
QK = 32  # block size of Q4_0 and Q8_0


def tensor_nbytes(ne, ttype):
    """Bytes of a tensor of GGUF shape ne and type ttype (ne[0] must fill whole blocks)."""
    blk, size = TENSOR_TYPES[ttype]
    n = 1
    for d in ne:
        n *= int(d)
    if int(ne[0]) % blk:
        raise ValueError("ne[0]=%d is not a multiple of the block size %d" % (ne[0], blk))
    return n // blk * size


def _pad(n, alignment):
    return (alignment - n % alignment) % alignment


# ---------------------------------------------------------------------------
# float conversions and quantisation (ggml's reference formulas)


def _round_away(v):
    """C roundf: halves away from zero (exact for float32 inputs, done in float64)."""
    v = np.asarray(v, dtype=np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def f32_to_bf16(x):
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even; NaN stays a quiet NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), r)


def bf16_to_f32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize_q8_0(x):
    """float array (size a multiple of 32) -> Q8_0 bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _round_away((x * inv[:, None]).astype(np.float32)).astype(np.int8)
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def dequantize_q8_0(buf, n):
    b = np.frombuffer(buf, dtype=np.uint8, count=n // QK * 34).reshape(-1, 34)
    d = b[:, 0:2].copy().view("<f2").astype(np.float32)
    q = b[:, 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)


def quantize_q4_0(x):
    """float array (size a multiple of 32) -> Q4_0 bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK)
    idx = np.argmax(np.abs(x), axis=1)  # first element of largest |x|, as ggml's loop
    m = x[np.arange(x.shape[0]), idx]
    d = (m / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (x * inv[:, None]).astype(np.float32) + np.float32(8.5)
    q = np.minimum(15, np.trunc(v).astype(np.int32)).astype(np.uint8)
    out = np.empty((x.shape[0], 18), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def dequantize_q4_0(buf, n):
    b = np.frombuffer(buf, dtype=np.uint8, count=n // QK * 18).reshape(-1, 18)
    d = b[:, 0:2].copy().view("<f2").astype(np.float32)
    qs = b[:, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32) - 8
    return (q * d).reshape(-1)


def encode_tensor(x, ttype):
    """numpy array -> the bytes of a GGUF tensor of type ttype."""
    x = np.asarray(x)
    if ttype == F32:
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if ttype == F16:
        return np.ascontiguousarray(x, dtype=np.float32).astype("<f2").tobytes()
    if ttype == BF16:
        return f32_to_bf16(x).astype("<u2").tobytes()
    if ttype == Q8_0:
        return quantize_q8_0(x)
    if ttype == Q4_0:
        return quantize_q4_0(x)
    raise ValueError("unsupported tensor type %r" % (ttype,))


def decode_tensor(buf, ne, ttype):
    """GGUF tensor bytes -> float32 numpy array of shape reversed(ne)."""
    n = int(np.prod([int(d) for d in ne], dtype=np.int64)) if ne else 1
    shape = tuple(int(d) for d in reversed(ne))
    if ttype == F32:
        a = np.frombuffer(buf, dtype="<f4", count=n).astype(np.float32)
    elif ttype == F16:
        a = np.frombuffer(buf, dtype="<f2", count=n).astype(np.float32)
    elif ttype == BF16:
        a = bf16_to_f32(np.frombuffer(buf, dtype="<u2", count=n))
    elif ttype == Q8_0:
        a = dequantize_q8_0(buf, n)
    elif ttype == Q4_0:
        a = dequantize_q4_0(buf, n)
    else:
        raise ValueError("unsupported tensor type %r" % (ttype,))
    return a.reshape(shape)


# ---------------------------------------------------------------------------
# writer


def _infer_type(value):
    if isinstance(value, (bool, np.bool_)):
        return BOOL
    if isinstance(value, (int, np.integer)):
        return INT32 if -2**31 <= value < 2**31 else INT64
    if isinstance(value, (float, np.floating)):
        return FLOAT32
    if isinstance(value, str):
        return STRING
    raise TypeError("cannot infer a GGUF type for %r; pass one" % (type(value),))


def _pack_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype, value, elem=None):
    """Bytes of a value of type vtype (without the type id). For ARRAY, elem is the
    element type, or a tuple (ARRAY, inner_elem) for arrays of arrays."""
    if vtype == STRING:
        return _pack_string(value)
    if vtype == ARRAY:
        etype, inner = (elem if isinstance(elem, tuple) else (elem, None))
        if etype is None:
            raise ValueError("an array needs its element type")
        head = struct.pack("<IQ", etype, len(value))
        if etype in _SCALAR_DTYPE:
            if etype == BOOL:
                value = [1 if v else 0 for v in value]
            return head + np.asarray(value, dtype=_SCALAR_DTYPE[etype]).tobytes()
        return head + b"".join(_pack_value(etype, v, inner) for v in value)
    if vtype in _SCALAR_DTYPE:
        if vtype == BOOL:
            value = 1 if value else 0
        return np.asarray(value, dtype=_SCALAR_DTYPE[vtype]).tobytes()
    raise ValueError("unknown value type %r" % (vtype,))


class GGUFWriter:
    """Collects metadata and tensors, then writes one GGUF v3 file."""

    def __init__(self, alignment=DEFAULT_ALIGNMENT):
        if alignment <= 0 or alignment % 8:
            raise ValueError("alignment must be a positive multiple of 8")
        self.alignment = alignment
        self.kv = {}        # key -> (vtype, elem, value), in insertion order
        self.tensors = []   # (name, ne, ttype, bytes)
        if alignment != DEFAULT_ALIGNMENT:
            self.add("general.alignment", alignment, UINT32)

    def add(self, key, value, vtype=None, elem=None):
        """Add a metadata key. vtype is inferred from the Python type when omitted
        (bool, int -> i32/i64, float -> f32, str); arrays need vtype=ARRAY and elem."""
        if vtype is None:
            vtype = _infer_type(value)
        if key in self.kv:
            raise KeyError("duplicate key %s" % key)
        _pack_value(vtype, value, elem)  # fail now, not at write time
        self.kv[key] = (vtype, elem, value)

    def add_tensor(self, name, array, ttype=F32, ne=None):
        """Add a tensor. ne defaults to the numpy shape reversed (ne[0] innermost)."""
        array = np.asarray(array)
        if ne is None:
            ne = tuple(reversed(array.shape)) or (1,)
        ne = tuple(int(d) for d in ne)
        if int(np.prod(ne)) != array.size:
            raise ValueError("%s: ne %r does not match %d elements" % (name, ne, array.size))
        if any(t[0] == name for t in self.tensors):
            raise KeyError("duplicate tensor %s" % name)
        nbytes = tensor_nbytes(ne, ttype)  # checks ne[0] against the block size
        data = encode_tensor(array, ttype)
        assert len(data) == nbytes
        self.tensors.append((name, ne, ttype, data))

    def to_bytes(self):
        out = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))]
        for key, (vtype, elem, value) in self.kv.items():
            out.append(_pack_string(key) + struct.pack("<I", vtype) + _pack_value(vtype, value, elem))
        offset = 0
        for name, ne, ttype, data in self.tensors:
            out.append(_pack_string(name) + struct.pack("<I", len(ne)))
            out.append(struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", ttype, offset))
            offset += len(data) + _pad(len(data), self.alignment)
        head = b"".join(out)
        parts = [head, b"\0" * _pad(len(head), self.alignment)]
        for _, _, _, data in self.tensors:
            parts += [data, b"\0" * _pad(len(data), self.alignment)]
        return b"".join(parts)

    def write(self, path):
        with open(path, "wb") as f:
            f.write(self.to_bytes())


# ---------------------------------------------------------------------------
# reader


class GGUFError(ValueError):
    pass


TensorInfo = collections.namedtuple("TensorInfo", "name ne type offset nbytes")


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError("%s: %d bytes at offset %d run past the end of the file" % (what, n, self.pos))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, vtype, what):
        dt = np.dtype(_SCALAR_DTYPE[vtype])
        v = np.frombuffer(self.take(dt.itemsize, what), dtype=dt)[0]
        if vtype == BOOL:
            if v > 1:
                raise GGUFError("%s: bool is %d" % (what, v))
            return bool(v)
        return float(v) if vtype in (FLOAT32, FLOAT64) else int(v)

    def string(self, what):
        n = self.scalar(UINT64, what)
        b = bytes(self.take(n, what))
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b  # not UTF-8: keep the bytes


class GGUFFile:
    def __init__(self, buf):
        self.buf = buf
        self.version = 0
        self.metadata = {}
        self.value_types = {}
        self.tensor_infos = {}
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0

    def tensor(self, name):
        """The tensor as float32 numpy, shape reversed(ne) (dequantised)."""
        ti = self.tensor_infos[name]
        start = self.data_offset + ti.offset
        return decode_tensor(self.buf[start:start + ti.nbytes], ti.ne, ti.type)

    def raw(self, name):
        ti = self.tensor_infos[name]
        start = self.data_offset + ti.offset
        return bytes(self.buf[start:start + ti.nbytes])

    def tensors(self):
        return {name: self.tensor(name) for name in self.tensor_infos}


def _read_value(cur, vtype, what, depth=0):
    """Returns (value, element type description)."""
    if vtype == STRING:
        return cur.string(what), None
    if vtype in _SCALAR_DTYPE:
        return cur.scalar(vtype, what), None
    if vtype != ARRAY:
        raise GGUFError("%s: unknown value type %d" % (what, vtype))
    if depth > 8:
        raise GGUFError("%s: arrays nested too deep" % what)
    etype = cur.scalar(UINT32, what)
    n = cur.scalar(UINT64, what)
    if etype in _SCALAR_DTYPE:
        dt = np.dtype(_SCALAR_DTYPE[etype])
        if n > len(cur.buf):
            raise GGUFError("%s: array of %d elements is longer than the file" % (what, n))
        a = np.frombuffer(cur.take(n * dt.itemsize, what), dtype=dt).copy()
        return (a.astype(bool) if etype == BOOL else a), etype
    if n > len(cur.buf) // 8:  # each string or array element takes at least 8 bytes
        raise GGUFError("%s: array of %d elements is longer than the file" % (what, n))
    vals, inner = [], None
    for i in range(n):
        v, inner = _read_value(cur, etype, "%s[%d]" % (what, i), depth + 1)
        vals.append(v)
    return vals, (etype if inner is None else (etype, inner))


def parse_gguf(buf):
    """Parse GGUF v2/v3 bytes (bytes, mmap or memoryview) into a GGUFFile."""
    g = GGUFFile(buf)
    cur = _Cursor(buf)
    if bytes(cur.take(4, "magic")) != GGUF_MAGIC:
        raise GGUFError("magic: not a GGUF file")
    g.version = cur.scalar(UINT32, "version")
    if g.version not in (2, 3):
        raise GGUFError("version: %d is not supported" % g.version)
    n_tensors = cur.scalar(UINT64, "tensor_count")
    n_kv = cur.scalar(UINT64, "metadata_kv_count")
    if n_tensors > len(buf) // 24 or n_kv > len(buf) // 12:
        raise GGUFError("tensor_count/metadata_kv_count: too large for the file")
    for i in range(n_kv):
        key = cur.string("kv[%d].key" % i)
        vtype = cur.scalar(UINT32, key)
        value, elem = _read_value(cur, vtype, key)
        if key in g.metadata:
            raise GGUFError("%s: duplicate key" % key)
        g.metadata[key], g.value_types[key] = value, (vtype, elem)
    if "general.alignment" in g.metadata:
        a = g.metadata["general.alignment"]
        if g.value_types["general.alignment"][0] != UINT32 or a == 0 or a & (a - 1):
            raise GGUFError("general.alignment: must be a u32 power of two")
        g.alignment = a
    infos = []
    for i in range(n_tensors):
        name = cur.string("tensor[%d].name" % i)
        n_dims = cur.scalar(UINT32, name + ".n_dims")
        if not 1 <= n_dims <= 4:
            raise GGUFError("%s.n_dims: %d" % (name, n_dims))
        ne = tuple(cur.scalar(UINT64, name + ".ne") for _ in range(n_dims))
        ttype = cur.scalar(UINT32, name + ".type")
        offset = cur.scalar(UINT64, name + ".offset")
        if ttype not in TENSOR_TYPES:
            raise GGUFError("%s.type: %d is not supported by lwgguf" % (name, ttype))
        if any(d == 0 or d >= 2**62 for d in ne):
            raise GGUFError("%s.ne: %r" % (name, ne))
        try:
            nbytes = tensor_nbytes(ne, ttype)
        except ValueError as e:
            raise GGUFError("%s.ne: %s" % (name, e))
        if offset % g.alignment:
            raise GGUFError("%s.offset: %d is not aligned to %d" % (name, offset, g.alignment))
        if name in g.tensor_infos:
            raise GGUFError("%s: duplicate tensor" % name)
        infos.append(TensorInfo(name, ne, ttype, offset, nbytes))
        g.tensor_infos[name] = infos[-1]
    g.data_offset = cur.pos + _pad(cur.pos, g.alignment)
    for ti in infos:
        if g.data_offset + ti.offset + ti.nbytes > len(buf):
            raise GGUFError("%s: data runs past the end of the file" % ti.name)
    return g


def read_gguf(path):
    with open(path, "rb") as f:
        return parse_gguf(f.read())


if __name__ == "__main__":
    import sys

    for path in sys.argv[1:]:
        g = read_gguf(path)
        print("%s: GGUF v%d, %d keys, %d tensors" % (path, g.version, len(g.metadata), len(g.tensor_infos)))
        for k, v in g.metadata.items():
            vt, et = g.value_types[k]
            if vt == ARRAY:
                shown = list(v[:5]) if len(v) else []
                print("  %-45s array[%d] %s ..." % (k, len(v), shown))
            else:
                print("  %-45s %s = %r" % (k, VALUE_TYPE_NAMES[vt], v))
        for ti in g.tensor_infos.values():
            print("  %r" % (ti,))
