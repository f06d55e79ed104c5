"""Sequential MNIST with a Keras LSTM: every digit is read row by row (28 steps x 28 features).

One untrained Keras model is trained twice with the same recipe (Adam with torch's epsilon
1e-8, learning rate 1e-3 annealed per epoch by a cosine schedule, batch 64, pixels / 255,
the embedded MNIST subset: 8,000 training / 2,000 test digits):

* natively by Keras (``model.fit``), on the same batches in the same order as portanet's
  trainer (whose shuffling is torch's ``DistributedSampler``);
* converted untrained by portanet and trained by ``portanet train`` (the CLI, in a
  subprocess), the trained ONNX file then scored by ONNX Runtime.

    python -m model_zoo.keras.sequential_mnist --epochs 10

prints both test accuracies (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STEPS, FEATURES, CLASSES = 28, 28, 10
LR, BATCH = 1e-3, 64


def build(seed: int = 0, units: int = 64) -> Any:
    """rows (N, 28, 28) -> LSTM(units) -> Dense(10) -> Softmax; the time axis is symbolic."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, FEATURES), name="rows")
    h = keras.layers.LSTM(units, name="lstm")(inp)
    logits = keras.layers.Dense(CLASSES, name="logits")(h)
    return keras.Model(inp, keras.layers.Softmax(name="prob")(logits), name="seq_mnist_lstm")


def load(n_train: int | None = None) -> dict[str, np.ndarray]:
    """The embedded MNIST subset as float rows in [0, 1]: x (N, 28, 28), y (N,)."""
    from portanet.data import load_data

    splits = load_data(None)
    x, y = splits.train.x[:n_train], splits.train.y[:n_train]
    scale = np.float32(1.0 / 255.0)
    return {"x": x.astype(np.float32) * scale, "y": y.astype(np.int64),
            "x_test": splits.test.x.astype(np.float32) * scale, "y_test": splits.test.y.astype(np.int64)}


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The sample order of one epoch of ``portanet train`` (torch's DistributedSampler, one worker)."""
    import torch

    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64, count=n)


def cosine_lr(epoch: int, epochs: int) -> float:
    """portanet's cosine schedule: torch's CosineAnnealingLR stepped per epoch, to 0."""
    return LR * (1 + math.cos(math.pi * epoch / epochs)) / 2


def train_keras(model: Any, data: dict[str, np.ndarray], epochs: int, seed: int = 0) -> float:
    """Keras' own training, on the batches ``portanet train`` sees, in the same order; returns
    the test accuracy."""
    import keras

    keras.utils.set_random_seed(seed)
    opt = keras.optimizers.Adam(LR, epsilon=1e-8)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    for epoch in range(epochs):
        opt.learning_rate.assign(cosine_lr(epoch, epochs))
        order = epoch_order(len(data["y"]), epoch, seed)
        model.fit(data["x"][order], data["y"][order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    probs = model.predict(data["x_test"], batch_size=500, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == data["y_test"]))


def accuracy_onnx(path: Path, data: dict[str, np.ndarray]) -> float:
    """Test accuracy of an ONNX file on ONNX Runtime."""
    from portanet.runtime.session import Session

    s = Session(str(path), backend="ort")
    probs = s.run({s.inputs[0].name: data["x_test"]})[s.outputs[0].name]
    return float(np.mean(np.argmax(probs, axis=1) == data["y_test"]))


def train_portanet(model: Any, data: dict[str, np.ndarray], epochs: int, workdir: Path, seed: int = 0,
                   threads: int = 1) -> float:
    """Convert the untrained model, train it with ``portanet train``; returns the test accuracy."""
    import portanet

    npz = workdir / "seq_mnist.npz"
    np.savez(npz, **data)
    untrained = workdir / "untrained.onnx"
    portanet.save(portanet.convert(model), untrained)
    trained = workdir / "trained.onnx"
    cmd = [sys.executable, "-m", "portanet.cli", "train", str(untrained), "--data", str(npz), "-o", str(trained),
           "--epochs", str(epochs), "--batch-size", str(BATCH), "--optimizer", "adam", "--lr", str(LR), "--schedule", "cosine",
           "--no-normalize", "--seed", str(seed)]
    # one torch thread: on a shared machine, oversubscribed OpenMP threads make torch's CPU LSTM
    # many times slower (the accuracy does not depend on it)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"portanet train failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return accuracy_onnx(trained, data)


def compare(epochs: int, n_train: int | None = None, seed: int = 0, units: int = 64) -> dict[str, Any]:
    """Both trainings from the same untrained weights; accuracies in [0, 1] and seconds."""
    data = load(n_train)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ported = train_portanet(build(seed, units), data, epochs, Path(tmp), seed)
        t1 = time.perf_counter()
        native = train_keras(build(seed, units), data, epochs, seed)
        t2 = time.perf_counter()
    return {"epochs": epochs, "train_samples": len(data["y"]), "test_samples": len(data["y_test"]), "units": units,
            "keras_accuracy": native, "portanet_accuracy": ported,
            "keras_seconds": round(t2 - t1, 1), "portanet_seconds": round(t1 - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(compare(args.epochs, args.train_samples, args.seed), indent=2))


if __name__ == "__main__":
    main()
