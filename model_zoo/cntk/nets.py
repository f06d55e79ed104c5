"""CNTK v2 reference models whose weights come from PyTorch, with their PyTorch twins.

Every case returns a ``ZooModel``: the CNTK model file (written by ``writer.CntkWriter``
under ``cache_dir("cntk")``), the input's NumPy sample shape, and ``torch_forward`` - the same
computation in PyTorch with the same weights, written from CNTK's documented semantics
(column-major axes, ConvolveGeometry's auto-padding, whole-sample softmax, ...). PyTorch is
therefore the reference for every op the CNTK importer lowers.

    from model_zoo.cntk.nets import build
    m = build("convnet")            # ZooModel(path, input_shape, torch_forward)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.cntk.writer import ALL_STATIC_AXES, CntkWriter, Int, axis, shape
from model_zoo.common import cache_dir


@dataclass
class ZooModel:
    name: str
    path: Path
    input_shape: tuple[int, ...]
    torch_forward: Callable[[Any], Any]
    #: inputs must be positive (log, sqrt, reciprocal ...)
    positive: bool = False


def cntk_auto_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """(out, lower, upper) of one CNTK auto-padded axis (ConvolveGeometry::GetLowerPad/UpperPad):
    out = ceil(size / stride); the first kernel centre sits ``extra // 2`` cells in."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    extra = size - ((out - 1) * stride + 1)
    lo = (eff - 1) // 2 - extra // 2
    hi = (eff - 1) - (eff - 1) // 2 - (extra - extra // 2)
    return out, lo, hi


def _torch():
    from portanet._deps import require

    return require("torch")


def _t(a: np.ndarray):
    return _torch().from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _rand(rng: np.random.Generator, *s: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(s) * scale).astype(np.float32)


# --------------------------------------------------------------------------------- full nets
def _convnet(w: CntkWriter, rng: np.random.Generator) -> tuple[str, Callable]:
    """conv 3x3/2 (auto-pad, CNTK's asymmetric pads) -> two conv branches spliced on channels ->
    non-spatial BatchNorm -> ReLU -> max-pool 3x3/2 auto-padded -> Dense -> Softmax."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
            self.branch_a = nn.Conv2d(8, 6, 1)
            self.branch_b = nn.Conv2d(8, 6, 3)
            self.dense = nn.Linear(12 * 4 * 4, 10)
            g = torch.Generator().manual_seed(1)
            # non-spatial BatchNorm: one statistic per (c, h, w)
            self.register_buffer("bn_mean", torch.randn(12, 8, 8, generator=g) * 0.2)
            self.register_buffer("bn_var", torch.rand(12, 8, 8, generator=g) + 0.5)
            self.bn_scale = nn.Parameter(torch.rand(12, 8, 8, generator=g) + 0.5)
            self.bn_bias = nn.Parameter(torch.randn(12, 8, 8, generator=g) * 0.1)

        def forward(self, x):
            _, lo, hi = cntk_auto_pads(16, 3, 2)  # (1, 0): the extra cell is padded at the start
            x = F.relu(self.conv1(F.pad(x, (lo, hi, lo, hi))))
            a = self.branch_a(x)
            _, lo1, hi1 = cntk_auto_pads(8, 3, 1)
            b = self.branch_b(F.pad(x, (lo1, hi1, lo1, hi1)))
            x = torch.cat([a, b], dim=1)
            x = (x - self.bn_mean) / torch.sqrt(self.bn_var + 1e-5) * self.bn_scale + self.bn_bias
            x = F.relu(x)
            _, lo2, hi2 = cntk_auto_pads(8, 3, 2)
            x = F.max_pool2d(F.pad(x, (lo2, hi2, lo2, hi2), value=-math.inf), 3, 2)
            x = self.dense(x.flatten(1))
            return F.softmax(x, dim=1)

    net = Net().eval()
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    x = w.input((3, 16, 16), "features")

    def conv_block(inp: str, wname: str, cin: int, k: int, stride: int, relu: bool, name: str) -> str:
        with w.block("Convolution", [inp], name=name) as blk:
            W = w.parameter(sd[f"{wname}.weight"], "W")
            b = w.parameter(sd[f"{wname}.bias"].reshape(-1, 1, 1), "b")
            y = w.op("Convolution", [W, blk.args[0]], {
                "autoPadding": [True, True, False], "sharing": [True], "strides": shape(stride, stride, cin),
                "lowerPad": shape(0), "upperPad": shape(0), "transpose": False, "maxTempMemSizeInSamples": 0,
                "outputShape": shape(0), "dilation": shape(1, 1, 1), "kernelShape": shape(k, k, cin),
            })
            y = w.op("Plus", [y, b])
            if relu:
                w.op("ReLU", [y])
        return blk.output

    h = conv_block(x, "conv1", 3, 3, 2, True, "conv1")
    a = conv_block(h, "branch_a", 8, 1, 1, False, "branch_a")
    b = conv_block(h, "branch_b", 8, 3, 1, False, "branch_b")
    s = w.op("Splice", [a, b], {"axis": axis(-1)})  # Python axis 0 (channels) is stored as Axis(-1)
    bn = w.op("BatchNormalization", [
        s, w.parameter(sd["bn_scale"].ravel()), w.parameter(sd["bn_bias"].ravel()),
        w.constant(sd["bn_mean"].ravel()), w.constant(sd["bn_var"].ravel()), w.constant(np.float32(0)),
    ], {"spatial": False, "epsilon": 1e-5, "normalizationTimeConstant": 5000.0, "blendTimeConstant": 0.0,
        "useCuDNNEngine": True, "disableRegularization": False})
    r = w.op("ReLU", [bn])
    with w.block("MaxPooling", [r], name="pool") as blk:
        w.op("Pooling", [blk.args[0]], {"poolingType": 0, "poolingWindowShape": shape(3, 3), "strides": shape(2, 2),
                                        "autoPadding": [True], "lowerPad": shape(0), "upperPad": shape(0),
                                        "ceilOutDim": False, "includePad": False})
    p = blk.output
    with w.block("Dense", [p], name="dense") as blk:
        Wd = w.parameter(sd["dense.weight"].T.reshape(12, 4, 4, 10), "W")  # (in..., out)
        bd = w.parameter(sd["dense.bias"], "b")
        w.op("Plus", [w.op("Times", [Wd, blk.args[0]], {"outputRank": 1, "inferInputRankToMap": Int(-1)}), bd])
    y = w.op("Softmax", [blk.output], name="probs")

    def forward(xt):
        with torch.no_grad():
            return net(xt)

    return y, forward


NETS: dict[str, tuple[tuple[int, ...], Callable]] = {"convnet": ((3, 16, 16), _convnet)}


# ------------------------------------------------------------------------- single-op cases
# Each case: (input sample shape, builder(w, x, rng) -> (output uid, torch function), positive)
Case = tuple[tuple[int, ...], Callable[[CntkWriter, str, np.random.Generator], tuple[str, Callable]], bool]
CASES: dict[str, Case] = {}


def case(name: str, in_shape: tuple[int, ...], positive: bool = False):
    def deco(fn):
        CASES[name] = (in_shape, fn, positive)
        return fn

    return deco


def _unary(cntk_op: str, torch_name: str, positive: bool = False) -> None:
    @case(f"unary_{cntk_op}", (2, 3, 4), positive)
    def build(w, x, rng):
        torch = _torch()
        fn = {"neg": torch.neg, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "exp": torch.exp,
              "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs, "reciprocal": torch.reciprocal,
              "elu": torch.nn.functional.elu}[torch_name]
        return w.op(cntk_op, [x]), fn


for _c, _tn, _pos in [("Negate", "neg", False), ("Sigmoid", "sigmoid", False), ("StableSigmoid", "sigmoid", False),
                      ("Tanh", "tanh", False), ("ReLU", "relu", False), ("Exp", "exp", False), ("Log", "log", True),
                      ("Sqrt", "sqrt", True), ("Abs", "abs", False), ("Reciprocal", "reciprocal", True),
                      ("ELU", "elu", False)]:
    _unary(_c, _tn, _pos)


@case("binary_plus_bias", (4, 3, 5))
def _plus_bias(w, x, rng):
    b = _rand(rng, 4, 1, 1)
    return w.op("Plus", [x, w.parameter(b)]), lambda t: t + _t(b)


@case("binary_minus_times", (4, 3, 5))
def _minus_times(w, x, rng):
    a, c = _rand(rng, 3, 5), _rand(rng, 4, 3, 5)
    y = w.op("ElementTimes", [w.op("Minus", [x, w.parameter(a)]), w.constant(c)])
    return y, lambda t: (t - _t(a)) * _t(c)


@case("binary_batched_ranks", (3, 5))
def _batched_ranks(w, x, rng):
    """Two batched operands of different sample ranks: CNTK aligns the leading CNTK axes."""
    W = _rand(rng, 5, 2, 3, 5)  # in (5,), out (2, 3, 5) in NumPy order
    y = w.op("Times", [w.parameter(W), x], {"outputRank": 3})  # sample (3, 2, 3, 5)
    z = w.op("Plus", [y, x])

    def f(t):
        prod = _torch().einsum("nai,ibcd->nabcd", t, _t(W))
        # x's CNTK dims [5, 3] align with the product's leading CNTK dims = NumPy's trailing ones
        return prod + t[:, None, None, :, :]

    return z, f


@case("clip", (3, 4))
def _clip(w, x, rng):
    return w.op("Clip", [x, w.constant(np.float32(-0.3)), w.constant(np.float32(0.4))]), \
        lambda t: _torch().clamp(t, -0.3, 0.4)


@case("compare_select", (3, 4))
def _compare_select(w, x, rng):
    """ElementSelect(x > c, x, Less(x, 0) * 2 - NotEqual(x, x)): comparisons give 1.0 / 0.0."""
    torch = _torch()
    c = _rand(rng, 4)
    cond = w.op("Greater", [x, w.constant(c)])
    other = w.op("Minus", [w.op("ElementTimes", [w.op("Less", [x, w.constant(np.float32(0))]),
                                                 w.constant(np.float32(2))]), w.op("NotEqual", [x, x])])
    y = w.op("Select", [cond, x, other])

    def f(t):
        return torch.where(t > _t(c), t, (t < 0).float() * 2 - (t != t).float())

    return y, f


@case("logplus_broadcast", (4, 3, 5))
def _logplus(w, x, rng):
    """LogPlus (log_add_exp) with a broadcast operand; large values must not overflow."""
    b = _rand(rng, 4, 1, 1, scale=30.0)
    y = w.op("LogPlus", [w.op("ElementTimes", [x, w.constant(np.float32(40))]), w.parameter(b)])
    return y, lambda t: _torch().logaddexp(t * 40, _t(b))


@case("compare_equal_ge_le", (5,))
def _compare_eq(w, x, rng):
    floor = w.op("Floor", [w.op("ElementTimes", [x, w.constant(np.float32(2))])])
    eq = w.op("Equal", [floor, w.constant(np.float32(0))])
    ge = w.op("GreaterEqual", [x, w.constant(np.float32(0.25))])
    le = w.op("LessEqual", [x, w.constant(np.float32(-0.25))])
    y = w.op("Plus", [w.op("Plus", [eq, w.op("ElementTimes", [ge, w.constant(np.float32(2))])]),
                      w.op("ElementTimes", [le, w.constant(np.float32(4))])])

    def f(t):
        return (_torch().floor(t * 2) == 0).float() + (t >= 0.25).float() * 2 + (t <= -0.25).float() * 4

    return y, f


@case("softmax_whole_sample", (3, 4, 5))
def _softmax(w, x, rng):
    torch = _torch()
    return w.op("Softmax", [x]), lambda t: torch.softmax(t.flatten(1), 1).reshape(t.shape)


@case("logsoftmax_whole_sample", (2, 6))
def _logsoftmax(w, x, rng):
    torch = _torch()
    return w.op("LogSoftmax", [x]), lambda t: torch.log_softmax(t.flatten(1), 1).reshape(t.shape)


@case("times_output_rank2", (3, 4))
def _times2(w, x, rng):
    W = _rand(rng, 4, 2, 5)  # in (4,), out (2, 5) in NumPy order
    y = w.op("Times", [w.parameter(W), x], {"outputRank": 2, "inferInputRankToMap": Int(-1)})
    return y, lambda t: _torch().einsum("nai,ibc->nabc", t, _t(W))


@case("times_multi_in", (3, 4, 2))
def _times_in(w, x, rng):
    W = _rand(rng, 3, 4, 2, 6)
    y = w.op("Times", [w.parameter(W), x], {"outputRank": 1})
    return y, lambda t: t.flatten(1) @ _t(W.reshape(24, 6))


@case("transpose_times", (4,))
def _ttimes(w, x, rng):
    W = _rand(rng, 5, 4)  # CNTK [4, 5]: W^T x maps 4 -> 5
    y = w.op("TransposeTimes", [w.parameter(W), x], {"outputRank": 1})
    return y, lambda t: t @ _t(W).T


def _conv_attrs(k: tuple[int, int], cin: int, stride: int = 1, auto: bool = True, lower=(0,), upper=(0,),
                dilation: int = 1, groups: int = 1, transpose: bool = False) -> dict[str, Any]:
    d = {"autoPadding": [auto, auto, False], "sharing": [True], "strides": shape(stride, stride, cin),
         "lowerPad": shape(*lower), "upperPad": shape(*upper), "transpose": transpose,
         "maxTempMemSizeInSamples": 0, "outputShape": shape(0), "dilation": shape(dilation, dilation, 1),
         "kernelShape": shape(k[1], k[0], cin // groups)}
    if groups != 1:
        d["groups"] = groups
    return d


def _conv_case(name: str, in_shape, cout: int, k, stride=1, auto=True, lower=(0, 0, 0), upper=(0, 0, 0),
               dilation=1, groups=1) -> None:
    cin, H, W_ = in_shape

    @case(name, in_shape)
    def build(w, x, rng):
        torch = _torch()
        F = torch.nn.functional
        Wt = _rand(rng, cout, cin // groups, *k)
        y = w.op("Convolution", [w.parameter(Wt), x],
                 _conv_attrs(k, cin, stride, auto, lower, upper, dilation, groups))
        if auto:
            _, lh, hh = cntk_auto_pads(H, k[0], stride, dilation)
            _, lw, hw = cntk_auto_pads(W_, k[1], stride, dilation)
        else:  # explicit pads, CNTK order [W, H, C]
            lw, lh, hw, hh = lower[0], lower[1], upper[0], upper[1]

        def f(t):
            return F.conv2d(F.pad(t, (lw, hw, lh, hh)), _t(Wt), stride=stride, dilation=dilation, groups=groups)

        return y, f


_conv_case("conv_s2_autopad_even", (3, 16, 16), 5, (3, 3), stride=2)
_conv_case("conv_s2_autopad_odd", (2, 15, 13), 4, (3, 3), stride=2)
_conv_case("conv_s2_k4_autopad", (2, 12, 10), 3, (4, 4), stride=2)
_conv_case("conv_5x3_autopad", (2, 9, 8), 3, (5, 3))
_conv_case("conv_explicit_pads", (2, 8, 8), 3, (3, 3), stride=1, auto=False, lower=(1, 2, 0), upper=(1, 0, 0))
_conv_case("conv_dilated", (2, 11, 11), 3, (3, 3), dilation=2)
_conv_case("conv_groups", (4, 8, 8), 6, (3, 3), groups=2)


@case("conv_transpose_s2", (4, 5, 6))
def _deconv(w, x, rng):
    torch = _torch()
    Wt = _rand(rng, 4, 3, 3, 3)  # (Cin, Cout, kH, kW)
    attrs = _conv_attrs((3, 3), 3, 2, True, transpose=True)
    attrs["strides"] = shape(2, 2, 3)
    attrs["kernelShape"] = shape(3, 3, 3)
    y = w.op("Convolution", [w.parameter(Wt), x], attrs)

    def f(t):
        # CNTK's output (autopad): (in - 1) * stride + 1, the adjoint of its auto-padded conv:
        # pads (k-1)//2 before, the rest after
        full = torch.nn.functional.conv_transpose2d(t, _t(Wt), stride=2)  # (in-1)*2 + 3
        return full[:, :, 1:1 + (5 - 1) * 2 + 1, 1:1 + (6 - 1) * 2 + 1]

    return y, f


def _pool_case(name: str, in_shape, ptype: int, window, stride, auto: bool, ceil_out=False, include_pad=False,
               lower=(0,), upper=(0,)) -> None:
    C, H, W_ = in_shape

    @case(name, in_shape)
    def build(w, x, rng):
        torch = _torch()
        F = torch.nn.functional
        y = w.op("Pooling", [x], {"poolingType": ptype, "poolingWindowShape": shape(window[1], window[0]),
                                  "strides": shape(stride[1], stride[0]), "autoPadding": [auto],
                                  "lowerPad": shape(*lower), "upperPad": shape(*upper), "ceilOutDim": ceil_out,
                                  "includePad": include_pad})

        def f(t):
            pads = []
            for dim, (size, k, s) in enumerate(((H, window[0], stride[0]), (W_, window[1], stride[1]))):
                cntk_i = 1 - dim  # CNTK order is (W, H)
                if auto:
                    out, lo, hi = cntk_auto_pads(size, k, s)
                else:
                    lo = lower[cntk_i] if len(lower) > cntk_i else lower[-1]
                    hi = upper[cntk_i] if len(upper) > cntk_i else upper[-1]
                    q = (size + lo + hi - k) / s + 1
                    out = math.ceil(q) if ceil_out else math.floor(q)
                hi = max(hi, (out - 1) * s + k - size - lo)
                pads.append((lo, hi))
            (lh, hh), (lw, hw) = pads
            if ptype == 0:
                return F.max_pool2d(F.pad(t, (lw, hw, lh, hh), value=-math.inf), window, stride)
            summed = F.avg_pool2d(F.pad(t, (lw, hw, lh, hh)), window, stride) * (window[0] * window[1])
            if include_pad:
                return summed / (window[0] * window[1])
            ones = F.pad(torch.ones(1, 1, H, W_), (lw, hw, lh, hh))
            count = F.avg_pool2d(ones, window, stride) * (window[0] * window[1])
            return summed / count

        return y, f


_pool_case("maxpool_autopad_s2", (3, 12, 12), 0, (3, 3), (2, 2), True)
_pool_case("maxpool_ceil", (2, 7, 9), 0, (2, 2), (2, 2), False, ceil_out=True)
_pool_case("avgpool_plain", (2, 8, 6), 1, (2, 2), (2, 2), False)
_pool_case("avgpool_autopad_excl", (2, 9, 7), 1, (3, 3), (2, 2), True, include_pad=False)
_pool_case("avgpool_autopad_incl", (2, 9, 7), 1, (3, 3), (1, 1), True, include_pad=True)
_pool_case("maxpool_explicit_pads", (2, 6, 6), 0, (3, 3), (1, 1), False, lower=(1, 1), upper=(1, 1))


@case("batchnorm_spatial", (4, 5, 6))
def _bn_spatial(w, x, rng):
    torch = _torch()
    s, b, m = _rand(rng, 4), _rand(rng, 4), _rand(rng, 4)
    v = (rng.random(4) + 0.5).astype(np.float32)
    y = w.op("BatchNormalization", [x, w.parameter(s), w.parameter(b), w.constant(m), w.constant(v),
                                    w.constant(np.float32(100))], {"spatial": True, "epsilon": 1e-3})
    return y, lambda t: torch.nn.functional.batch_norm(t, _t(m), _t(v), _t(s), _t(b), False, 0.0, 1e-3)


@case("batchnorm_nonspatial_5in", (3, 4, 5))
def _bn_nonspatial(w, x, rng):
    s, b, m = _rand(rng, 60), _rand(rng, 60), _rand(rng, 60)
    v = (rng.random(60) + 0.5).astype(np.float32)
    y = w.op("BatchNormalization", [x, w.parameter(s), w.parameter(b), w.constant(m), w.constant(v)],
             {"spatial": False, "epsilon": 1e-5})

    def f(t):
        r = (3, 4, 5)
        return (t - _t(m).reshape(r)) / _torch().sqrt(_t(v).reshape(r) + 1e-5) * _t(s).reshape(r) + _t(b).reshape(r)

    return y, f


@case("dropout_pass_noop_stopgradient", (3, 4))
def _identities(w, x, rng):
    y = w.op("Dropout", [x], {"dropoutRate": 0.5, "rngSeed": 1, "rngOffset": 0})
    y = w.op("StopGradient", [w.op("NoOp", [w.op("Pass", [y])])])
    return w.op("Tanh", [y]), lambda t: _torch().tanh(t)


@case("reshape_begin_end", (4, 3, 2))
def _reshape(w, x, rng):
    # CNTK dims [2, 3, 4]; replace CNTK axes [0, 2) = [2, 3] by [6] -> [6, 4], NumPy (4, 6)
    y = w.op("Reshape", [x], {"newShape": shape(6), "beginAxis": axis(0), "endAxis": axis(2)})
    return y, lambda t: t.reshape(t.shape[0], 4, 6)


@case("reshape_inferred", (4, 3, 2))
def _reshape_inf(w, x, rng):
    # whole-sample reshape [2, 3, 4] -> [0 (copy 2), inferred, 3] = [2, 4, 3], NumPy (3, 4, 2)
    y = w.op("Reshape", [x], {"newShape": shape(0, 2**64 - 1, 3)})
    return y, lambda t: t.reshape(t.shape[0], 3, 4, 2)


@case("splice_channels", (3, 4, 5))
def _splice(w, x, rng):
    # Python axis 0 (channels) is stored as CNTK Axis(-1): the last CNTK axis of [W, H, C]
    y = w.op("Splice", [x, w.op("Negate", [x])], {"axis": axis(-1)})
    return y, lambda t: _torch().cat([t, -t], 1)


@case("splice_new_axis", (3, 4))
def _splice_new(w, x, rng):
    y = w.op("Splice", [x, w.op("Negate", [x])], {"axis": axis(2)})  # rank 2 -> new CNTK axis 2 (NumPy front)
    return y, lambda t: _torch().stack([t, -t], 1)


@case("slice_single", (5, 6))
def _slice(w, x, rng):
    # CNTK axis 0 is NumPy's last: [-4, 0) means from 2 to the end
    y = w.op("Slice", [x], {"axis": axis(0), "beginIndex": Int(-4), "endIndex": Int(0)})
    return y, lambda t: t[:, :, 2:]


@case("slice_vec_strided", (6, 7, 4))
def _slice_vec(w, x, rng):
    y = w.op("Slice", [x], {"axisVec": [axis(2), axis(1)], "beginIndexVec": [Int(1), Int(0)],
                            "endIndexVec": [Int(5), Int(7)], "sliceStridesVec": [Int(2), Int(3)]})
    return y, lambda t: t[:, 1:5:2, 0:7:3, :]


@case("transpose_swap", (2, 3, 4))
def _transpose(w, x, rng):
    y = w.op("TransposeAxes", [x], {"axis1": axis(0), "axis2": axis(2)})  # CNTK W <-> C
    return y, lambda t: t.permute(0, 3, 2, 1)


@case("transpose_perm", (2, 3, 4))
def _transpose_perm(w, x, rng):
    # output CNTK axis i takes input CNTK axis perm[i]; perm [1, 2, 0]: out dims [3, 2, 4] -> NumPy (4, 2, 3)
    y = w.op("TransposeAxes", [x], {"axisVec": [axis(1), axis(2), axis(0)]})
    return y, lambda t: t.permute(0, 3, 1, 2)


def _reduce_case(name: str, op: str, axes, keep: bool, torch_fn) -> None:
    @case(name, (3, 4, 5))
    def build(w, x, rng):
        attrs = {"reductionOpName": op, "reductionKeepDimensions": keep}
        if isinstance(axes, list):
            attrs["axisVec"] = axes
            attrs["axis"] = axes[0]
        else:
            attrs["axis"] = axes
        return w.op("ReduceElements", [x], attrs), torch_fn


_reduce_case("reduce_sum_keep", "Sum", axis(0), True, lambda t: t.sum(3, keepdim=True))
_reduce_case("reduce_mean_vec", "Mean", [axis(0), axis(1)], False, lambda t: t.mean((2, 3)))
_reduce_case("reduce_max_all", "Max", ALL_STATIC_AXES, True, lambda t: t.amax((1, 2, 3), keepdim=True))
_reduce_case("reduce_logsum", "LogSum", axis(2), True, lambda t: t.logsumexp(1, keepdim=True))
_reduce_case("reduce_argmax", "Argmax", axis(1), True, lambda t: t.argmax(2, keepdim=True).float())


@case("pad_constant", (2, 3, 4))
def _pad(w, x, rng):
    y = w.op("Pad", [x], {"paddingHead": shape(1, 0, 2), "paddingFoot": shape(2, 1, 0), "paddingMode": 0,
                          "paddingConstantValue": 0.5})
    return y, lambda t: _torch().nn.functional.pad(t, (1, 2, 0, 1, 2, 0), value=0.5)


@case("pad_reflect", (2, 5, 6))
def _pad_reflect(w, x, rng):
    y = w.op("Pad", [x], {"paddingHead": shape(2, 1, 0), "paddingFoot": shape(1, 2, 0), "paddingMode": 1,
                          "paddingConstantValue": 0.0})
    return y, lambda t: _torch().nn.functional.pad(t, (2, 1, 1, 2), mode="reflect")


@case("squeeze_all", (1, 4, 1, 3))
def _squeeze(w, x, rng):
    return w.op("Squeeze", [x]), lambda t: t.reshape(t.shape[0], 4, 3)


@case("squeeze_axis", (1, 4, 1, 3))
def _squeeze_axis(w, x, rng):
    return w.op("Squeeze", [x], {"axisVec": [axis(1)]}), lambda t: t.reshape(t.shape[0], 1, 4, 3)


# ------------------------------------------------------------------------------- building
def build(name: str, *, large: bool = False, directory: Path | None = None) -> ZooModel:
    """Write zoo model ``name`` (a net or a single-op case) and return it with its PyTorch twin."""
    out_dir = directory or cache_dir("cntk")
    w = CntkWriter()
    rng = np.random.default_rng(_seed(name))
    if name in NETS:
        in_shape, fn = NETS[name]
        y, forward = fn(w, rng)
        positive = False
    else:
        in_shape, fn, positive = CASES[name]
        x = w.input(in_shape)
        y, forward = fn(w, x, rng)
    path = out_dir / f"{name}{'-large' if large else ''}.model"
    w.save(path, y, large=large, name=name)
    return ZooModel(name, path, tuple(in_shape), forward, positive)


def _seed(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2**31)


def all_names() -> list[str]:
    return [*NETS, *CASES]


# ------------------------------------------------------------------------ recurrent models
# Written the way cntk.layers builds them: Recurrence(LSTM/GRU/RNNStep) is a cycle through
# PastValue (FutureValue for go_backwards) closed with a forward declaration; the cell is a
# Block of Times/Plus/Slice/Sigmoid/Tanh/ElementTimes; sequence.last/first is CNTK's
# Sequence::Slice Block (Where/PackedIndex/GatherPacked over IsWithin flags). Their weights
# are random; the tests compute the reference with numpy recurrences of their own.


@dataclass
class RecurrentZooModel:
    name: str
    path: Path
    #: the sequence input's NumPy sample shape (per step)
    input_shape: tuple[int, ...]
    #: every input's name and sample shape, in the converted model's input order
    inputs: dict[str, tuple[int, ...]]
    #: the arrays the model was written with, by role ("W", "H", "b", ...)
    weights: dict[str, np.ndarray]
    #: the graph outputs in order
    outputs: list[str]
    #: the inputs without a sequence axis
    static: set[str] = field(default_factory=set)


def _zero(w: CntkWriter) -> str:
    return w.constant(np.float32(0))


def _gates(w: CntkWriter, proj: str, hidden: int, k: int) -> str:
    """Gate block k of a stacked projection (python ``slice(proj, -1, k*H, (k+1)*H)``)."""
    return w.op("Slice", [proj], {"axis": axis(0), "beginIndex": Int(k * hidden), "endIndex": Int((k + 1) * hidden)})


def _times(w: CntkWriter, W: str, x: str) -> str:
    """python ``times(x, W)`` (stored with the operands swapped); W (in dims..., out)."""
    return w.op("Times", [W, x], {"outputRank": 1, "inferInputRankToMap": Int(-1)})


def softplus(w: CntkWriter, x: str, steepness: float) -> str:
    """python ``softplus(x, steepness)``: Softplus Block (LogPlus(x, 0)) of steepness * x, / steepness."""
    sx = w.op("ElementTimes", [w.constant(np.float32(steepness)), x])
    with w.block("Softplus", [sx]) as blk:
        w.op("LogPlus", [blk.args[0], w.constant(np.float32(0))])
    return w.op("ElementTimes", [blk.output, w.op("Reciprocal", [w.constant(np.float32(steepness))])])


def stabilizer(w: CntkWriter, x: str, alpha: np.ndarray, steepness: float = 4.0) -> str:
    """``cntk.layers.Stabilizer``: x times softplus(alpha, steepness), alpha a learned scalar."""
    beta = softplus(w, w.parameter(alpha, "alpha"), steepness)
    with w.block("Stabilizer", [x]) as blk:
        w.op("ElementTimes", [beta, blk.args[0]])
    return blk.output


def lstm_recurrence(w: CntkWriter, x: str, W: np.ndarray, H: np.ndarray, b: np.ndarray,
                    delay: str = "PastValue", peepholes: dict[str, np.ndarray] | None = None,
                    stabilizers: dict[str, np.ndarray] | None = None) -> tuple[str, str]:
    """``Recurrence(LSTM(hidden))``: W (F, 4H), H (H, 4H), b (4H,), gate blocks i, c~, f, o
    (cntk.layers.LSTM's order). ``peepholes`` {Ci, Cf, Co} (H,) and ``stabilizers``
    {dh, dc, c} (scalars alpha) as ``use_peepholes`` / ``enable_self_stabilization`` add
    them. Returns the h and c sequences."""
    hidden = H.shape[0]
    ph, pc = w.placeholder(), w.placeholder()
    dh = w.op(delay, [ph, _zero(w)], {"offset": 1})
    dc = w.op(delay, [pc, _zero(w)], {"offset": 1})
    with w.block("LSTM", [dh, dc, x], outputs=2, name="lstm") as blk:
        a_dh, a_dc, a_x = blk.args

        def stab(v: str, which: str) -> str:
            return stabilizer(w, v, stabilizers[which]) if stabilizers else v

        def peep(v: str, c: str, which: str) -> str:
            return w.op("Plus", [v, w.op("ElementTimes", [w.parameter(peepholes[which], which), c])]) \
                if peepholes else v

        dhs, dcs = stab(a_dh, "dh"), stab(a_dc, "dc")
        proj = w.op("Plus", [w.op("Plus", [w.parameter(b, "b"), _times(w, w.parameter(W, "W"), a_x)]),
                             _times(w, w.parameter(H, "H"), dhs)])
        it = w.op("Sigmoid", [peep(_gates(w, proj, hidden, 0), dcs, "Ci")])
        bit = w.op("ElementTimes", [it, w.op("Tanh", [_gates(w, proj, hidden, 1)])])
        ft = w.op("Sigmoid", [peep(_gates(w, proj, hidden, 2), dcs, "Cf")])
        bft = w.op("ElementTimes", [ft, a_dc])
        ct = w.op("Plus", [bft, bit])
        ot = w.op("Sigmoid", [peep(_gates(w, proj, hidden, 3), stab(ct, "c"), "Co")])
        ht = w.op("ElementTimes", [ot, w.op("Tanh", [ct])])
        w.op("Combine", [ht, ct])
    h, c = blk.outputs
    w.bind(ph, h)
    w.bind(pc, c)
    return h, c


def gru_recurrence(w: CntkWriter, x: str, W: np.ndarray, H: np.ndarray, H1: np.ndarray, b: np.ndarray) -> str:
    """``Recurrence(GRU(hidden))``: W (F, 3H), H (H, 2H), H1 (H, H), b (3H,), blocks z, r, c~;
    h_t = (1 - z) * tanh(x W_c + b_c + (r * h_{t-1}) H1) + z * h_{t-1} (cntk.layers.GRU)."""
    hidden = H1.shape[0]
    ph = w.placeholder()
    dh = w.op("PastValue", [ph, _zero(w)], {"offset": 1})
    with w.block("GRU", [dh, x], name="gru") as blk:
        a_dh, a_x = blk.args
        projx = w.op("Plus", [w.parameter(b, "b"), _times(w, w.parameter(W, "W"), a_x)])
        projh = _times(w, w.parameter(H, "H"), a_dh)
        zt = w.op("Sigmoid", [w.op("Plus", [_gates(w, projx, hidden, 0), _gates(w, projh, hidden, 0)])])
        rt = w.op("Sigmoid", [w.op("Plus", [_gates(w, projx, hidden, 1), _gates(w, projh, hidden, 1)])])
        dc = _times(w, w.parameter(H1, "H1"), w.op("ElementTimes", [a_dh, rt]))
        ct = w.op("Tanh", [w.op("Plus", [_gates(w, projx, hidden, 2), dc])])
        one_minus_z = w.op("Minus", [w.constant(np.float32(1)), zt])
        w.op("Plus", [w.op("ElementTimes", [one_minus_z, ct]), w.op("ElementTimes", [zt, a_dh])])
    w.bind(ph, blk.output)
    return blk.output


def rnn_recurrence(w: CntkWriter, x: str, W: np.ndarray, H: np.ndarray, b: np.ndarray, init: str,
                   delay: str = "PastValue", offset: int = 1) -> str:
    """``Recurrence(RNNStep(hidden), go_backwards=delay == 'FutureValue', initial_state=init)``:
    h_t = tanh(x_t W + h_{t -/+ offset} H + b)."""
    ph = w.placeholder()
    dh = w.op(delay, [ph, init], {"offset": offset})
    with w.block("RNNStep", [dh, x], name="rnn") as blk:
        a_dh, a_x = blk.args
        s = w.op("Plus", [w.op("Plus", [_times(w, w.parameter(W, "W"), a_x), _times(w, w.parameter(H, "H"), a_dh)]),
                          w.parameter(b, "b")])
        w.op("Tanh", [s])
    w.bind(ph, blk.output)
    return blk.output


def sequence_slice(w: CntkWriter, x: str, begin: int, end: int, name: str = "") -> str:
    """CNTK's ``Sequence::Slice`` Block (``sequence.slice(x, begin, end)``; ``sequence.first`` is
    (0, 1), ``sequence.last`` (-1, 0)), built as CNTK builds it:
    GatherPacked(x, PackedIndex(x, Where(flags))) with flags from IsWithin(x, k) =
    PastValue (k > 0) / FutureValue (k < 0) of zeros shaped like x, initial state 1."""
    with w.block("Sequence::Slice", [x], name=name) as blk:
        a = blk.args[0]

        def is_within(k: int) -> str:
            zeros = w.op("ReconcileDynamicAxis", [w.constant(np.float32(0)), a])
            return w.op("PastValue" if k > 0 else "FutureValue", [zeros, w.constant(np.float32(1))], {"offset": abs(k)})

        def one_minus(v: str) -> str:
            return w.op("Minus", [w.constant(np.float32(1)), v])

        def begin_flags() -> str:
            return one_minus(is_within(begin)) if begin > 0 else is_within(begin)

        def end_flags() -> str:
            return is_within(end) if end > 0 else one_minus(is_within(end))

        if begin == 0:
            flags = end_flags()
        elif end == 0:
            flags = begin_flags()
        else:
            flags = w.op("ElementTimes", [begin_flags(), end_flags()])
        length = end - begin
        where = w.op("Where", [flags], {"newSequenceAxisLengthScalingFactor": 0 if length > 0 else 1,
                                        "newSequenceAxisLengthAdditiveFactor": Int(length)})
        w.op("GatherPacked", [a, w.op("PackedIndex", [a, where])])
    return blk.output


def sequence_last(w: CntkWriter, x: str) -> str:
    return sequence_slice(w, x, -1, 0, name="last")


def sequence_first(w: CntkWriter, x: str) -> str:
    return sequence_slice(w, x, 0, 1, name="first")


def sequence_reduce_sum(w: CntkWriter, x: str) -> str:
    """CNTK's ``Sequence::ReduceElements`` Block (``sequence.reduce_sum``): a running sum
    Plus(PastValue(sum), x) - a loop whose state shape only the operand tells - then the
    last step."""
    with w.block("Sequence::ReduceElements", [x], name="reduce_sum") as blk:
        p = w.placeholder()
        total = w.op("Plus", [w.op("PastValue", [p, w.constant(np.float32(0))], {"offset": 1}), blk.args[0]])
        w.bind(p, total)
        sequence_slice(w, total, -1, 0)
    return blk.output


def sequence_is_first(w: CntkWriter, x: str) -> str:
    """CNTK's ``Sequence::IsFirst`` Block: PastValue(zeros like x, 1) - 1 at the first step."""
    with w.block("Sequence::IsFirst", [x]) as blk:
        zeros = w.op("ReconcileDynamicAxis", [w.constant(np.float32(0)), blk.args[0]])
        w.op("PastValue", [zeros, w.constant(np.float32(1))], {"offset": 1})
    return blk.output


def sequence_broadcast_as(w: CntkWriter, s: str, like: str) -> str:
    """CNTK's ``Sequence::BroadcastAs`` Block: ``s`` scattered to the first step of a sequence
    laid out like ``like``, then carried along by a loop
    out_t = Select(IsFirst_t, padded_t, out_{t-1})."""
    with w.block("Sequence::BroadcastAs", [s, like], name="broadcast_as") as blk:
        a, lk = blk.args
        first = sequence_is_first(w, lk)
        where = w.op("Where", [first], {"newSequenceAxisLengthScalingFactor": 0,
                                        "newSequenceAxisLengthAdditiveFactor": Int(1)})
        padded = w.op("ScatterPacked", [a, w.op("PackedIndex", [first, where]), first])
        p = w.placeholder()
        out = w.op("Select", [sequence_is_first(w, lk), padded,
                              w.op("PastValue", [p, w.constant(np.float32(0))], {"offset": 1})])
        w.bind(p, out)
    return blk.output


def element_max(w: CntkWriter, a: str, b: str) -> str:
    """CNTK's ``ElementMax`` Block: Select(Greater(a, b), a, b)."""
    with w.block("ElementMax", [a, b]) as blk:
        pa, pb = blk.args
        w.op("Select", [w.op("Greater", [pa, pb]), pa, pb])
    return blk.output


def _broadcast_fold(w: CntkWriter, rng: np.random.Generator):
    """x + sequence.broadcast_as(s, x) for a per-sample vector s (an input without a sequence
    axis); Fold(element_max) (a running-max loop from the initial state 0, then the last
    step); NotEqual(Less(x, 0), 1) (comparisons give 1.0 / 0.0)."""
    x = w.input((3,), "features", sequence=True)
    s = w.input((3,), "context")
    z = w.op("Plus", [x, sequence_broadcast_as(w, s, x)])
    p = w.placeholder()
    running = element_max(w, w.op("PastValue", [p, _zero(w)], {"offset": 1}), x)
    w.bind(p, running)
    folded = sequence_last(w, running)
    sign = w.op("NotEqual", [w.op("Less", [x, _zero(w)]), w.constant(np.float32(1))])
    return [z, folded, sign], {}


def _slices(w: CntkWriter, rng: np.random.Generator):
    """sequence.slice(x, 1, -1) (a sequence 2 steps shorter, empty for T <= 2),
    sequence.slice(x, -3, 0) (the last 3 steps, all of them for T < 3), sequence.reduce_sum."""
    x = w.input((3,), "features", sequence=True)
    return [sequence_slice(w, x, 1, -1, name="inner"), sequence_slice(w, x, -3, 0, name="last3"),
            sequence_reduce_sum(w, x)], {}


def _dense(w: CntkWriter, x: str, W: np.ndarray, b: np.ndarray) -> str:
    with w.block("Dense", [x], name="dense") as blk:
        w.op("Plus", [_times(w, w.parameter(W, "W"), blk.args[0]), w.parameter(b, "b")])
    return blk.output


def _lstm_last(w: CntkWriter, rng: np.random.Generator) -> tuple[list[str], dict[str, np.ndarray]]:
    """LSTM over the sequence -> sequence.last -> Dense(3): a last-step classifier; outputs
    (h sequence, logits)."""
    F, Hd = 4, 5
    wts = {"W": _rand(rng, F, 4 * Hd), "H": _rand(rng, Hd, 4 * Hd), "b": _rand(rng, 4 * Hd),
           "Wd": _rand(rng, Hd, 3), "bd": _rand(rng, 3)}
    x = w.input((F,), "features", sequence=True)
    h, _ = lstm_recurrence(w, x, wts["W"], wts["H"], wts["b"])
    logits = _dense(w, sequence_last(w, h), wts["Wd"], wts["bd"])
    return [h, logits], wts


def _lstm_peephole_stabilized(w: CntkWriter, rng: np.random.Generator):
    """LSTM(use_peepholes=True, enable_self_stabilization=True) over the sequence, both
    states returned (return_full_state)."""
    F, Hd = 3, 4
    wts = {"W": _rand(rng, F, 4 * Hd), "H": _rand(rng, Hd, 4 * Hd), "b": _rand(rng, 4 * Hd),
           "Ci": _rand(rng, Hd), "Cf": _rand(rng, Hd), "Co": _rand(rng, Hd),
           "dh": np.float32(0.6), "dc": np.float32(1.3), "c": np.float32(-0.4)}
    x = w.input((F,), "features", sequence=True)
    h, c = lstm_recurrence(w, x, wts["W"], wts["H"], wts["b"], peepholes={k: wts[k] for k in ("Ci", "Cf", "Co")},
                           stabilizers={k: wts[k] for k in ("dh", "dc", "c")})
    return [h, c], wts


def _gru(w: CntkWriter, rng: np.random.Generator):
    F, Hd = 3, 4
    wts = {"W": _rand(rng, F, 3 * Hd), "H": _rand(rng, Hd, 2 * Hd), "H1": _rand(rng, Hd, Hd), "b": _rand(rng, 3 * Hd)}
    x = w.input((F,), "features", sequence=True)
    h = gru_recurrence(w, x, wts["W"], wts["H"], wts["H1"], wts["b"])
    return [h, sequence_first(w, h)], wts


def _rnn_backward(w: CntkWriter, rng: np.random.Generator):
    """A FutureValue loop (go_backwards) with a learned initial state (a Parameter tensor)."""
    F, Hd = 3, 4
    wts = {"W": _rand(rng, F, Hd), "H": _rand(rng, Hd, Hd), "b": _rand(rng, Hd), "h0": _rand(rng, Hd)}
    x = w.input((F,), "features", sequence=True)
    h = rnn_recurrence(w, x, wts["W"], wts["H"], wts["b"], w.parameter(wts["h0"], "h0"), delay="FutureValue")
    return [h], wts


def _delays(w: CntkWriter, rng: np.random.Generator):
    """A PastValue loop with offset 2 (a 2-step state buffer) next to plain delays of the
    input: z = x - PastValue(x, 0.5) + FutureValue(x, 0, offset 2)."""
    F, Hd = 3, 4
    wts = {"W": _rand(rng, F, Hd), "H": _rand(rng, Hd, Hd), "b": _rand(rng, Hd)}
    x = w.input((F,), "features", sequence=True)
    h = rnn_recurrence(w, x, wts["W"], wts["H"], wts["b"], w.constant(np.float32(0.25)), offset=2)
    past = w.op("PastValue", [x, w.constant(np.float32(0.5))], {"offset": 1})
    fut = w.op("FutureValue", [x, _zero(w)], {"offset": 2})
    z = w.op("Plus", [w.op("Minus", [x, past]), fut])
    return [h, z], wts


def _bilstm_stack(w: CntkWriter, rng: np.random.Generator):
    """splice(Recurrence(LSTM), Recurrence(LSTM, go_backwards=True)) -> Recurrence(RNNStep):
    three loops, the last one reading the first two's outputs; 2-D steps (2, 3) flattened by
    the first Times."""
    Hd = 4
    wts = {"Wf": _rand(rng, 2, 3, 4 * Hd), "Hf": _rand(rng, Hd, 4 * Hd), "bf": _rand(rng, 4 * Hd),
           "Wb": _rand(rng, 2, 3, 4 * Hd), "Hb": _rand(rng, Hd, 4 * Hd), "bb": _rand(rng, 4 * Hd),
           "W2": _rand(rng, 2 * Hd, 3), "H2": _rand(rng, 3, 3), "b2": _rand(rng, 3)}
    x = w.input((2, 3), "features", sequence=True)
    fw, _ = lstm_recurrence(w, x, wts["Wf"], wts["Hf"], wts["bf"])
    bw, _ = lstm_recurrence(w, x, wts["Wb"], wts["Hb"], wts["bb"], delay="FutureValue")
    h1 = w.op("Splice", [fw, bw], {"axis": axis(0)})
    h2 = rnn_recurrence(w, h1, wts["W2"], wts["H2"], wts["b2"], _zero(w))
    return [h1, h2], wts


def _seq_initial_state(w: CntkWriter, rng: np.random.Generator):
    """Initial states that are sequences (``RecurrenceFrom`` in a sequence-to-sequence model):
    an encoder RNN over ``source``; over ``target`` (its own sequence axis, its own length) a
    decoder RNN starting from the encoder's last step, a backward RNN with offset 2 starting
    from the encoder's first two steps, and a plain PastValue(decoder, encoder, offset 3)."""
    F, G, Hd = 3, 2, 4
    wts = {k: _rand(rng, *s) for k, s in {"We": (F, Hd), "He": (Hd, Hd), "be": (Hd,), "Wd": (G, Hd), "Hd": (Hd, Hd),
                                           "bd": (Hd,), "Wb": (G, Hd), "Hb": (Hd, Hd), "bb": (Hd,)}.items()}
    x = w.input((F,), "source", sequence=True)
    y = w.input((G,), "target", sequence="targetAxis")
    enc = rnn_recurrence(w, x, wts["We"], wts["He"], wts["be"], _zero(w))
    dec = rnn_recurrence(w, y, wts["Wd"], wts["Hd"], wts["bd"], enc)
    back = rnn_recurrence(w, y, wts["Wb"], wts["Hb"], wts["bb"], enc, delay="FutureValue", offset=2)
    delayed = w.op("PastValue", [dec, enc], {"offset": 3})
    return [enc, dec, back, delayed], wts


def _conv_rnn(w: CntkWriter, rng: np.random.Generator):
    """A per-frame CNN feeding a recurrence: every step (2, 6, 6) goes through Convolution
    3x3 (auto-padded) + bias, ReLU, spatial BatchNormalization and 2x2 max pooling, then an
    RNN loop whose input projection reads the (3, 3, 3) feature maps; the last step."""
    Hd = 4
    wts = {"K": _rand(rng, 3, 2, 3, 3), "kb": _rand(rng, 3, 1, 1), "scale": _rand(rng, 3) + 1.0,
           "shift": _rand(rng, 3), "mean": _rand(rng, 3), "var": (rng.random(3) + 0.5).astype(np.float32),
           "W": _rand(rng, 3, 3, 3, Hd, scale=0.3), "H": _rand(rng, Hd, Hd), "b": _rand(rng, Hd)}
    x = w.input((2, 6, 6), "frames", sequence=True)
    y = w.op("Plus", [w.op("Convolution", [w.parameter(wts["K"], "K"), x], _conv_attrs((3, 3), 2)),
                      w.parameter(wts["kb"], "kb")])
    y = w.op("ReLU", [y])
    y = w.op("BatchNormalization", [y, w.parameter(wts["scale"]), w.parameter(wts["shift"]), w.constant(wts["mean"]),
                                    w.constant(wts["var"]), w.constant(np.float32(10))],
             {"spatial": True, "epsilon": 1e-5})
    y = w.op("Pooling", [y], {"poolingType": 0, "poolingWindowShape": shape(2, 2), "strides": shape(2, 2),
                              "autoPadding": [False], "lowerPad": shape(0), "upperPad": shape(0), "ceilOutDim": False,
                              "includePad": False})
    h = rnn_recurrence(w, y, wts["W"], wts["H"], wts["b"], _zero(w))
    return [h, sequence_last(w, h)], wts


def _ornn(recurrent_op: str, layers: int, bidirectional: bool, F: int = 3, Hd: int = 4):
    gates = {"lstm": 4, "gru": 3, "rnnTanh": 1, "rnnReLU": 1}[recurrent_op]
    dirs = 2 if bidirectional else 1

    def build(w: CntkWriter, rng: np.random.Generator):
        n = 0
        for layer in range(layers):
            cin = F if layer == 0 else dirs * Hd
            n += dirs * (gates * Hd * (cin + Hd) + 2 * gates * Hd)
        flat = _rand(rng, n)
        x = w.input((F,), "features", sequence=True)
        # CNTK declares the parameter (InferredDimension, ...): any shape holding the flat vector
        param = w.parameter(flat.reshape(-1, 1), "W")
        y = w.op("OptimizedRNNStack", [x, param], {"hiddenSize": Hd, "numLayers": layers,
                                                    "bidirectional": bidirectional, "recurrentOp": recurrent_op})
        return [y, sequence_last(w, y)], {"flat": flat}

    return build


RECURRENT_NETS: dict[str, Callable[[CntkWriter, np.random.Generator], tuple[list[str], dict[str, np.ndarray]]]] = {
    "lstm_last": _lstm_last,
    "gru_first": _gru,
    "lstm_peephole_stabilized": _lstm_peephole_stabilized,
    "rnn_backward": _rnn_backward,
    "delays": _delays,
    "bilstm_stack": _bilstm_stack,
    "slices": _slices,
    "seq_initial_state": _seq_initial_state,
    "broadcast_fold": _broadcast_fold,
    "conv_rnn": _conv_rnn,
    "ornn_lstm_bi2": _ornn("lstm", 2, True),
    "ornn_gru": _ornn("gru", 1, False),
    "ornn_gru_bi": _ornn("gru", 1, True, Hd=3),
    "ornn_rnn_tanh2": _ornn("rnnTanh", 2, False),
    "ornn_rnn_relu_bi": _ornn("rnnReLU", 1, True),
}


def build_recurrent(name: str, *, directory: Path | None = None) -> RecurrentZooModel:
    """Write recurrent zoo model ``name`` and return it with its weights."""
    out_dir = directory or cache_dir("cntk")
    w = CntkWriter()
    rng = np.random.default_rng(_seed(name))
    outs, weights = RECURRENT_NETS[name](w, rng)
    path = out_dir / f"{name}.model"
    w.save(path, outs if len(outs) > 1 else outs[0], name=name)
    # in file order (the order of the converted model's inputs): the writer stores them last-first
    inputs = {str(v["name"]): tuple(reversed(v["shape"].dims)) for v in reversed(w.variables) if v["kind"] == 0}
    static = {str(v["name"]) for v in w.variables if v["kind"] == 0 and len(v["dynamic_axis"]) == 1}
    return RecurrentZooModel(name, path, next(iter(inputs.values())), inputs, weights, outs, static)
