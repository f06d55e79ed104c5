"""Sequential MNIST, the Keras half of the recurrent training check: a Keras LSTM classifier
reading each embedded MNIST digit row by row, converted untrained and trained by
``portanet train`` (the CLI, in a subprocess), against the same model trained natively by
Keras with the same recipe and the same batch order, after the same (short) number of epochs.
README has the 10-epoch figures (``python -m model_zoo.keras.sequential_mnist``)."""

from __future__ import annotations

import pytest

pytest.importorskip("keras")
pytest.importorskip("torch")


def test_portanet_train_matches_keras_training_within_one_point() -> None:
    from model_zoo.keras.sequential_mnist import compare

    result = compare(epochs=3)
    native, ported = result["keras_accuracy"], result["portanet_accuracy"]
    # both actually learned (chance is 10%), and they agree within 1 point
    assert native > 0.7 and ported > 0.7, result
    assert abs(ported - native) <= 0.01, result
