"""Trainer: accuracy on MNIST, agreement with native PyTorch training, resume, freeze, schedules.

References come from PyTorch itself (the same network written with torch.nn and trained with
torch.optim on the same batches) and from ONNX Runtime running the exported model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import portanet
from portanet.cli import cli
from portanet.data import load_data
from portanet.errors import InvalidInputError, RuntimeBackendError
from portanet.runtime.trainer import TRAINING_KEY, TrainConfig, Trainer, list_checkpoints
from tests.runtime.trainer_models import case_study_onnx, small_mlp_module

RTOL, ATOL = 1e-4, 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def case_study_path():
    return case_study_onnx(seed=0)


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory):
    """512 training and 256 test digits of the embedded MNIST subset, as .npz."""
    s = load_data()
    path = tmp_path_factory.mktemp("data") / "mnist-small.npz"
    np.savez(path, x=s.train.x[:512], y=s.train.y[:512], x_test=s.test.x[:256], y_test=s.test.y[:256])
    return path


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v.const_value.numpy()) for k, v in model.graph.initializers.items()
            if v.const_value is not None and v.dtype == portanet_float()}


def portanet_float():
    import onnx_ir as ir

    return ir.DataType.FLOAT


# ------------------------------------------------------------------------ the case study
def test_case_study_cnn_reaches_95_percent_with_portanet_train(case_study_path, tmp_path):
    """The untrained case-study CNN, exported by torch.onnx and trained by `portanet train`."""
    out = tmp_path / "trained.onnx"
    res = CliRunner().invoke(cli, ["train", str(case_study_path), "-o", str(out), "--epochs", "5",
                                   "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--seed", "0",
                                   "--schedule", "cosine"])
    assert res.exit_code == 0, res.output
    log = json.loads((tmp_path / "trained.train.json").read_text())
    assert [h["epoch"] for h in log["history"]] == [1, 2, 3, 4, 5]
    assert log["training_output"] == {"output": "probs", "trained_value": log["training_output"]["trained_value"],
                                      "kind": "logits", "loss": "cross_entropy"}
    assert log["final"]["test_accuracy"] >= 0.95
    assert (tmp_path / "trained.train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in list_checkpoints(tmp_path / "trained.checkpoints")] == ["epoch-004.pt", "epoch-005.pt"]

    # ONNX Runtime, independently of portanet: accuracy of the exported file on the test split
    model = portanet.load(out)
    record = json.loads(model.metadata_props[TRAINING_KEY])
    norm = record["normalization"]
    test = load_data().test
    x = ((test.x.astype(np.float32) * np.float32(norm["scale"]) - np.float32(norm["mean"][0]))
         / np.float32(norm["std"][0]))[:, None]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"input": x})[0]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)  # the Softmax is still there
    acc = float((probs.argmax(1) == test.y).mean())
    assert acc >= 0.95
    assert acc == pytest.approx(log["final"]["test_accuracy"], abs=1.5e-3)  # at most 3 borderline digits differ
    # the torch backend (eval mode) and ONNX Runtime agree on the trained weights
    torch_probs = portanet.Session(model, backend="torch").run({"input": x[:256]})["probs"]
    np.testing.assert_allclose(torch_probs, probs[:256], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------ agreement with native torch
def _native_run(module_fn, x, y, *, optimizer, lr, loss, epochs, batch, seed, weight_decay=None):
    """The same training written directly in PyTorch: DistributedSampler's permutation
    (torch.randperm with a generator seeded ``seed + epoch``), the same batches."""
    module = module_fn()
    logits = module[:-1]  # drop the Softmax for cross-entropy
    params = list(module.parameters())
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01 if weight_decay is None else weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        perm = torch.randperm(len(yt), generator=g)
        for idx in perm.split(batch):
            xb, yb = xt[idx], yt[idx]
            if loss == "cross_entropy":
                value = F.cross_entropy(logits(xb), yb)
            else:
                value = F.mse_loss(module(xb), F.one_hot(yb, 10).float())
            opt.zero_grad()
            value.backward()
            opt.step()
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("optimizer,loss,lr", [("sgd", "cross_entropy", 0.05), ("adam", "cross_entropy", 1e-3),
                                               ("adamw", "mse", 2e-3)])
def test_training_matches_native_pytorch(mlp_path, small_npz, optimizer, loss, lr):
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer=optimizer, lr=lr, loss=loss, seed=7, normalize=False)
    trainer = Trainer(portanet.convert(str(mlp_path)), cfg)
    trainer.fit(small_npz)
    trained = _weights(trainer.export())
    s = load_data(small_npz)
    x = (s.train.x.astype(np.float32) / np.float32(255.0))[:, None]  # --no-normalize: scale only
    ref = _native_run(lambda: small_mlp_module(seed=0), x, s.train.y, optimizer=optimizer, lr=lr, loss=loss,
                      epochs=2, batch=64, seed=7)
    assert set(ref) <= set(trained)
    for name, want in ref.items():
        assert not np.array_equal(want, _weights(portanet.convert(str(mlp_path)))[name])  # it did train
        np.testing.assert_allclose(trained[name], want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_nhwc_model_input_gets_channels_last(tmp_path, small_npz):
    """A model taking (N, 28, 28, 1) (a Keras-style input) receives MNIST with the channel last."""
    from tests.runtime.trainer_models import export_onnx

    class ChannelsLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_mlp_module(seed=0)

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)

    path = export_onnx(ChannelsLast(), tmp_path / "nhwc.onnx", (1, 28, 28, 1))
    trainer = Trainer(portanet.convert(str(path)), epochs=1, lr=0.05, seed=4, normalize=False)
    trainer.fit(small_npz)
    assert trainer.summary()["data"]["layout"] == "add-channel-last"
    trained = _weights(trainer.export())
    s = load_data(small_npz)
    ref = _native_run(lambda: small_mlp_module(seed=0), (s.train.x.astype(np.float32) / np.float32(255.0))[:, None],
                      s.train.y, optimizer="sgd", lr=0.05, loss="cross_entropy", epochs=1, batch=64, seed=4)
    for name, want in ref.items():
        np.testing.assert_allclose(trained[f"net.{name}"], want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_evaluation_matches_a_direct_computation(mlp_path, small_npz):
    trainer = Trainer(portanet.convert(str(mlp_path)), epochs=1, lr=0.05, normalize=False)
    history = trainer.fit(small_npz)
    s = load_data(small_npz)
    ref = small_mlp_module(seed=0)
    trained = _weights(trainer.export())
    ref.load_state_dict({k: torch.from_numpy(trained[k]) for k in ref.state_dict()})
    x = torch.from_numpy((s.test.x.astype(np.float32) / 255.0)[:, None])
    with torch.no_grad():
        logits = ref[:-1](x)
    y = torch.from_numpy(s.test.y)
    assert history[0]["test_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert history[0]["test_accuracy"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))


# --------------------------------------------------------------------------------- resume
def test_resume_after_interruption_equals_uninterrupted(case_study_path, small_npz, tmp_path):
    """Dropout makes this depend on the saved random state, not just the weights."""
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=3)
    full = Trainer(portanet.convert(str(case_study_path)), cfg)
    full_hist = full.fit(small_npz, checkpoint_dir=tmp_path / "a")
    want = _weights(full.export())

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(event):
        if event.kind == "epoch" and event.epoch == 1:
            raise Interrupt

    first = Trainer(portanet.convert(str(case_study_path)), cfg)
    with pytest.raises(Interrupt):
        first.fit(small_npz, checkpoint_dir=tmp_path / "b", callback=stop_after_first_epoch)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["epoch-001.pt"]
    second = Trainer(portanet.convert(str(case_study_path)), cfg)
    hist = second.fit(small_npz, checkpoint_dir=tmp_path / "b", resume=True)
    got = _weights(second.export())
    assert second.resumed_from.endswith("epoch-001.pt")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in hist]
    assert strip == [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in full_hist]


def test_resume_refuses_a_different_configuration(mlp_path, small_npz, tmp_path):
    Trainer(portanet.convert(str(mlp_path)), epochs=1, batch_size=64).fit(small_npz, checkpoint_dir=tmp_path)
    t = Trainer(portanet.convert(str(mlp_path)), epochs=2, batch_size=32)
    with pytest.raises(InvalidInputError,
                       match="checkpoint was made with batch_size=64, this run has batch_size=32"):
        t.fit(small_npz, checkpoint_dir=tmp_path, resume=True)


# --------------------------------------------------------------------- freeze / schedules
def test_freeze_by_source_layer_and_by_name(case_study_path, small_npz):
    model = portanet.convert(str(case_study_path))
    before = _weights(model)
    # "conv*" matches the torch parameter names kept as IR names; node_linear_1 is the
    # ONNX node (the source layer of an .onnx source) of the last Dense layer
    trainer = Trainer(model, epochs=1, lr=0.05, freeze=["conv*", "node_linear_1"])
    trainer.fit(small_npz)
    after = _weights(trainer.export())
    frozen = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
              "fc2.weight", "fc2.bias"}
    assert set(trainer.summary()["parameters"]["frozen_tensors"]) == frozen
    for name in frozen:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    for name in ("fc1.weight", "fc1.bias"):
        assert np.abs(after[name] - before[name]).max() > 1e-4


def test_freeze_pattern_that_matches_nothing(mlp_path, small_npz):
    with pytest.raises(InvalidInputError, match="--freeze pattern.s. conv\\* match no parameter"):
        Trainer(portanet.convert(str(mlp_path)), freeze=["conv*"]).prepare(small_npz)


@pytest.mark.parametrize(
    "schedule,opts,ref",
    [("step", {"step_size": 2, "gamma": 0.5}, lambda e: 0.1 * 0.5 ** (e // 2)),
     ("exponential", {"gamma": 0.8}, lambda e: 0.1 * 0.8 ** e),
     ("cosine", {"min_lr": 0.01}, lambda e: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * e / 5)) / 2),
     ("constant", {}, lambda e: 0.1)],
)
def test_schedules_follow_their_closed_forms(mlp_path, tmp_path, schedule, opts, ref):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=rng.integers(0, 255, (32, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, 32),
             x_test=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 8))
    hist = Trainer(portanet.convert(str(mlp_path)), epochs=5, lr=0.1, batch_size=32, schedule=schedule,
                   **opts).fit(data)
    for e, row in enumerate(hist):
        assert row["lr"] == pytest.approx(ref(e), rel=1e-9), e


# ------------------------------------------------------------------ retrain a trained model
def test_trained_model_converts_and_trains_again(mlp_path, small_npz, tmp_path):
    first = Trainer(portanet.convert(str(mlp_path)), epochs=1, lr=0.05)
    acc1 = first.fit(small_npz)[-1]["test_accuracy"]
    portanet.save(first.export(), tmp_path / "once.onnx")
    again = portanet.convert(str(tmp_path / "once.onnx"))
    second = Trainer(again, epochs=1, lr=0.05)
    # before any step, the re-converted model evaluates exactly like the trained one
    assert second.prepare(small_npz).evaluate()["accuracy"] == pytest.approx(acc1)
    assert second.fit()[-1]["test_accuracy"] >= acc1 - 0.02
    portanet.save(second.export(), tmp_path / "twice.onnx")
    assert json.loads(portanet.load(tmp_path / "twice.onnx").metadata_props[TRAINING_KEY])["epochs"] == 1


# -------------------------------------------------------------------------------- devices
@pytest.mark.gpu
def test_cuda_training_matches_cpu(mlp_path, small_npz):
    runs = {}
    for device in ("cpu", "cuda"):
        t = Trainer(portanet.convert(str(mlp_path)), epochs=1, lr=0.05, seed=2, device=device)
        t.fit(small_npz)
        runs[device] = _weights(t.export())
    for name, want in runs["cpu"].items():
        # cuDNN/cuBLAS reduce in a different order than the CPU kernels
        np.testing.assert_allclose(runs["cuda"][name], want, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(mlp_path, small_npz):
    with pytest.raises(RuntimeBackendError, match="device 'cuda' requested but torch sees no CUDA"):
        Trainer(portanet.convert(str(mlp_path)), device="cuda").prepare(small_npz)
