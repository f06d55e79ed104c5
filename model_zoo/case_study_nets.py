"""The case-study CNN in every source framework, with the data and native training around it.

The network (input 1x28x28): Conv 16 k3 ReLU -> MaxPool 2 -> Conv 32 k4 ReLU -> AvgPool 2 ->
Dropout 0.3 -> Conv 64 k5 ReLU -> Flatten -> Dense 32 tanh -> Dropout 0.2 -> Dense 10 -> Softmax.

* PyTorch: ``model_zoo.pytorch.models.CaseStudyCNN``, trained natively (``train_pytorch``).
* Keras: the same layers as a Sequential model (``keras_case_study_cnn``), trained natively
  (``train_keras``) from its own initialisation.
* Caffe (prototxt + caffemodel), MXNet (symbol JSON + params, written by mxnet 1.9.1 in the side
  environment) and CNTK (a CNTK v2 model file): the same architecture with the *trained PyTorch
  weights* copied in, so every row of the comparison has a meaningful accuracy. Both pooling
  windows divide their inputs exactly (26 -> 13, 10 -> 5), so Caffe's ceil rounding, MXNet's
  "valid" convention and CNTK's pooling all give PyTorch's output sizes.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the paper's standardisation of [0, 1] MNIST pixels
MEAN, STD = 0.1307, 0.3081
CLASSES = 10

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------ data
@dataclass
class Digits:
    """Standardised images (N, 1, 28, 28) float32 and labels (N,) int64 of both splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: the splits as loaded (integer pixels), for portanet's Trainer which normalises itself
    raw: Any


def load_digits(data_dir: str | Path | None = None) -> Digits:
    """Any MNIST-format directory (None: the embedded mnist-10k), scaled to [0, 1] and standardised."""
    from portanet.data import Normalizer, load_data

    splits = load_data(data_dir)

    def prep(x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:  # (N, 28, 28) -> (N, 1, 28, 28)
            x = x[:, None]
        return Normalizer([MEAN], [STD], Normalizer.scale_for(x)).apply(x)

    return Digits(prep(splits.train.x), splits.train.y.astype(np.int64), prep(splits.test.x),
                  splits.test.y.astype(np.int64), splits)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of (N, 10) scores."""
    return float(np.mean(np.argmax(np.asarray(probs).reshape(len(labels), -1), axis=1) == labels))


# -------------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    """Native training: shuffled mini-batches, cross-entropy on logits, SGD with momentum and a
    learning rate multiplied by ``gamma`` after every epoch."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    gamma: float = 0.7
    #: stop each epoch after this many batches (None: the whole training split)
    max_batches: int | None = None
    seed: int = 0


@dataclass
class TrainResult:
    seconds_per_epoch: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return float(np.median(self.seconds_per_epoch)) if self.seconds_per_epoch else math.nan


Progress = Callable[[int, int], None]  # (batches done, batches total)


def _steps(n: int, s: TrainSettings) -> int:
    steps = math.ceil(n / s.batch_size)
    return min(steps, s.max_batches) if s.max_batches else steps


def train_pytorch(model: Any, digits: Digits, s: TrainSettings, progress: Progress | None = None) -> TrainResult:
    """Train ``CaseStudyCNN`` in place on the pre-softmax logits (its last module is the Softmax)."""
    import torch
    from torch import nn

    torch.manual_seed(s.seed)
    logits_net = nn.Sequential(model.features, *list(model.classifier)[:-1])  # shares the parameters
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma)
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    steps = _steps(len(y), s)
    rng = np.random.default_rng(s.seed)
    result = TrainResult()
    for epoch in range(s.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        total, seen = 0.0, 0
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order[step * s.batch_size:(step + 1) * s.batch_size]
            loss = nn.functional.cross_entropy(logits_net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if progress:
                progress(epoch * steps + step + 1, s.epochs * steps)
        result.seconds_per_epoch.append(time.perf_counter() - t0)
        result.train_loss.append(total / max(seen, 1))
        sched.step()
    model.eval()
    return result


def predict_pytorch(model: Any, x: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


# ------------------------------------------------------------------------------------ Keras
def keras_case_study_cnn(seed: int = 0) -> tuple[Any, Any]:
    """(model, logits model): the Keras zoo's case-study CNN (NHWC input 28x28x1) and a
    functional view ending before the Softmax that shares its layers, for training on logits."""
    import keras

    from model_zoo.keras.models import case_study_cnn

    model = case_study_cnn(seed)
    logits = keras.Model(model.inputs, model.get_layer("fc2").output, name="case_study_logits")
    return model, logits


def train_keras(model_and_logits: tuple[Any, Any], digits: Digits, s: TrainSettings,
                progress: Progress | None = None) -> TrainResult:
    """Native Keras training (``fit``) of the logits view: same optimiser, schedule and batches
    as ``train_pytorch``; the time of each epoch comes from a callback."""
    import keras

    _, logits = model_and_logits
    steps = _steps(len(digits.y_train), s)
    n = min(len(digits.y_train), steps * s.batch_size)
    x = np.ascontiguousarray(digits.x_train[:n].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    y = digits.y_train[:n]
    schedule = keras.optimizers.schedules.ExponentialDecay(s.lr, decay_steps=steps, decay_rate=s.gamma,
                                                           staircase=True)  # one decay per epoch
    logits.compile(optimizer=keras.optimizers.SGD(schedule, momentum=s.momentum),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = TrainResult()

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if progress:
                progress(self.epoch * steps + batch + 1, s.epochs * steps)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            result.seconds_per_epoch.append(time.perf_counter() - self.t0)
            result.train_loss.append(float((logs or {}).get("loss", math.nan)))

    keras.utils.set_random_seed(s.seed)
    logits.fit(x, y, batch_size=s.batch_size, epochs=s.epochs, shuffle=True, verbose=0, callbacks=[Timer()])
    return result


def predict_keras(model: Any, x_nchw: np.ndarray, batch: int = 500) -> np.ndarray:
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    return np.asarray(model.predict(x, batch_size=batch, verbose=0))


# ---------------------------------------------------------------------- weights from PyTorch
def torch_weights(model: Any) -> dict[str, np.ndarray]:
    """The trained parameters under layer names shared by the Caffe/MXNet/CNTK writers:
    conv1/conv2/conv3 (Cout, Cin, kH, kW) and fc1/fc2 (out, in), each with ``_b`` biases."""
    f, c = model.features, model.classifier
    mods = {"conv1": f[0], "conv2": f[3], "conv3": f[7], "fc1": c[1], "fc2": c[4]}
    out: dict[str, np.ndarray] = {}
    for name, m in mods.items():
        out[f"{name}_w"] = m.weight.detach().numpy().astype(np.float32)
        out[f"{name}_b"] = m.bias.detach().numpy().astype(np.float32)
    return out


# ------------------------------------------------------------------------------------ Caffe
CAFFE_PROTOTXT = """\
name: "CaseStudyCNN"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 32 kernel_size: 4 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool2" top: "pool2" dropout_param { dropout_ratio: 0.3 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 64 kernel_size: 5 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv3" top: "fc1" inner_product_param { num_output: 32 } }
layer { name: "tanh1" type: "TanH" bottom: "fc1" top: "fc1" }
layer { name: "drop2" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.2 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""


def write_caffe(weights: dict[str, np.ndarray], directory: Path) -> tuple[Path, Path]:
    """Write ``case_study.prototxt`` and ``case_study.caffemodel`` (binary NetParameter holding the
    layer definitions and the given weights; Caffe's blob layouts equal PyTorch's here)."""
    from portanet.converters.caffe import schema
    from portanet.converters.caffe.reader import parse_prototxt_text
    from portanet.ir.io import atomic_write_bytes

    directory.mkdir(parents=True, exist_ok=True)
    prototxt = directory / "case_study.prototxt"
    atomic_write_bytes(prototxt, CAFFE_PROTOTXT.encode())
    raw = schema.RawNetParameter()
    raw.ParseFromString(parse_prototxt_text(CAFFE_PROTOTXT).SerializeToString())
    for layer in raw.layer:
        if f"{layer.name}_w" not in weights:
            continue
        for arr in (weights[f"{layer.name}_w"], weights[f"{layer.name}_b"]):
            blob = layer.blobs.add()
            blob.shape.dim.extend(arr.shape)
            blob.data = np.asarray(arr, dtype="<f4").tobytes()
    caffemodel = atomic_write_bytes(directory / "case_study.caffemodel", raw.SerializeToString())
    return prototxt, caffemodel


# ------------------------------------------------------------------------------------- CNTK
def write_cntk(weights: dict[str, np.ndarray], directory: Path) -> Path:
    """Write ``case_study.model``: a CNTK v2 graph the way ``cntk.layers`` builds it (Blocks for
    Convolution/Pooling/Dense, valid padding, whole-sample Softmax), with the given weights."""
    from model_zoo.cntk.writer import CntkWriter, Int, shape

    directory.mkdir(parents=True, exist_ok=True)
    w = CntkWriter()
    x = w.input((1, 28, 28), "features")

    def conv(inp: str, name: str) -> str:
        wt, b = weights[f"{name}_w"], weights[f"{name}_b"]
        cout, cin, kh, kw = wt.shape
        with w.block("Convolution", [inp], name=name) as blk:
            W = w.parameter(wt, "W")
            bias = w.parameter(b.reshape(cout, 1, 1), "b")
            y = w.op("Convolution", [W, blk.args[0]], {
                "autoPadding": [False, False, False], "sharing": [True], "strides": shape(1, 1, cin),
                "lowerPad": shape(0), "upperPad": shape(0), "transpose": False, "maxTempMemSizeInSamples": 0,
                "outputShape": shape(0), "dilation": shape(1, 1, 1), "kernelShape": shape(kw, kh, cin),
            })
            w.op("ReLU", [w.op("Plus", [y, bias])])
        return blk.output

    def pool(inp: str, name: str, kind: str, ptype: int) -> str:
        with w.block(kind, [inp], name=name) as blk:
            w.op("Pooling", [blk.args[0]], {"poolingType": ptype, "poolingWindowShape": shape(2, 2),
                                            "strides": shape(2, 2), "autoPadding": [False], "lowerPad": shape(0),
                                            "upperPad": shape(0), "ceilOutDim": False, "includePad": False})
        return blk.output

    def dense(inp: str, name: str, in_shape: tuple[int, ...], act: str | None) -> str:
        wt, b = weights[f"{name}_w"], weights[f"{name}_b"]
        with w.block("Dense", [inp], name=name) as blk:
            W = w.parameter(wt.T.reshape(*in_shape, wt.shape[0]), "W")  # (in..., out)
            y = w.op("Plus", [w.op("Times", [W, blk.args[0]], {"outputRank": 1, "inferInputRankToMap": Int(-1)}),
                              w.parameter(b, "b")])
            if act:
                w.op(act, [y])
        return blk.output

    h = pool(conv(x, "conv1"), "pool1", "MaxPooling", 0)  # (16, 13, 13)
    h = pool(conv(h, "conv2"), "pool2", "AveragePooling", 1)  # (32, 5, 5)
    h = w.op("Dropout", [h], {"dropoutRate": 0.3}, name="drop1")
    h = conv(h, "conv3")  # (64, 1, 1)
    h = dense(h, "fc1", (64, 1, 1), "Tanh")
    h = w.op("Dropout", [h], {"dropoutRate": 0.2}, name="drop2")
    h = dense(h, "fc2", (32,), None)
    y = w.op("Softmax", [h], name="prob")
    return w.save(directory / "case_study.model", y)


# ------------------------------------------------------------------------------------ MXNet
def write_mxnet(weights: dict[str, np.ndarray], directory: Path, python: Path) -> tuple[Path, Path, str]:
    """Write ``case_study-symbol.json`` and ``case_study-0000.params`` with mxnet 1.9.1 itself
    (``python`` is the side environment's interpreter running ``case_study_mxnet.py``);
    returns the two paths and mxnet's version."""
    from model_zoo.mxnet import mxnet_env

    directory.mkdir(parents=True, exist_ok=True)
    npz = directory / "case_study-weights.npz"
    np.savez(npz, **weights)
    proc = subprocess.run([str(python), str(HERE / "case_study_mxnet.py"), str(npz), str(directory / "case_study")],
                          env=mxnet_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mxnet failed to write the case-study model: {proc.stderr.strip()[-2000:]}")
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(written["symbol"]), Path(written["params"]), str(written["mxnet"])
