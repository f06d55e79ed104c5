"""Parity on real CNTK 2.x files without CNTK.

No CNTK runtime exists for current Python, so the references are (a) the known labels of the
two sample digits, and (b) an independent numpy evaluator of CNTK semantics defined below.
The evaluator shares no code with the importer: it decodes the protobuf wire format itself
and computes in CNTK's own column-major axis order ([W, H, C] images, [kW, kH, Cin, Cout]
kernels, Fortran-order reshapes), so a mistake in the importer's axis reversal or padding
rules cannot cancel out.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from portanet.converters.registry import convert_paths, detect
from portanet.runtime.session import Session

# ------------------------------------------------------------------ protobuf wire decoding


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> dict[int, list]:
    """Raw protobuf fields: number -> list of ints (varint/fixed) or bytes (length-delimited)."""
    out: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 1:
            val = buf[i:i + 8]
            i += 8
        elif wt == 2:
            n, i = _varint(buf, i)
            val = buf[i:i + n]
            i += n
        elif wt == 5:
            val = buf[i:i + 4]
            i += 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(num, []).append(val)
    return out


def _packed_varints(b: bytes) -> list[int]:
    vals, i = [], 0
    while i < len(b):
        v, i = _varint(b, i)
        vals.append(v)
    return vals


def _dict(buf: bytes) -> dict:
    d = {}
    for entry in _fields(buf).get(2, []):
        e = _fields(entry)
        d[e[1][0].decode()] = _value(e.get(2, [b""])[0])
    return d


def _value(buf: bytes):
    f = _fields(buf)
    t = f.get(2, [0])[0]
    if t == 1:
        return bool(f.get(3, [0])[0])
    if t == 2:
        v = f.get(4, [0])[0]
        return v - (1 << 64) if v >= 1 << 63 else v
    if t == 3:
        return f.get(5, [0])[0]
    if t == 4:
        return struct.unpack("<f", f[6][0])[0] if 6 in f else 0.0
    if t == 5:
        return struct.unpack("<d", f[7][0])[0] if 7 in f else 0.0
    if t == 6:
        return f.get(8, [b""])[0].decode()
    if t == 7:
        return ("shape", tuple(_shape(f.get(9, [b""])[0])))
    if t == 8:
        a = _fields(f.get(10, [b""])[0])
        idx = a.get(1, [0])[0]
        return ("axis", idx - (1 << 64) if idx >= 1 << 63 else idx)
    if t == 9:
        return [_value(v) for v in _fields(f.get(11, [b""])[0]).get(1, [])]
    if t == 10:
        return _dict(f.get(12, [b""])[0])
    if t == 11:
        return _array(f[13][0])
    return None


def _shape(buf: bytes) -> list[int]:
    dims = []
    for chunk in _fields(buf).get(1, []):
        dims.extend(_packed_varints(chunk) if isinstance(chunk, bytes) else [chunk])
    return dims


def _array(buf: bytes) -> np.ndarray:
    f = _fields(buf)
    dims = _shape(f.get(3, [b""])[0])
    vals = _fields(f[4][0]).get(1, [b""])  # float_values: packed little-endian floats
    data = np.frombuffer(b"".join(vals), dtype="<f4")
    # CNTK is column-major: keep CNTK's axis order and use Fortran-order reshapes throughout
    return data.astype(np.float64).reshape(dims, order="F") if dims else data.astype(np.float64).reshape(())


# ---------------------------------------------------------------- CNTK-semantics evaluator


def _pads(size: int, k: int, s: int, auto: bool, lo: int, hi: int) -> tuple[int, int, int]:
    """(out, lower pad, upper pad) of one CNTK axis (ConvolveGeometry)."""
    if auto:
        out = (size - 1) // s + 1
        extra = size - ((out - 1) * s + 1)
        lo = (k - 1) // 2 - extra // 2
        hi = (k - 1) - (k - 1) // 2 - (extra - extra // 2)
        return out, lo, hi
    return (size + lo + hi - k) // s + 1, lo, hi


def _expand(vec, window_rank, rank, fill):
    """CNTK's FixVectorShape: repeat the last value up to the window rank, then fill."""
    vec = list(vec) if vec else [fill]
    vec = vec + vec[-1:] * (window_rank - len(vec))
    return vec + [fill] * (rank - len(vec))


def _window_op(x: np.ndarray, k: list[int], strides, autos, fill: float):
    """Yield (output index, padded-input window) over the spatial CNTK axes (all but the last)."""
    nsp = x.ndim - 1
    geo = [_pads(x.shape[i], k[i], strides[i], autos[i], 0, 0) for i in range(nsp)]
    padded = np.pad(x, [(g[1], g[2]) for g in geo] + [(0, 0)], constant_values=fill)
    outs = [g[0] for g in geo]
    for idx in np.ndindex(*outs):
        sl = tuple(slice(o * strides[i], o * strides[i] + k[i]) for i, o in enumerate(idx))
        yield idx, padded[sl], outs


def _conv(W: np.ndarray, x: np.ndarray, attrs: dict) -> np.ndarray:
    # W: [kW, kH, Cin, Cout]; x: [W, H, Cin]
    k = list(W.shape[:-1])
    strides = list(attrs["strides"][1])
    autos = _expand(attrs["autoPadding"], len(k), x.ndim, False)
    out = None
    for idx, win, outs in _window_op(x, k, strides, autos, 0.0):
        if out is None:
            out = np.zeros(outs + [W.shape[-1]])
        out[idx] = np.tensordot(win, W, axes=(list(range(x.ndim)), list(range(x.ndim))))
    return out


def _pool(x: np.ndarray, attrs: dict) -> np.ndarray:
    assert attrs["poolingType"] == 0
    wr = len(attrs["poolingWindowShape"][1])
    k = _expand(list(attrs["poolingWindowShape"][1]), wr, x.ndim, 1)
    strides = _expand(list(attrs["strides"][1]), wr, x.ndim, 1)
    autos = _expand(attrs["autoPadding"], wr, x.ndim, False)
    out = None
    for idx, win, outs in _window_op(x, k, strides, autos, -np.inf):
        if out is None:
            out = np.zeros(outs + [x.shape[-1]])
        out[idx] = win.reshape(-1, x.shape[-1]).max(axis=0)
    return out


def _plus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # CNTK broadcasting aligns leading axes: pad the shorter shape with trailing 1s
    r = max(a.ndim, b.ndim)
    return a.reshape(a.shape + (1,) * (r - a.ndim)) + b.reshape(b.shape + (1,) * (r - b.ndim))


def _times(W: np.ndarray, x: np.ndarray, attrs: dict) -> np.ndarray:
    r = attrs.get("outputRank", 1)
    out_dims, in_dims = W.shape[:r], W.shape[r:]
    K, M = math.prod(in_dims), math.prod(out_dims)
    y = W.reshape(M, K, order="F") @ x.reshape(K, -1, order="F")
    return y.reshape(out_dims + x.shape[len(in_dims):], order="F")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class CntkNumpyEvaluator:
    """Evaluates a CNTK v2 model file for one sample given in CNTK axis order."""

    def __init__(self, path: Path) -> None:
        top = _dict(path.read_bytes())
        self.vars = {v["uid"]: v for v in top["inputs"]}
        self.funcs = {f["uid"]: f for f in top["primitive_functions"]}
        self.root = top["root"]
        self.bind = {}
        for f in self.funcs.values():
            if f["op"] == 57:
                self.bind.update(zip(f["block_function_composite_arguments_map_keys"],
                                     f["block_function_composite_arguments_map_values"]))

    def input_uid(self) -> str:
        return next(u for u, v in self.vars.items() if v.get("kind", 0) == 0)

    def __call__(self, sample: np.ndarray) -> np.ndarray:
        self.cache = {self.input_uid(): sample.astype(np.float64)}
        return self.value(f"{self.root}_Output_0")

    def value(self, name: str) -> np.ndarray:
        if name in self.cache:
            return self.cache[name]
        if name in self.vars:
            v = self.vars[name]
            res = self.value(self.bind[name]) if v.get("kind") == 4 else v["value"]
        else:
            f = self.funcs[name.rsplit("_Output_", 1)[0]]
            if f["op"] == 57:
                res = self.value(f"{f['block_function_composite']['root']}_Output_0")
            else:
                res = self.apply(f, [self.value(i) for i in f["inputs"]])
        self.cache[name] = res
        return res

    def apply(self, f: dict, ins: list[np.ndarray]) -> np.ndarray:
        op, a = f["op"], f.get("attributes", {})
        if op == 19:
            return _plus(ins[0], ins[1])
        if op == 3:
            return np.maximum(ins[0], 0)
        if op == 75:
            return 1 / (1 + np.exp(-ins[0]))
        if op == 31:
            return _times(ins[0], ins[1], a)
        if op == 33:
            return _conv(ins[0], ins[1], a)
        if op == 17:
            return _pool(ins[0], a)
        if op == 10:
            return _softmax(ins[0])
        if op == 15:
            return ins[0]
        if op == 40:
            x, scale, bias, mean, var = ins[:5]
            assert not a.get("spatial", False)
            p = [t.reshape(x.shape, order="F") for t in (scale, bias, mean, var)]
            return (x - p[2]) / np.sqrt(p[3] + a["epsilon"]) * p[0] + p[1]
        if op == 16:
            x = ins[0]
            begin = a["beginAxis"][1] if "beginAxis" in a else 0
            end = a["endAxis"][1] if "endAxis" in a else x.ndim
            new = tuple(a["newShape"][1])
            return x.reshape(x.shape[:begin] + new + x.shape[end:], order="F")
        raise NotImplementedError(f"evaluator: op {op}")


# ---------------------------------------------------------------------------------- tests


def _bmp_gray(path: Path) -> np.ndarray:
    """An 8-bit grayscale BMP as an (H, W) array (BMP rows are stored bottom-up)."""
    b = path.read_bytes()
    offset = struct.unpack_from("<I", b, 10)[0]
    w, h = struct.unpack_from("<ii", b, 18)
    assert struct.unpack_from("<H", b, 28)[0] == 8
    row = (w + 3) // 4 * 4
    img = np.frombuffer(b, np.uint8, count=row * abs(h), offset=offset).reshape(abs(h), row)[:, :w]
    return img[::-1] if h > 0 else img


@pytest.fixture(scope="module")
def mnist(cntk_data: Path):
    path = cntk_data / "mnist_conv.cmf"
    return path, Session(convert_paths([path]))


@pytest.fixture(scope="module")
def digits(cntk_data: Path) -> np.ndarray:
    imgs = [_bmp_gray(cntk_data / f"sample_{d}.bmp") for d in (4, 9)]
    return np.stack(imgs)[:, None].astype(np.float32)  # (2, 1, 28, 28)


def _nchw_to_cntk(x: np.ndarray) -> np.ndarray:
    """One (C, H, W) sample -> CNTK's [W, H, C] axis order."""
    return np.transpose(x, (2, 1, 0))


def test_mnist_classifies_sample_digits(mnist, digits):
    _, s = mnist
    probs = s.run({"input": digits})["output"]
    assert probs.shape == (2, 10)
    assert probs.argmax(1).tolist() == [4, 9]
    # orientation check: the transposed images are not classified as 4 and 9
    flipped = s.run({"input": np.ascontiguousarray(digits.transpose(0, 1, 3, 2))})["output"]
    assert flipped.argmax(1).tolist() != [4, 9]


def test_mnist_softmax_matches_numpy_evaluator(mnist, digits):
    path, s = mnist
    ev = CntkNumpyEvaluator(path)
    # the two sample digits plus scaled variants exercise non-saturated softmax outputs
    batch = np.concatenate([digits, digits / 255.0, digits * 0.02]).astype(np.float32)
    got = s.run({"input": batch})["output"]
    ref = np.stack([ev(_nchw_to_cntk(x)) for x in batch])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert ref.argmax(1)[:2].tolist() == [4, 9]


@pytest.mark.parametrize("name,shape", [("cifar10.model", (3, 32, 32)), ("logistic.model", (2,)),
                                        ("moon.model", (2,))])
def test_real_models_convert_and_match_numpy_evaluator(cntk_data: Path, name, shape):
    path = cntk_data / name
    assert detect([path]).name == "cntk"
    model = convert_paths([path])
    s = Session(model)
    assert s.inputs[0].shape[1:] == shape
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    got = next(iter(s.run({s.inputs[0].name: x}).values()))
    ev = CntkNumpyEvaluator(path)
    to_cntk = _nchw_to_cntk if len(shape) == 3 else (lambda v: v)
    ref = np.stack([ev(to_cntk(v)).reshape(-1) for v in x])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.reshape(2, -1), ref, rtol=1e-4, atol=1e-5)


def test_cifar_non_spatial_batchnorm_is_elementwise(cntk_data: Path):
    model = convert_paths([cntk_data / "cifar10.model"])
    ops = [n.op_type for n in model.graph]
    assert "BatchNormalization" not in ops  # spatial=False lowers to elementwise ops
    assert ops.count("Conv") == 6 and ops.count("MaxPool") == 3
    convs = [n for n in model.graph if n.op_type == "Conv"]
    # stride-1 3x3 auto-padding: pads (1, 1) on both spatial axes, none on channels
    assert all(list(n.attributes["pads"].value) == [1, 1, 1, 1] for n in convs)
    pools = [n for n in model.graph if n.op_type == "MaxPool"]
    # CNTK auto-padding of a 3x3/2 window on an even input puts the extra cell first: (1, 0)
    assert all(list(n.attributes["pads"].value) == [1, 1, 0, 0] for n in pools)
