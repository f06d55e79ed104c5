"""Fixtures of the Keras importer tests: zoo models built once per session, files cached."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def to_nchw(a: np.ndarray) -> np.ndarray:
    """(N, *spatial, C) -> (N, C, *spatial) for rank >= 3."""
    a = np.asarray(a)
    return np.transpose(a, (0, a.ndim - 1, *range(1, a.ndim - 1))) if a.ndim >= 3 else a


def keras_outputs(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Keras' own inference outputs (training=False), as a list of arrays."""
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


def run_converted(ir_model, xs: list[np.ndarray], nchw: bool) -> list[np.ndarray]:
    """ONNX Runtime on the converted model, inputs fed in the interface layout, outputs in graph order."""
    from portanet.runtime.session import Session

    s = Session(ir_model, backend="ort")
    feeds = {i.name: (to_nchw(x) if nchw else x) for i, x in zip(s.inputs, xs)}
    out = s.run(feeds)
    return [out[o.name] for o in s.outputs]


def assert_parity(ir_model, keras_model, xs: list[np.ndarray], nchw: bool) -> float:
    """Converted model (ORT) vs Keras within rtol 1e-4 / atol 1e-5; returns the max abs error."""
    ref = keras_outputs(keras_model, xs)
    got = run_converted(ir_model, xs, nchw)
    assert len(got) == len(ref)
    worst = 0.0
    for g, r in zip(got, ref):
        r = to_nchw(r) if nchw else r
        assert g.shape == r.shape, (g.shape, r.shape)
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - r))) if g.size else 0.0)
    return worst


def random_inputs(model, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        shape = (batch, *t.shape[1:])
        if "int" in str(t.dtype):
            xs.append(rng.integers(0, 10, size=shape).astype(str(t.dtype)))
        else:
            xs.append(rng.standard_normal(shape).astype(np.float32))
    return xs


@pytest.fixture(scope="session")
def keras_zoo():
    """name -> keras.Model, each zoo model built at most once per session."""
    from model_zoo.keras.models import build

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name)
        return cache[name]

    return get


# runs `portanet convert` on each (source, output) pair given on its command line, in one
# process, then lists the frameworks that process imported
_CONVERT_RUNNER = textwrap.dedent('''
    import sys
    from portanet.cli import main
    pairs = sys.argv[1:]
    for src, out in zip(pairs[::2], pairs[1::2]):
        sys.argv = ["portanet", "convert", src, "-o", out]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        print("EXIT", code)
    print("IMPORTED", " ".join(sorted({m.split(".")[0] for m in sys.modules} & {"keras", "tensorflow", "torch", "jax"})))
''')


def convert_in_fresh_process(pairs: list[tuple[str, str]]) -> tuple[list[int], set[str], str]:
    """The real CLI's `portanet convert SRC -o OUT` for each pair, in one fresh process (from the
    repository root, without this process' KERAS_BACKEND): the exit codes, the frameworks that
    process imported (of keras, tensorflow, torch, jax) and its whole output for messages."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    args = [a for pair in pairs for a in pair]
    res = subprocess.run([sys.executable, "-c", _CONVERT_RUNNER, *args], capture_output=True, text=True,
                         timeout=600, env=env, cwd=str(Path(__file__).resolve().parents[3]))
    codes = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("EXIT ")]
    imported = next((set(line.split()[1:]) for line in res.stdout.splitlines() if line.startswith("IMPORTED")), set())
    return codes, imported, res.stdout + res.stderr
