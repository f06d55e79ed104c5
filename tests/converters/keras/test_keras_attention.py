"""Keras attention, normalization and sequence layers (MultiHeadAttention, Attention,
AdditiveAttention, LayerNormalization incl. rms_scaling, RMSNormalization,
GroupNormalization, UnitNormalization, Embedding masks, TimeDistributed, Masking) against
Keras itself: both layouts, ONNX Runtime and the torch backend, batch 1 and > 1, several
sequence lengths from one conversion."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest

from tests.converters.keras.sequence_parity import check_model, floats, token_ids, zero_steps

keras = pytest.importorskip("keras")
L = keras.layers
F = 6


def pair(fn: Callable):
    """fn(query, value) on two float sequence inputs (N, T, F) and (N, S, F), S = T + 2
    (different lengths, both symbolic)."""

    def build():
        keras.utils.set_random_seed(1)
        q = keras.Input((None, F), name="q")
        v = keras.Input((None, F), name="v")
        return keras.Model([q, v], fn(q, v))

    return build


def two_lengths(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((n, t, F)).astype(np.float32), rng.standard_normal((n, t + 2, F)).astype(np.float32)]


def embedded(fn: Callable):
    """fn(e) on Embedding(mask_zero=True) output: every consumer sees the ids != 0 mask."""

    def build():
        keras.utils.set_random_seed(1)
        ids = keras.Input((None,), dtype="int32", name="ids")
        return keras.Model(ids, fn(L.Embedding(9, F, mask_zero=True)(ids)))

    return build


def on_seq(fn: Callable, shape=(None, F)):
    def build():
        keras.utils.set_random_seed(1)
        x = keras.Input(shape, name="x")
        return keras.Model(x, fn(x))

    return build


def images(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((n, 5, 6, 8)).astype(np.float32)]


def frames(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((n, t, 5, 5, 3)).astype(np.float32)]


def _randomized(layer):
    """A normalization layer whose gamma/beta are not the 1/0 they start with."""

    def make():
        lay = layer()
        orig_build = lay.build

        def build(shape):
            orig_build(shape)
            rng = np.random.default_rng(7)
            for w in lay.weights:
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))

        lay.build = build
        return lay

    return make


MHA = L.MultiHeadAttention
CASES: dict[str, tuple[Callable[[], object], Callable]] = {
    # -- MultiHeadAttention
    "mha_cross": (pair(lambda q, v: MHA(2, 3)(q, v)), two_lengths),
    "mha_key_value_dim_output_shape": (pair(lambda q, v: MHA(3, 2, value_dim=4, output_shape=(2, 5))(q, v, v)),
                                       two_lengths),
    "mha_scores": (pair(lambda q, v: list(MHA(2, 3, use_bias=False)(q, v, return_attention_scores=True))),
                   two_lengths),
    "mha_self_causal": (on_seq(lambda x: MHA(2, 4)(x, x, use_causal_mask=True)), floats(F)),
    "mha_causal_dropout_path": (on_seq(lambda x: MHA(2, 4, dropout=0.2)(x, x, use_causal_mask=True)), floats(F)),
    "mha_masked": (embedded(lambda e: MHA(2, 3)(e, e)), token_ids()),
    "mha_masked_scores": (embedded(lambda e: list(MHA(2, 3)(e, e, return_attention_scores=True))), token_ids()),
    "mha_masked_causal": (embedded(lambda e: MHA(2, 3)(e, e, use_causal_mask=True)), token_ids()),
    # -- Attention / AdditiveAttention
    "attention_dot": (pair(lambda q, v: L.Attention()([q, v])), two_lengths),
    "attention_scaled_scores": (pair(lambda q, v: list(L.Attention(use_scale=True)([q, v, v],
                                                                                   return_attention_scores=True))),
                                two_lengths),
    "attention_concat": (pair(lambda q, v: L.Attention(score_mode="concat", use_scale=True)([q, v])), two_lengths),
    "attention_causal": (on_seq(lambda x: L.Attention()([x, x], use_causal_mask=True)), floats(F)),
    "additive_attention": (pair(lambda q, v: L.AdditiveAttention()([q, v])), two_lengths),
    "additive_attention_noscale": (pair(lambda q, v: L.AdditiveAttention(use_scale=False)([q, v])), two_lengths),
    "attention_masked": (embedded(lambda e: L.Attention()([e, e])), token_ids()),
    "additive_masked_causal": (embedded(lambda e: L.AdditiveAttention()([e, e], use_causal_mask=True)),
                               token_ids()),
    "attention_mask_to_lstm": (embedded(lambda e: L.LSTM(3)(L.Attention()([e, e]))), token_ids()),
    # -- normalization
    "layernorm_seq": (on_seq(lambda x: _randomized(lambda: L.LayerNormalization(epsilon=1e-5))()(x)), floats(F)),
    "layernorm_no_center_scale": (on_seq(lambda x: L.LayerNormalization(center=False, scale=False)(x)), floats(F)),
    "layernorm_rms": (on_seq(lambda x: _randomized(lambda: L.LayerNormalization(rms_scaling=True))()(x)),
                      floats(F)),
    "layernorm_rms_image_axes": (on_seq(lambda x: _randomized(lambda: L.LayerNormalization(
        axis=[1, 3], rms_scaling=True))()(L.Conv2D(8, 1)(x)), shape=(5, 6, 8)), images),
    "rms_normalization": (on_seq(lambda x: _randomized(lambda: L.RMSNormalization())()(x)), floats(F)),
    "groupnorm_image": (on_seq(lambda x: _randomized(lambda: L.GroupNormalization(4))()(L.Conv2D(8, 1)(x)),
                               shape=(5, 6, 8)), images),
    "groupnorm_seq_no_affine": (on_seq(lambda x: L.GroupNormalization(3, center=False, scale=False)(x)),
                                floats(F)),
    "unitnorm_last": (on_seq(lambda x: L.UnitNormalization()(x)), floats(F)),
    "unitnorm_image_axes": (on_seq(lambda x: L.UnitNormalization(axis=[1, 2])(L.Conv2D(8, 1)(x)),
                                   shape=(5, 6, 8)), images),
    # -- Embedding masks reaching other consumers, Masking, TimeDistributed
    "embedding_gap1d_masked": (embedded(lambda e: L.GlobalAveragePooling1D()(L.Dense(4)(e))), token_ids()),
    "embedding_gap1d_keepdims": (embedded(lambda e: L.GlobalAveragePooling1D(keepdims=True)(e)), token_ids()),
    "embedding_bn_masked": (embedded(lambda e: L.BatchNormalization()(e)), token_ids()),
    "masking_gap1d": (on_seq(lambda x: L.GlobalAveragePooling1D()(L.Masking(0.0)(x))), zero_steps(F)),
    "masking_value": (on_seq(lambda x: L.Masking(0.5)(x)), zero_steps(F, value=0.5)),
    "time_distributed_dense": (on_seq(lambda x: L.TimeDistributed(L.Dense(4, activation="relu"))(x)), floats(F)),
    "time_distributed_conv": (on_seq(lambda x: L.TimeDistributed(L.Conv2D(4, 3, padding="same"))(x),
                                     shape=(None, 5, 5, 3)), frames),
    "time_distributed_masked_dense": (embedded(lambda e: L.LSTM(3)(L.TimeDistributed(L.Dense(4))(e))),
                                      token_ids()),
}


@cache
def _model(case: str):
    return CASES[case][0]()


@cache
def _converted(case: str, nchw: bool):
    import portanet

    return portanet.convert(_model(case), nchw=nchw)


@pytest.mark.parametrize("backend", ["ort", "torch"])
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_norm_parity(case: str, nchw: bool, backend: str) -> None:
    check_model(_converted(case, nchw), _model(case), CASES[case][1], nchw, backend,
                seed=zlib.crc32(case.encode()) % 1000)


def test_mha_matches_numpy_attention() -> None:
    """Independent reference: numpy multi-head attention from the layer's weights."""
    from tests.converters.keras.conftest import run_converted

    model = _model("mha_cross")
    mha = model.layers[-1]
    rng = np.random.default_rng(3)
    q, v = two_lengths(2, 4, rng)

    def proj(dense, x):
        return np.einsum("ntd,dhk->nhtk", x, np.asarray(dense.kernel)) + np.asarray(dense.bias)[None, :, None, :]

    qh, kh, vh = proj(mha._query_dense, q), proj(mha._key_dense, v), proj(mha._value_dense, v)
    logits = np.einsum("nhtk,nhsk->nhts", qh, kh) / np.sqrt(3.0)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("nhts,nhsk->nthk", p, vh)
    ref = np.einsum("nthk,hko->nto", o, np.asarray(mha._output_dense.kernel)) + np.asarray(mha._output_dense.bias)
    got = run_converted(_converted("mha_cross", False), [q, v], nchw=False)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_unsupported_mha_variant_names_the_layer() -> None:
    import portanet
    from portanet.errors import ConversionError

    model = on_seq(lambda x: MHA(2, 3, attention_axes=(1, 2), name="axes_mha")(x, x), shape=(4, 5, F))()
    with pytest.raises(ConversionError, match=r"axes_mha.*expected \(batch, steps, features\) query and value, received ranks 4 and 4"):
        portanet.convert(model)
