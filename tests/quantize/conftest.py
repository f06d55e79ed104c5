"""Fixtures of the quantization tests: the case-study CNN trained natively in PyTorch (300 steps on
the embedded digits, ~5 s), its conversion, and a twin made int8-sensitive by an activation outlier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

#: native training steps: enough for ~94% test accuracy, short enough for the suite
STEPS = 300
#: the outlier factor of the sensitive twin (see ``outlier_cnn``)
OUTLIER = 1000.0


@dataclass
class Trained:
    module: Any
    onnx: Path
    #: PyTorch eager (the source framework) test accuracy
    torch_accuracy: float
    digits: Any


@pytest.fixture(scope="session")
def digits() -> Any:
    from model_zoo import case_study_nets as nets

    return nets.load_digits(None)


def _convert(module: Any, digits: Any, name: str) -> Path:
    """portanet's conversion of ``module``, cached beside its weights (same key)."""
    import portanet
    from model_zoo.common import cache_dir, cached

    def write(tmp: Path) -> None:
        portanet.save(portanet.convert(module, example_inputs=(torch.from_numpy(digits.x_test[:1]),)), tmp)

    return cached(cache_dir("quantize") / f"{name}-{STEPS}steps-{_cache_key()}.onnx", write)


def _cache_key() -> str:
    """Hash of what the trained weights depend on: the network, the training loop, the step count."""
    import hashlib

    from model_zoo import case_study_nets
    from model_zoo.pytorch import models

    h = hashlib.sha256(f"steps={STEPS}".encode())
    for mod in (models, case_study_nets):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def trained_cnn(digits: Any) -> Trained:
    from model_zoo import case_study_nets as nets
    from model_zoo.common import cache_dir, cached
    from model_zoo.pytorch.models import CaseStudyCNN

    torch.manual_seed(0)
    module = CaseStudyCNN()

    def train(tmp: Path) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a shared machine: one thread is as fast and repeatable
        try:
            nets.train_pytorch(module, digits, nets.TrainSettings(epochs=1, max_batches=STEPS))
        finally:
            torch.set_num_threads(threads)
        torch.save(module.state_dict(), tmp)

    # the natively trained weights are cached, keyed by the builder and trainer sources
    weights = cached(cache_dir("quantize") / f"case_study_cnn-{STEPS}steps-{_cache_key()}.pt", train)
    module.load_state_dict(torch.load(weights, weights_only=True))
    module.eval()
    acc = nets.accuracy(nets.predict_pytorch(module, digits.x_test), digits.y_test)
    return Trained(module, _convert(module, digits, "case_study_cnn"), acc, digits)


@pytest.fixture(scope="session")
def outlier_cnn(trained_cnn: Trained) -> Trained:
    """The trained CNN with channel 3 of the first convolution scaled up by ``OUTLIER`` and the
    second convolution's weights reading that channel scaled down by the same factor.

    ReLU and max pooling commute with a positive scale, so the float network computes the same
    function (checked below against PyTorch), but the activation between the two convolutions
    now has one channel ``OUTLIER`` times larger than the rest: with one int8 scale for the whole
    tensor the other 15 channels are rounded to a few levels -- the range imbalance that
    cross-layer equalisation exists to fix. Naive int8 loses far more than half a point.
    """
    import copy

    module = copy.deepcopy(trained_cnn.module)
    with torch.no_grad():
        module.features[0].weight[3] *= OUTLIER
        module.features[0].bias[3] *= OUTLIER
        module.features[3].weight[:, 3] /= OUTLIER
    d = trained_cnn.digits
    with torch.no_grad():
        a = module(torch.from_numpy(d.x_test[:256])).numpy()
        b = trained_cnn.module(torch.from_numpy(d.x_test[:256])).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # the same function in float
    from model_zoo import case_study_nets as nets

    acc = nets.accuracy(nets.predict_pytorch(module, d.x_test), d.y_test)
    return Trained(module, _convert(module, d, f"outlier{OUTLIER:g}_cnn"), acc, d)

