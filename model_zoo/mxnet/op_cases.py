"""Small symbol-API nets, one per MXNet op variant, for per-op parity tests.

Importable without mxnet (the test suite reads the case names); ``build.py`` runs the
``build`` callables inside the mxnet side environment, where ``S`` is ``mx.sym``.
A case may rewrite the exported JSON (``edit``) to reproduce layouts old MXNet versions
wrote; mxnet then loads the edited file to compute the reference, so the reference
always reflects how MXNet itself reads that file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Case:
    name: str
    build: Callable[[Any], Any]
    #: input name -> shape
    inputs: dict[str, tuple[int, ...]]
    #: input name -> "normal" (default), "positive", "indices:<input_dim>"
    kinds: dict[str, str] = field(default_factory=dict)
    #: rewrites the symbol JSON text (legacy layouts)
    edit: Callable[[str], str] | None = None


def _d(S, name="data"):
    return S.var(name)


def _rename_op(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        doc = json.loads(text)
        for node in doc["nodes"]:
            if node["op"] == old:
                node["op"] = new
        return json.dumps(doc)

    return edit


def _to_legacy_08(text: str) -> str:
    """Rewrite a 1.x symbol file as MXNet 0.8 wrote it: 'param' instead of 'attrs',
    two-element entries, no node_row_ptr/attrs, and BatchNorm without its aux inputs."""
    doc = json.loads(text)
    nodes = doc["nodes"]
    drop = set()
    for node in nodes:
        if node["op"] == "BatchNorm":
            drop.update(src for src, _i, *_ in node["inputs"][3:])
            node["inputs"] = node["inputs"][:3]
    remap, new_nodes = {}, []
    for i, node in enumerate(nodes):
        if i in drop:
            continue
        remap[i] = len(new_nodes)
        out = {"op": node["op"], "param": node.get("attrs", {}), "name": node["name"],
               "inputs": [[remap[s], k] for s, k, *_ in node["inputs"]], "backward_source_id": -1}
        new_nodes.append(out)
    args = [remap[i] for i in doc["arg_nodes"] if i not in drop]
    heads = [[remap[s], k] for s, k, *_ in doc["heads"]]
    return json.dumps({"nodes": new_nodes, "arg_nodes": args, "heads": heads})


def _to_attr_09(text: str) -> str:
    """0.9-0.11 style: node attributes under 'attr', no node_row_ptr."""
    doc = json.loads(text)
    for node in doc["nodes"]:
        if "attrs" in node:
            node["attr"] = node.pop("attrs")
    doc.pop("node_row_ptr", None)
    doc["attrs"] = {"mxnet_version": ["int", 1100]}
    return json.dumps(doc)


def _conv_bn_fc(S):
    x = S.Convolution(_d(S), kernel=(3, 3), num_filter=4, pad=(1, 1), name="conv0")
    x = S.BatchNorm(x, fix_gamma=False, name="bn0")
    x = S.Activation(x, act_type="relu", name="relu0")
    return S.FullyConnected(x, num_hidden=5, name="fc0")


def _pool(**kw):
    return lambda S: S.Pooling(_d(S), name="pool", **kw)


def _act(t):
    return lambda S: S.Activation(_d(S), act_type=t, name="act")


def _leaky(**kw):
    return lambda S: S.LeakyReLU(_d(S), name="leaky", **kw)


def _l2norm(mode):
    return lambda S: S.L2Normalization(_d(S), mode=mode, name="l2")


def _reshape(**kw):
    return lambda S: S.Reshape(_d(S), name="reshape", **kw)


X4 = (2, 3, 6, 6)

CASES: list[Case] = [
    # Convolution
    Case("conv2d", lambda S: S.Convolution(_d(S), kernel=(3, 3), num_filter=4, pad=(1, 1), stride=(2, 2), name="conv"),
         {"data": (2, 3, 9, 9)}),
    Case("conv2d_group_dilate_nobias", lambda S: S.Convolution(
        _d(S), kernel=(3, 3), num_filter=6, num_group=3, dilate=(2, 2), no_bias=True, name="conv"), {"data": (2, 6, 11, 11)}),
    Case("conv2d_depthwise", lambda S: S.Convolution(_d(S), kernel=(3, 3), num_filter=4, num_group=4, pad=(1, 1), name="conv"),
         {"data": (1, 4, 7, 7)}),
    Case("conv2d_v1", lambda S: S.Convolution_v1(_d(S), kernel=(3, 3), num_filter=4, pad=(1, 1), stride=(2, 2),
                                                 name="conv"), {"data": (2, 3, 9, 9)}),
    Case("conv1d", lambda S: S.Convolution(_d(S), kernel=(3,), num_filter=4, stride=(2,), pad=(1,), name="conv"),
         {"data": (2, 3, 10)}),
    Case("conv3d", lambda S: S.Convolution(_d(S), kernel=(2, 3, 3), num_filter=3, pad=(1, 1, 1), name="conv"),
         {"data": (1, 2, 5, 6, 6)}),
    # Deconvolution
    Case("deconv_adj", lambda S: S.Deconvolution(
        _d(S), kernel=(3, 3), stride=(2, 2), pad=(1, 1), adj=(1, 1), num_filter=4, name="deconv"), {"data": (2, 3, 5, 5)}),
    Case("deconv_bias_group", lambda S: S.Deconvolution(
        _d(S), kernel=(4, 4), stride=(2, 2), num_filter=4, num_group=2, no_bias=False, name="deconv"), {"data": (1, 4, 5, 5)}),
    Case("deconv_target_odd", lambda S: S.Deconvolution(
        _d(S), kernel=(3, 3), stride=(2, 2), target_shape=(11, 11), num_filter=2, name="deconv"), {"data": (1, 3, 5, 5)}),
    Case("deconv_target_even", lambda S: S.Deconvolution(
        _d(S), kernel=(3, 3), stride=(2, 2), target_shape=(10, 10), num_filter=2, name="deconv"), {"data": (1, 3, 5, 5)}),
    # Pooling
    Case("pool_max_valid", _pool(kernel=(3, 3), stride=(2, 2), pool_type="max"), {"data": (1, 2, 8, 8)}),
    Case("pool_max_full", _pool(kernel=(2, 2), stride=(2, 2), pool_type="max", pooling_convention="full"),
         {"data": (1, 2, 7, 7)}),
    Case("pool_max_full_pad", _pool(kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                                    pooling_convention="full"), {"data": (1, 2, 8, 8)}),
    Case("pool_avg_default", _pool(kernel=(2, 2), stride=(2, 2), pool_type="avg"), {"data": (1, 2, 7, 7)}),
    Case("pool_avg_include_pad", _pool(kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="avg"), {"data": (1, 2, 4, 4)}),
    Case("pool_avg_full_include_pad", _pool(kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg",
                                            pooling_convention="full"), {"data": (1, 2, 8, 8)}),
    Case("pool_avg_full_exclude_pad", _pool(kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg",
                                            pooling_convention="full", count_include_pad=False), {"data": (1, 2, 8, 8)}),
    Case("pool_sum_valid", _pool(kernel=(2, 2), stride=(2, 2), pad=(1, 1), pool_type="sum"), {"data": (1, 2, 6, 6)}),
    Case("pool_sum_full", _pool(kernel=(3, 3), stride=(2, 2), pool_type="sum", pooling_convention="full"),
         {"data": (1, 2, 8, 8)}),
    Case("pool_global_max", _pool(kernel=(1, 1), global_pool=True, pool_type="max"), {"data": (2, 3, 5, 4)}),
    Case("pool_global_avg", _pool(kernel=(3, 3), global_pool=True, pool_type="avg"), {"data": (2, 3, 5, 4)}),
    Case("pool_global_sum", _pool(kernel=(3, 3), global_pool=True, pool_type="sum"), {"data": (2, 3, 5, 4)}),
    Case("pool1d_max", _pool(kernel=(3,), stride=(2,), pool_type="max"), {"data": (2, 3, 9)}),
    # BatchNorm / InstanceNorm
    Case("bn_defaults", lambda S: S.BatchNorm(_d(S), name="bn"), {"data": (2, 4, 3, 3)}),
    Case("bn_nofix", lambda S: S.BatchNorm(_d(S), fix_gamma=False, eps=1e-5, name="bn"), {"data": (2, 4, 3, 3)}),
    Case("bn_axis_last", lambda S: S.BatchNorm(_d(S), fix_gamma=False, axis=-1, name="bn"), {"data": (2, 3, 6)}),
    Case("bn_2d", lambda S: S.BatchNorm(_d(S), fix_gamma=False, name="bn"), {"data": (4, 5)}),
    Case("bn_v1", lambda S: S.BatchNorm_v1(_d(S), name="bn"), {"data": (2, 4, 3, 3)}),
    Case("bn_v1_nofix", lambda S: S.BatchNorm_v1(_d(S), fix_gamma=False, eps=1e-4, name="bn"), {"data": (2, 4, 3, 3)}),
    Case("instancenorm", lambda S: S.InstanceNorm(_d(S), name="inorm"), {"data": (2, 3, 4, 4)}),
    # FullyConnected
    Case("fc_flatten", lambda S: S.FullyConnected(_d(S), num_hidden=5, name="fc"), {"data": (2, 3, 4, 4)}),
    Case("fc_noflatten", lambda S: S.FullyConnected(_d(S), num_hidden=5, flatten=False, name="fc"), {"data": (2, 3, 4)}),
    Case("fc_nobias", lambda S: S.FullyConnected(_d(S), num_hidden=5, no_bias=True, name="fc"), {"data": (3, 7)}),
    # activations
    *[Case(f"act_{t}", _act(t), {"data": X4}) for t in ("relu", "sigmoid", "tanh", "softrelu", "softsign")],
    Case("leaky_default", _leaky(), {"data": X4}),
    Case("leaky_slope", _leaky(act_type="leaky", slope=0.1), {"data": X4}),
    Case("leaky_elu", _leaky(act_type="elu", slope=0.7), {"data": X4}),
    Case("leaky_selu", _leaky(act_type="selu"), {"data": X4}),
    Case("leaky_gelu", _leaky(act_type="gelu"), {"data": X4}),
    Case("leaky_rrelu", _leaky(act_type="rrelu", lower_bound=0.1, upper_bound=0.3), {"data": X4}),
    Case("leaky_prelu", _leaky(act_type="prelu"), {"data": X4}),
    Case("leaky_prelu_2d", _leaky(act_type="prelu"), {"data": (4, 3)}),
    # softmax family
    Case("softmaxoutput_2d", lambda S: S.SoftmaxOutput(_d(S), name="softmax"), {"data": (3, 5)}),
    Case("softmaxoutput_4d", lambda S: S.SoftmaxOutput(_d(S), name="softmax"), {"data": (2, 3, 2, 2)}),
    Case("softmaxoutput_multi", lambda S: S.SoftmaxOutput(_d(S), multi_output=True, name="softmax"),
         {"data": (2, 3, 2, 2)}),
    Case("softmaxoutput_preserve", lambda S: S.SoftmaxOutput(_d(S), preserve_shape=True, name="softmax"),
         {"data": (2, 3, 4)}),
    Case("softmaxactivation_instance", lambda S: S.SoftmaxActivation(_d(S), name="sa"), {"data": (2, 3, 4)}),
    Case("softmaxactivation_channel", lambda S: S.SoftmaxActivation(_d(S), mode="channel", name="sa"),
         {"data": (2, 3, 2, 2)}),
    Case("softmax_axis_temp", lambda S: S.softmax(_d(S), axis=1, temperature=2.0, name="sm"), {"data": (2, 3, 4)}),
    Case("log_softmax", lambda S: S.log_softmax(_d(S), name="lsm"), {"data": (2, 3, 4)}),
    # shape ops
    Case("flatten", lambda S: S.Flatten(_d(S), name="flat"), {"data": (2, 3, 4, 5)}),
    Case("concat", lambda S: S.Concat(_d(S), _d(S, "data2"), dim=1, name="cat"), {"data": (2, 3, 4), "data2": (2, 2, 4)}),
    Case("concat_neg", lambda S: S.concat(_d(S), _d(S, "data2"), dim=-1, name="cat"),
         {"data": (2, 3, 4), "data2": (2, 3, 1)}),
    Case("reshape_0_m1", _reshape(shape=(0, -1)), {"data": (2, 3, 4, 5)}),
    Case("reshape_m3", _reshape(shape=(0, -3, -2)), {"data": (2, 3, 4, 5)}),
    Case("reshape_m4", _reshape(shape=(-4, 1, 2, -2)), {"data": (2, 3, 4, 5)}),
    Case("reshape_m4_infer", _reshape(shape=(0, 0, -4, -1, 2, 5)), {"data": (2, 3, 4, 5)}),
    Case("reshape_m3m3", _reshape(shape=(-3, -3)), {"data": (2, 3, 4, 5)}),
    Case("reshape_reverse", _reshape(shape=(-1, 0), reverse=True), {"data": (2, 3, 4, 5)}),
    Case("reshape_legacy_target", _reshape(target_shape=(0, 30)), {"data": (2, 3, 4, 5)}),
    Case("transpose_default", lambda S: S.transpose(_d(S), name="t"), {"data": (2, 3, 4)}),
    Case("transpose_axes", lambda S: S.transpose(_d(S), axes=(0, 2, 3, 1), name="t"), {"data": (2, 3, 4, 5)}),
    Case("expand_dims", lambda S: S.expand_dims(_d(S), axis=-1, name="e"), {"data": (2, 3)}),
    Case("squeeze", lambda S: S.squeeze(_d(S), axis=(1, 3), name="sq"), {"data": (2, 1, 3, 1)}),
    Case("squeeze_all", lambda S: S.squeeze(_d(S), name="sq"), {"data": (2, 1, 3, 1)}),
    Case("slice_axis", lambda S: S.slice_axis(_d(S), axis=2, begin=1, end=None, name="sl"), {"data": (2, 3, 5)}),
    Case("slice_axis_neg", lambda S: S.slice_axis(_d(S), axis=1, begin=-2, end=-1, name="sl"), {"data": (2, 4, 5)}),
    Case("slice_steps", lambda S: S.slice(_d(S), begin=(None, 1, 4), end=(None, 3, None), step=(1, 1, -2), name="sl"),
         {"data": (2, 4, 6)}),
    Case("split", lambda S: S.SliceChannel(_d(S), num_outputs=3, name="split"), {"data": (2, 6, 2)}),
    Case("split_squeeze", lambda S: S.split(_d(S), num_outputs=3, axis=2, squeeze_axis=True, name="split"),
         {"data": (2, 4, 3)}),
    Case("pad_constant", lambda S: S.Pad(_d(S), mode="constant", pad_width=(0, 0, 0, 0, 1, 2, 2, 1), constant_value=0.5,
                                         name="pad"), {"data": (1, 2, 3, 4)}),
    Case("pad_edge", lambda S: S.Pad(_d(S), mode="edge", pad_width=(0, 0, 0, 0, 2, 1, 1, 2), name="pad"),
         {"data": (1, 2, 3, 4)}),
    Case("pad_reflect", lambda S: S.Pad(_d(S), mode="reflect", pad_width=(0, 0, 0, 0, 1, 2, 2, 1), name="pad"),
         {"data": (1, 2, 4, 4)}),
    Case("crop_like", lambda S: S.Crop(_d(S), _d(S, "ref"), num_args=2, offset=(1, 2), name="crop"),
         {"data": (1, 2, 8, 8), "ref": (1, 2, 5, 4)}),
    Case("crop_center", lambda S: S.Crop(_d(S), _d(S, "ref"), num_args=2, center_crop=True, name="crop"),
         {"data": (1, 2, 9, 8), "ref": (1, 2, 4, 5)}),
    Case("crop_hw", lambda S: S.Crop(_d(S), num_args=1, h_w=(3, 4), name="crop"), {"data": (1, 2, 8, 8)}),
    # elementwise
    Case("elemwise", lambda S: S.elemwise_div(S.elemwise_mul(S.elemwise_sub(S.elemwise_add(
        _d(S), _d(S, "b")), _d(S, "b")), _d(S, "b")), _d(S, "c"), name="div"),
         {"data": (2, 3), "b": (2, 3), "c": (2, 3)}, {"c": "positive"}),
    Case("broadcast", lambda S: S.broadcast_maximum(S.broadcast_mul(S.broadcast_add(
        _d(S), _d(S, "b")), _d(S, "c")), _d(S, "b"), name="bmax"),
         {"data": (2, 3, 4), "b": (1, 3, 1), "c": (4,)}),
    Case("legacy_plus_mul", lambda S: S.elemwise_mul(S.elemwise_add(_d(S), _d(S, "b"), name="plus"), _d(S, "b"),
                                                     name="mul"), {"data": (2, 3), "b": (2, 3)},
         edit=lambda t: _rename_op("elemwise_mul", "_Mul")(_rename_op("elemwise_add", "_Plus")(t))),
    Case("scalar_ops", lambda S: S.maximum(S.minimum((((3.0 - ((_d(S) + 1.5) * 0.5 - 2.0)) / 4.0) ** 2.0), 1.2), 0.1),
         {"data": (2, 3, 4)}),
    Case("scalar_rdiv_rpow", lambda S: (2.0 / _d(S)) + (2.0 ** _d(S)), {"data": (2, 5)}, {"data": "positive"}),
    Case("legacy_scalar_names", lambda S: (_d(S) + 1.0) * 3.0, {"data": (2, 3)},
         edit=lambda t: _rename_op("_mul_scalar", "_MulScalar")(_rename_op("_plus_scalar", "_PlusScalar")(t))),
    Case("clip", lambda S: S.clip(_d(S), a_min=-0.5, a_max=0.7, name="clip"), {"data": X4}),
    Case("cast_chain", lambda S: S.Cast(S.Cast(_d(S), dtype="float16"), dtype="float32", name="cast"), {"data": (2, 5)}),
    Case("zeros_ones_like", lambda S: S.broadcast_add(S.zeros_like(_d(S)) + 2.0, S.ones_like(_d(S)), name="add"),
         {"data": (2, 3)}),
    Case("identities", lambda S: S.BlockGrad(S.identity(S.Dropout(_d(S), p=0.5), name="ident"), name="bg"),
         {"data": (2, 3)}),
    # embedding, reductions, normalisation, upsampling
    Case("embedding", lambda S: S.Embedding(_d(S), input_dim=4, output_dim=3, name="embed"), {"data": (2, 5)},
         {"data": "indices:4"}),
    Case("reduce_mean_axis", lambda S: S.mean(_d(S), axis=(1, 2), name="r"), {"data": (2, 3, 4, 5)}),
    Case("reduce_sum_exclude", lambda S: S.sum(_d(S), axis=1, exclude=True, keepdims=True, name="r"),
         {"data": (2, 3, 4)}),
    Case("reduce_max_all", lambda S: S.max(_d(S), name="r"), {"data": (2, 3, 4)}),
    Case("reduce_min_prod", lambda S: S.prod(S.min(_d(S), axis=-1), axis=0, name="r"), {"data": (2, 3, 4)},
         {"data": "positive"}),
    Case("lrn_defaults", lambda S: S.LRN(_d(S), nsize=3, name="lrn"), {"data": (1, 5, 3, 3)}),
    Case("lrn_caffe", lambda S: S.LRN(_d(S), nsize=5, alpha=1e-3, beta=0.5, knorm=1.0, name="lrn"), {"data": (1, 6, 3, 3)}),
    *[Case(f"l2norm_{m}", _l2norm(m), {"data": (2, 3, 2, 2)}) for m in ("instance", "channel", "spatial")],
    Case("upsampling_nearest", lambda S: S.UpSampling(_d(S), scale=2, sample_type="nearest", name="up"),
         {"data": (1, 2, 3, 4)}),
    Case("upsampling_multi_concat", lambda S: S.UpSampling(_d(S), _d(S, "b"), scale=2, sample_type="nearest", num_args=2,
                                                           name="up"), {"data": (1, 2, 4, 4), "b": (1, 3, 2, 2)}),
    Case("upsampling_multi_sum", lambda S: S.UpSampling(_d(S), _d(S, "b"), scale=2, sample_type="nearest", num_args=2,
                                                        multi_input_mode="sum", name="up"),
         {"data": (1, 2, 4, 4), "b": (1, 2, 2, 2)}),
    Case("upsampling_bilinear", lambda S: S.UpSampling(_d(S), scale=2, sample_type="bilinear", num_filter=3, name="up"),
         {"data": (1, 3, 4, 4)}),
    # graph-level variants
    Case("multi_head", lambda S: S.Group([S.FullyConnected(_d(S), num_hidden=3, name="fc"),
                                          S.Activation(_d(S), act_type="relu", name="relu")]), {"data": (2, 4)}),
    Case("legacy_v08_json", _conv_bn_fc, {"data": (2, 3, 5, 5)}, edit=_to_legacy_08),
    Case("legacy_v09_attr", _conv_bn_fc, {"data": (2, 3, 5, 5)}, edit=_to_attr_09),
]

CASE_NAMES = [c.name for c in CASES]
assert len(set(CASE_NAMES)) == len(CASE_NAMES), "duplicate op case names"
