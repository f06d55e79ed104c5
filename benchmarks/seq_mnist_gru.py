"""Sequential MNIST: a PyTorch GRU classifier trained natively and through portanet.

    python benchmarks/seq_mnist_gru.py [--epochs 3] [--hidden 64] [--train 8000]

Each embedded MNIST digit is read row by row (28 steps of 28 features). The same untrained
``GRU(28, hidden) + Linear(hidden, 10)`` is (a) converted by ``portanet.convert`` and trained
by portanet's Trainer, (b) trained directly in PyTorch with the same recipe (Adam, batch 50,
the Trainer's batch order). Prints both test accuracies and their difference (the check:
within 1 point). Asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()

    import torch

    import portanet
    from portanet.data import load_data
    from portanet.runtime.trainer import TrainConfig, Trainer

    class Gru(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(28, args.hidden, batch_first=True)
            self.fc = torch.nn.Linear(args.hidden, 10)

        def forward(self, x):
            return self.fc(self.gru(x)[0][:, -1])

    s = load_data(None)
    x = (s.train.x.reshape(-1, 28, 28).astype(np.float32) / np.float32(255.0))[: args.train]
    y = s.train.y.astype(np.int64)[: args.train]
    xt = s.test.x.reshape(-1, 28, 28).astype(np.float32) / np.float32(255.0)
    yt = s.test.y.astype(np.int64)
    batch, seed = 50, 0
    torch.manual_seed(0)
    native = Gru()
    model = portanet.convert(native, example_inputs=(torch.zeros(2, 28, 28),))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seq.npz"
        np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
        t = time.perf_counter()
        trainer = Trainer(model, TrainConfig(epochs=args.epochs, batch_size=batch, optimizer="adam", lr=args.lr,
                                             seed=seed, normalize=False))
        trainer.fit(path)
        t_ours = time.perf_counter() - t
    ours = trainer.final_metrics()["test_accuracy"]

    opt = torch.optim.Adam(native.parameters(), lr=args.lr)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    t = time.perf_counter()
    native.train()
    for epoch in range(args.epochs):
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        for idx in torch.randperm(len(ys), generator=g).split(batch):
            loss = torch.nn.functional.cross_entropy(native(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_native = time.perf_counter() - t
    native.eval()
    with torch.no_grad():
        ref = float((native(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
    print(f"sequential MNIST, GRU({args.hidden}), {len(y)} train / {len(yt)} test digits, {args.epochs} epochs")
    print(f"native PyTorch : test accuracy {ref * 100:.2f}%  ({t_native:.0f} s)")
    print(f"portanet train : test accuracy {ours * 100:.2f}%  ({t_ours:.0f} s)")
    print(f"difference     : {abs(ours - ref) * 100:.2f} points")


if __name__ == "__main__":
    main()
