"""Training throughput: native PyTorch vs `portanet train` on the same architecture.

    python benchmarks/train_speed.py [--epochs 2] [--rounds 3] [--threads N] [--resnet-samples 1024]

1. The case-study CNN on the embedded MNIST 10k subset (8,000 training digits), batch 64,
   SGD with momentum 0.9: an epoch of the ``torch.nn`` module in a plain PyTorch loop, and an
   epoch of `portanet train` on the same (untrained) network exported by ``torch.onnx`` and
   converted by portanet (``portanet convert``'s default -O1 clean-up, which keeps it trainable).
2. ResNet-18 (torchvision's architecture, written here with ``torch.nn``; 10 classes) on
   random 3x32x32 data, same loop and optimizer.

Both sides train on the same in-memory normalised tensors; the native loop shuffles with
``torch.randperm``, gathers batches with ``index_select`` and reads the loss every step.
`portanet train` runs in-process (its throughput per epoch comes from the JSON log it writes;
the first epoch of each side is a warm-up). Prints samples/s and the ratio portanet / native
(target >= 0.95). Runs alternate between the two sides so that load on a shared machine
affects both alike. Asserts nothing: timing is machine-dependent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


# ------------------------------------------------------------------------------- models
class CaseStudyCNN(nn.Module):
    """1x28x28 -> Conv16k3 ReLU, MaxPool2, Conv32k4 ReLU, AvgPool2, Dropout .3, Conv64k5 ReLU,
    Flatten, Dense32 tanh, Dropout .2, Dense10, Softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 16, 3), nn.Conv2d(16, 32, 4), nn.Conv2d(32, 64, 5)
        self.drop1, self.drop2 = nn.Dropout(0.3), nn.Dropout(0.2)
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)               # (N, 16, 13, 13)
        x = self.drop1(F.avg_pool2d(torch.relu(self.conv2(x)), 2))   # (N, 32, 5, 5)
        x = torch.relu(self.conv3(x)).flatten(1)                     # (N, 64)
        return self.fc2(self.drop2(torch.tanh(self.fc1(x))))         # (N, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout: 7x7/2 stem, max pool, 4 stages of 2 basic blocks."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))                 # (N, 512, H/32, W/32)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


# ------------------------------------------------------------------------------- timing
def native_epoch(module: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                 batch: int, seed: int) -> float:
    """One epoch of a plain PyTorch loop; returns samples/s."""
    module.train()
    g = torch.Generator()
    g.manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    total = 0.0
    t0 = time.perf_counter()
    for idx in order.split(batch):
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        loss = F.cross_entropy(module.logits(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    return len(y) / (time.perf_counter() - t0)


def export(module: nn.Module, shape: tuple[int, ...], path: Path, *, keep_dropout: bool) -> Path:
    """torch.onnx export with a symbolic batch; Dropout kept in inference form (see tests),
    BatchNormalization kept as a node (trainable, with running statistics)."""
    import onnx

    module.train(keep_dropout)
    batch = torch.export.Dim("N", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (torch.zeros(2, *shape),), dynamo=True, input_names=["input"],
                                    output_names=["out"], dynamic_shapes=({0: batch},), opset_version=18,
                                    optimize=False)  # the optimizer folds eval-mode BatchNorm into Conv
    proto = program.model_proto
    for node in proto.graph.node:
        if node.op_type == "Dropout" and len(node.input) == 3:
            del node.input[2]
    onnx.save(proto, str(path))
    module.train()
    return path


def portanet_epochs(onnx_path: Path, data: Path, workdir: Path, epochs: int, lr: float, seed: int) -> list[float]:
    """Run `portanet train` in-process; returns samples/s per epoch from its JSON log."""
    from portanet.cli import cli

    out = workdir / f"trained-{seed}.onnx"
    args = ["train", str(onnx_path), "--data", str(data), "-o", str(out), "--epochs", str(epochs),
            "--batch-size", "64", "--optimizer", "sgd", "--lr", str(lr), "--momentum", "0.9", "--seed", str(seed),
            "--no-normalize", "--checkpoint-dir", str(workdir / f"ckpt-{seed}")]
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(args, standalone_mode=False)
    log = json.loads(out.with_suffix(".train.json").read_text())
    return [h["samples_per_s"] for h in log["history"]]


def compare(name: str, module_fn, x: np.ndarray, y: np.ndarray, shape, epochs: int, lr: float, rounds: int,
            workdir: Path, keep_dropout: bool) -> float:
    """Alternate native and portanet runs; print medians of the post-warm-up epochs and the ratio."""
    import portanet

    torch.manual_seed(0)
    module = module_fn()
    slug = name.lower().replace(" ", "-")
    exported = export(module, shape, workdir / f"{slug}-torch.onnx", keep_dropout=keep_dropout)
    # what `portanet convert exported.onnx -o converted.onnx` does (default -O1: clean-up that
    # keeps the model trainable), then `portanet train converted.onnx`
    onnx_path = workdir / f"{slug}.onnx"
    portanet.save(portanet.optimize(portanet.convert(str(exported)), level=1), onnx_path)
    data = workdir / f"{slug}.npz"
    # the portanet run reads the same float data (--no-normalize keeps float32 as is)
    np.savez(data, x=x, y=y, x_test=x[:256], y_test=y[:256])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    native, ported = [], []
    for r in range(rounds):
        torch.manual_seed(0)
        m = module_fn()
        m.load_state_dict(module.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
        rates = [native_epoch(m, xt, yt, opt, 64, seed=e) for e in range(epochs)]
        native += rates[1:]
        ported += portanet_epochs(onnx_path, data, workdir, epochs, lr, seed=r)[1:]
    n, p = statistics.median(native), statistics.median(ported)
    print(f"{name:16s} native {n:10,.0f} samples/s   portanet train {p:10,.0f} samples/s   "
          f"ratio {p / n:.3f}x  (median of {len(native)} epochs each)")
    return p / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="Epochs per run (the first is a warm-up).")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating native/portanet runs.")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice).")
    ap.add_argument("--resnet-samples", type=int, default=1024, help="Random 3x32x32 samples per ResNet epoch.")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from portanet.data import Normalizer, load_data

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="portanet-train-bench-") as tmp:
        work = Path(tmp)
        train = load_data().train
        x = Normalizer.fit(train.x).apply(train.x[:, None])  # (8000, 1, 28, 28) float32
        ratios["case-study CNN"] = compare("case-study CNN", CaseStudyCNN, x, train.y, (1, 28, 28), args.epochs,
                                           0.05, args.rounds, work, keep_dropout=True)
        if not args.skip_resnet:
            rng = np.random.default_rng(0)
            xr = rng.standard_normal((args.resnet_samples, 3, 32, 32)).astype(np.float32)
            yr = rng.integers(0, 10, args.resnet_samples)
            ratios["ResNet-18"] = compare("ResNet-18", ResNet18, xr, yr, (3, 32, 32), args.epochs, 0.01,
                                          args.rounds, work, keep_dropout=False)
    print("target: portanet >= 0.95x native throughput;",
          ", ".join(f"{k} {v:.3f}x" + ("" if v >= 0.95 else " (below target)") for k, v in ratios.items()))


if __name__ == "__main__":
    main()
