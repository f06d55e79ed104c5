"""Fixtures for the Caffe importer tests: tiny nets written to disk, conversion + ONNX Runtime,
and OpenCV's DNN module (an independent Caffe implementation) as the reference."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

RTOL, ATOL = 1e-4, 1e-5


def net_text(layers: str, input_shape: tuple[int, ...] = (2, 3, 8, 8), inputs: dict[str, tuple] | None = None) -> str:
    """A deploy prototxt: Input layer(s) then ``layers``."""
    inputs = inputs or {"data": input_shape}
    # one Input layer with a top and a shape per input (as Caffe's upgrader writes them)
    tops = " ".join(f'top: "{n}"' for n in inputs)
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in inputs.values())
    name = next(iter(inputs)) if len(inputs) == 1 else "input"
    head = f'layer {{ name: "{name}" type: "Input" {tops} input_param {{ {shapes} }} }}\n'
    return 'name: "t"\n' + head + layers


def write_net(folder: Path, text: str, *, name: str = "t", seed: int = 0,
              input_shapes: dict[str, list[int]] | None = None) -> tuple[Path, Path]:
    """Write ``text`` as a prototxt and a caffemodel with random (zoo-writer) weights."""
    from model_zoo.caffe.writer import write_caffemodel

    proto = folder / f"{name}.prototxt"
    proto.write_text(text)
    model = folder / f"{name}.caffemodel"
    write_caffemodel(text, model, seed=seed, input_shapes=input_shapes)
    return proto, model


def write_weights(path: Path, layers: dict[str, list[np.ndarray]], *, legacy: bool = False) -> Path:
    """A caffemodel holding only ``{layer name: [blobs]}`` (Caffe pairs weights by name)."""
    from portanet.converters.caffe import schema

    net = schema.raw_messages()["NetParameter"]()
    for name, blobs in layers.items():
        layer = net.layer.add(name=name)
        for arr in blobs:
            b = layer.blobs.add()
            arr = np.asarray(arr, dtype=np.float32)
            if legacy:
                b.num, b.channels, b.height, b.width = [1] * (4 - arr.ndim) + list(arr.shape)
            else:
                b.shape.dim.extend(arr.shape)
            b.data = arr.astype("<f4").tobytes()
    path.write_bytes(net.SerializeToString())
    return path


def convert_run(paths: list[Path], feeds: dict[str, np.ndarray], **options: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Convert with portanet, run the IR with ONNX Runtime."""
    from portanet.converters.registry import ConvertOptions, convert_paths
    from portanet.runtime.session import Session

    model = convert_paths(paths, ConvertOptions(**options))
    return model, Session(model).run(feeds)


def opencv_run(proto: Path, model: Path | None, feeds: dict[str, np.ndarray], layers: list[str]) -> dict[str, np.ndarray]:
    """Run the net in OpenCV's DNN module (no fusion, no Winograd); outputs of ``layers``."""
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model) if model else "")
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    net.enableWinograd(False)
    for k, v in feeds.items():
        net.setInput(v, k)
    outs = net.forward(layers)
    return {n: np.asarray(o) for n, o in zip(layers, outs)}


def assert_close(actual: np.ndarray, expected: np.ndarray, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert actual.shape == tuple(expected.shape), (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture
def caffe(tmp_path: Path) -> SimpleNamespace:
    """Helpers bound to a temporary folder."""
    return SimpleNamespace(
        folder=tmp_path,
        net_text=net_text,
        write=lambda text, **kw: write_net(tmp_path, text, **kw),
        write_weights=lambda name, layers, **kw: write_weights(tmp_path / name, layers, **kw),
        convert_run=convert_run,
        opencv=opencv_run,
        close=assert_close,
    )


@pytest.fixture(scope="session")
def real_caffe() -> Any:
    """The python running real BVLC Caffe; skips where it is not built. Where it is built
    (``.venv-caffe``) or named (``$PORTANET_CAFFE_PYTHON``) but does not start, the tests using it
    fail with the reason: a broken Caffe must not pass unnoticed as a row of skips."""
    from portanet.parity.runners import caffe as runner

    py = runner.caffe_python()
    if py is not None and runner.caffe_layer_types(py):
        return py
    expected = os.environ.get("PORTANET_CAFFE_PYTHON") or (
        runner.BUILT_CAFFE_PYTHON if runner.BUILT_CAFFE_PYTHON.exists() else None)
    if expected is not None:
        pytest.fail(f"real Caffe is built ({expected}) but does not start: "
                    f"{runner.caffe_start_error(py) if py is not None else 'no such python'}", pytrace=False)
    pytest.skip("real Caffe is not built here (make caffe-env builds .venv-caffe)")


@pytest.fixture(scope="session")
def zoo() -> Any:
    """``zoo(name) -> (prototxt, caffemodel)``, written once into the model_zoo cache."""
    from model_zoo.caffe.writer import build

    return build
