"""Training recurrent models: sequences (N, T, F) and integer token ids, against native PyTorch.

Sequential MNIST: each embedded MNIST digit read row by row (28 steps of 28 features). A
PyTorch GRU classifier, converted untrained, is trained by ``portanet``'s Trainer and,
separately, by the same recipe written directly in PyTorch (same initial weights, same
batches: DistributedSampler's permutation seeded ``seed + epoch``). Both reach the same
accuracy (within 1 point; in fact the same weights to float32 round-off). The test uses a
subset and two epochs; README.md has the full-data numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import portanet
from portanet.cli import cli
from portanet.data import load_data
from portanet.runtime.trainer import TrainConfig, Trainer

torch = pytest.importorskip("torch")
F = torch.nn.functional

N_TRAIN, N_TEST, EPOCHS, BATCH, LR, SEED = 800, 400, 2, 50, 4e-3, 3


class GruClassifier(torch.nn.Module):
    """Sequential-MNIST classifier: a GRU over the 28 rows, a linear head on the last state."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(28, hidden, batch_first=True)
        self.fc = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


class TokenLstm(torch.nn.Module):
    """Token ids -> Embedding -> LSTM -> linear head on the last step."""

    def __init__(self, vocab: int = 20) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.fc = torch.nn.Linear(16, 2)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        return self.fc(y[:, -1])


@pytest.fixture(scope="module")
def seq_mnist(tmp_path_factory):
    """An .npz of embedded MNIST digits as (N, 28, 28) float sequences in [0, 1]."""
    s = load_data(None)
    x = s.train.x.reshape(len(s.train.x), 28, 28).astype(np.float32) / np.float32(255.0)
    xt = s.test.x.reshape(len(s.test.x), 28, 28).astype(np.float32) / np.float32(255.0)
    path = tmp_path_factory.mktemp("seq") / "seq_mnist.npz"
    np.savez(path, x=x[:N_TRAIN], y=s.train.y[:N_TRAIN].astype(np.int64), x_test=xt[:N_TEST],
             y_test=s.test.y[:N_TEST].astype(np.int64))
    return path


def _native(module, x, y, *, epochs: int, batch: int, lr: float, seed: int):
    """The recipe in plain PyTorch: Adam, cross-entropy, the Trainer's batch order."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    module.train()
    for epoch in range(epochs):
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        for idx in torch.randperm(len(yt), generator=g).split(batch):
            loss = F.cross_entropy(module(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return module.eval()


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def test_sequential_mnist_gru_matches_native_training(seq_mnist) -> None:
    torch.manual_seed(0)
    native = GruClassifier()
    model = portanet.convert(native, example_inputs=(torch.zeros(2, 28, 28),))  # untrained weights
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, optimizer="adam", lr=LR, seed=SEED, normalize=False)
    trainer = Trainer(model, cfg)
    trainer.fit(seq_mnist)
    trained = trainer.export()

    z = np.load(seq_mnist)
    _native(native, z["x"], z["y"], epochs=EPOCHS, batch=BATCH, lr=LR, seed=SEED)
    with torch.no_grad():
        native_acc = _accuracy(native(torch.from_numpy(z["x_test"])).numpy(), z["y_test"])
    ours = portanet.Session(trained, backend="ort").run({model.graph.inputs[0].name: z["x_test"]})
    ours_acc = _accuracy(next(iter(ours.values())), z["y_test"])
    assert native_acc > 0.3, native_acc  # it learned (10 classes: chance is 0.1)
    assert abs(ours_acc - native_acc) <= 0.01, (ours_acc, native_acc)
    assert trainer.final_metrics()["test_accuracy"] == pytest.approx(ours_acc, abs=0.004)


def test_token_ids_lstm_matches_native_training(tmp_path) -> None:
    """Integer token ids (N, T) feed an Embedding + LSTM model; the same weights as native
    training come out."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (600, 9)).astype(np.int64)
    labels = (ids == 7).any(1).astype(np.int64)  # does token 7 occur?
    path = tmp_path / "tokens.npz"
    np.savez(path, x=ids[:500], y=labels[:500], x_test=ids[500:], y_test=labels[500:])
    torch.manual_seed(1)
    native = TokenLstm()
    model = portanet.convert(native, example_inputs=(torch.from_numpy(ids[:2]),))
    assert [str(d) for d in model.graph.inputs[0].shape] == ["N", "T"]
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=5e-3, seed=2))
    trainer.fit(path)
    exported = {k: v.const_value.numpy() for k, v in trainer.export().graph.initializers.items()}
    _native(native, ids[:500], labels[:500], epochs=2, batch=32, lr=5e-3, seed=2)
    for name, p in native.named_parameters():
        if name in exported:  # parameters the exporter kept under their module names
            np.testing.assert_allclose(exported[name], p.detach().numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    assert {"emb.weight", "fc.weight"} <= set(exported)


def test_float_model_refuses_token_ids_and_vice_versa(tmp_path) -> None:
    from portanet.errors import InvalidInputError

    torch.manual_seed(0)
    model = portanet.convert(TokenLstm(), example_inputs=(torch.zeros(2, 5, dtype=torch.int64),))
    path = tmp_path / "floats.npz"
    np.savez(path, x=np.zeros((20, 5), np.float32), y=np.zeros(20, np.int64))
    with pytest.raises(InvalidInputError, match="token ids"):
        Trainer(model, TrainConfig(epochs=1)).prepare(path)


def test_train_cli_on_sequences(seq_mnist, tmp_path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "gru.onnx"
    portanet.save(portanet.convert(GruClassifier(16), example_inputs=(torch.zeros(2, 28, 28),)), src)
    z = np.load(seq_mnist)
    small = tmp_path / "small.npz"
    np.savez(small, x=z["x"][:200], y=z["y"][:200])
    out = tmp_path / "trained.onnx"
    result = CliRunner().invoke(cli, ["train", str(src), "--data", str(small), "--epochs", "1",
                                      "--optimizer", "adam", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.mark.parametrize("shape", [(5, 1, 4), (5, 4, 1, 1)])
def test_cross_entropy_on_one_score_vector_per_sample(shape) -> None:
    """Outputs holding one score vector per sample in a larger shape — a length-1 sequence
    (N, 1, C) from a sequence model's last step, or a conv head's (N, C, 1, 1) — train with
    integer labels (N,): the loss and the predictions use the C scores. Reference: numpy's
    log-softmax written here."""
    import torch

    from portanet.runtime.losses import make_loss

    rng = np.random.default_rng(0)
    scores = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 4, size=shape[0])
    loss = make_loss("cross_entropy")
    loss.check_targets(labels, shape, where="data.npz", output="out")  # accepted
    got = float(loss(torch.from_numpy(scores), torch.from_numpy(labels), "logits"))
    flat = scores.reshape(shape[0], 4).astype(np.float64)
    logp = flat - flat.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ref = -logp[np.arange(shape[0]), labels].mean()
    assert abs(got - ref) <= 1e-6
    pred = loss.predictions(torch.from_numpy(scores), torch.from_numpy(labels)).numpy()
    assert np.array_equal(pred, flat.argmax(1))
    with pytest.raises(portanet.errors.InvalidInputError, match="labels range 0..4 but output 'out' has 4 classes"):
        loss.check_targets(np.array([0, 4]), shape, where="data.npz", output="out")
