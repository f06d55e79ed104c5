"""Caffe conversions written to ONNX run right in other consumers: average pooling with
padding and LRN WITHIN_CHANNEL (both divide by windows that count the zero padding) read
by OpenCV's ONNX importer, and batch-independent lowerings (Scale, Reshape, Flatten) at
batch 3. The reference is OpenCV's Caffe importer on the prototxt itself (an independent
Caffe implementation), at the batch the net declares."""

from __future__ import annotations

import numpy as np
import pytest

from portanet.ir.io import save_onnx
from portanet.runtime import Session

LAYERS = {
    "ave_pool_pad": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                    'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }',
    "lrn_within": 'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                  'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }',
    "scale_axis1": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                   'convolution_param { num_output: 4 kernel_size: 1 } }\n'
                   'layer { name: "s" type: "Scale" bottom: "c" top: "s" scale_param { axis: 1 bias_term: true } }\n'
                   'layer { name: "f" type: "Flatten" bottom: "s" top: "f" }\n'
                   'layer { name: "r" type: "Reshape" bottom: "f" top: "r" reshape_param { shape { dim: 0 dim: 4 dim: -1 } } }',
}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_opencv_onnx_matches_opencv_caffe(caffe, case, tmp_path):
    text = caffe.net_text(LAYERS[case], (3, 3, 9, 9))
    proto, weights = caffe.write(text)
    top = LAYERS[case].rsplit('top: "', 1)[1].split('"')[0]
    x = np.random.default_rng(0).standard_normal((3, 3, 9, 9)).astype(np.float32)
    ref = caffe.opencv(proto, weights, {"data": x}, [top])[top]
    model, _ = caffe.convert_run([proto, weights], {"data": x})
    path = save_onnx(model, tmp_path / f"{case}.onnx", opset=13)
    for backend in ("ort", "opencv"):
        got = Session(path, backend=backend).run({"data": x})
        caffe.close(next(iter(got.values())).reshape(ref.shape), ref)


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_lowerings_are_batch_independent(caffe, case):
    """The net declares batch 3; the converted file has a symbolic batch and runs at 1 and 5
    with each sample's result equal to the batch-3 run's."""
    proto, weights = caffe.write(caffe.net_text(LAYERS[case], (3, 3, 9, 9)))
    model, _ = caffe.convert_run([proto, weights], {"data": np.zeros((3, 3, 9, 9), np.float32)})
    s = Session(model)
    x = np.random.default_rng(1).standard_normal((5, 3, 9, 9)).astype(np.float32)
    five = next(iter(s.run({"data": x}).values()))
    one = next(iter(s.run({"data": x[2:3]}).values()))
    caffe.close(one, five[2:3])
