"""MXNet recurrent layers (fused RNN op, unrolled Gluon cells) against mxnet 1.9.1.

References come from real mxnet 1.9.1 (``model_zoo/mxnet/rnn_build.py``, oneDNN on); each
model is converted once and run on ONNX Runtime and the torch backend for every reference
case (batch 1 and >1, several sequence lengths for the fused layers, whose time axis stays
symbolic).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import portanet
from portanet.cli import cli
from portanet.errors import UnsupportedOpError
from portanet.runtime.session import Session
from tests.tolerance import parity_bound

pytestmark = pytest.mark.skipif(
    __import__("model_zoo.mxnet", fromlist=["mxnet_python"]).mxnet_python() is None,
    reason="mxnet side environment (make mxnet-env) not installed",
)

MODELS = ["gru_bi_states", "gru_cell_unrolled", "gru_tnc_head", "lstm_2bi_states", "lstm_cell_unrolled",
          "lstm_seqlen", "rnn_relu_2", "rnn_tanh_bi"]


@pytest.fixture(scope="module")
def rnn_zoo():
    from model_zoo.mxnet.recurrent import build_rnn

    folder, manifest = build_rnn()
    cache: dict[str, object] = {}

    def get(name: str):
        spec = manifest[name]
        if name not in cache:
            cache[name] = portanet.convert(str(folder / f"{name}-symbol.json"), str(folder / f"{name}-0000.params"),
                                           input_shapes=spec["input_shapes"])
        return folder, spec, cache[name]

    return get



@pytest.mark.parametrize("backend", ["ort", "torch"])
@pytest.mark.parametrize("name", MODELS)
def test_parity_with_mxnet(rnn_zoo, name: str, backend: str) -> None:
    folder, spec, model = rnn_zoo(name)
    sess = Session(model, backend=backend)
    for k in range(spec["cases"]):
        feeds = dict(np.load(folder / f"{name}-input-{k}.npz"))
        refs = np.load(folder / f"{name}-ref-{k}.npz")
        got = list(sess.run(feeds).values())
        assert len(got) == len(refs.files)
        for i, g in enumerate(got):
            ref = refs[f"out{i}"]
            assert g.shape == ref.shape, (name, k, i, g.shape, ref.shape)
            err = float(np.abs(g - ref).max())
            assert err <= parity_bound(ref), f"{name} case {k} output {i}: {err:.3g}"


def test_weights_stay_mxnet_arrays(rnn_zoo) -> None:
    """The stored MXNet arrays are the initializers (trainable, under their own names)."""
    folder, _, model = rnn_zoo("lstm_2bi_states")
    sym = json.loads((folder / "lstm_2bi_states-symbol.json").read_text())
    stored = {n["name"] for n in sym["nodes"] if n["op"] == "null" and n["name"].endswith(("_weight", "_bias"))}
    assert len(stored) == 16 and stored <= set(model.graph.initializers)


def test_unsupported_variants_one_error_exit_2(rnn_zoo, tmp_path) -> None:
    folder, spec, _ = rnn_zoo("lstm_2bi_states")
    sym = json.loads((folder / "lstm_2bi_states-symbol.json").read_text())
    rnn_nodes = [n for n in sym["nodes"] if n["op"] == "RNN"]
    # two RNN layers: one with a projection, one with a cell-state clip
    sym["nodes"].append(dict(rnn_nodes[0], name="second_rnn"))
    rnn_nodes[0]["attrs"]["projection_size"] = "4"
    sym["nodes"][-1]["attrs"] = dict(rnn_nodes[0]["attrs"], projection_size="None", lstm_state_clip_min="-1",
                                     lstm_state_clip_max="1")
    sym["heads"].append([len(sym["nodes"]) - 1, 0, 0])
    path = tmp_path / "bad-symbol.json"
    path.write_text(json.dumps(sym))
    params = str(folder / "lstm_2bi_states-0000.params")
    with pytest.raises(UnsupportedOpError) as info:
        portanet.convert(str(path), params, input_shapes=spec["input_shapes"])
    msg = str(info.value)
    assert "RNN(projection_size)" in msg and "RNN(lstm_state_clip)" in msg
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, ["convert", str(path), params, "-o", str(out),
                                      "--input-shape", "data=Nx4x5", "--input-shape", "state0=4xNx8",
                                      "--input-shape", "state1=4xNx8"])
    assert result.exit_code == 2, result.output
    assert "RNN(projection_size)" in result.output and "Traceback" not in result.output
    assert not out.exists()
