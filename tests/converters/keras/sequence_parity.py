"""Parity of sequence models against Keras: one conversion per (model, layout), run on a
backend at batch 1 and batch > 1 and at several sequence lengths (the time axis stays
symbolic in the converted model). Reference: Keras' own inference (``training=False``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, keras_outputs, to_nchw

#: (batch, time steps) every sequence model is run at, from one conversion
SHAPES = ((1, 5), (3, 8), (2, 1))
Inputs = Callable[[int, int, np.random.Generator], list[np.ndarray]]


def floats(*feature_dims: int) -> Inputs:
    """Inputs (N, T, F) for each F in ``feature_dims`` (state inputs: pass F as (H,))."""

    def make(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
        out = []
        for f in feature_dims:
            shape = (n, *f) if isinstance(f, tuple) else (n, t, f)
            out.append(rng.standard_normal(shape).astype(np.float32))
        return out

    return make


def token_ids(vocab: int = 9, extra: Inputs | None = None) -> Inputs:
    """Integer ids (N, T) with zeros (masked by ``mask_zero``) at the end, in the middle,
    first, and one sample (when N > 2) entirely zero."""

    def make(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
        ids = rng.integers(1, vocab, size=(n, t)).astype(np.int32)
        ids[0, max(1, t - 2):] = 0  # right padding
        if n > 1:
            ids[1, t // 2] = 0  # a hole
            ids[1, 0] = 0
        if n > 2:
            ids[2, :] = 0  # nothing valid
        out = [ids]
        if extra is not None:
            out += extra(n, t, rng)
        return out

    return make


def zero_steps(f: int, value: float = 0.0) -> Inputs:
    """Float sequences (N, T, F) where some steps equal ``value`` everywhere (Masking)."""

    def make(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
        x = rng.standard_normal((n, t, f)).astype(np.float32)
        x[0, max(1, t - 2):] = value
        if n > 1:
            x[1, t // 2] = value
        if n > 2:
            x[2] = value
        return [x]

    return make


def needs_torch_ops(ir_model, backend: str) -> None:
    """Skip (with the reason) when the torch backend lacks one of the model's ops."""
    if backend != "torch":
        return
    from portanet.runtime.torch_backend.registry import supported_ops

    missing = sorted({n.op_type for n in ir_model.graph.all_nodes()} - set(supported_ops()))
    if missing:
        pytest.skip(f"the torch backend does not lower {', '.join(missing)} yet")


def check_model(ir_model, keras_model, make: Inputs, nchw: bool, backend: str, seed: int = 0,
                shapes=SHAPES) -> float:
    """Run the converted model on ``backend`` at every (batch, T) of ``shapes``; returns the worst
    error as a fraction of the tolerance |got-ref| <= 1e-5 + 1e-4 * max|ref|."""
    from portanet.runtime.session import Session

    needs_torch_ops(ir_model, backend)
    sess = Session(ir_model, backend=backend)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n, t in shapes:
        xs = make(n, t, rng)
        ref = keras_outputs(keras_model, xs)
        feeds = {i.name: (to_nchw(x) if nchw else x) for i, x in zip(sess.inputs, xs)}
        out = sess.run(feeds)
        got = [out[o.name] for o in sess.outputs]
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            r = to_nchw(r) if nchw else r
            assert g.shape == r.shape, (n, t, g.shape, r.shape)
            # Keras' own NaNs (e.g. the mean over a sequence with no valid step) must be NaN here too
            nan = np.isnan(r)
            np.testing.assert_array_equal(np.isnan(g), nan)
            g, r = g[~nan], r[~nan]
            tol = ATOL + RTOL * float(np.max(np.abs(r))) if r.size else ATOL
            err = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
            assert err <= tol, f"batch {n}, {t} steps: max error {err:.3g} > tolerance {tol:.3g}"
            worst = max(worst, err / tol)
    return worst
