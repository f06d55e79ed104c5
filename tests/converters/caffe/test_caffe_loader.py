"""Loading nets whose files leave things implicit: a .caffemodel with no layers (a net with
nothing to learn) and data layers whose parameters fix the input shape."""

from __future__ import annotations

import numpy as np
import pytest

from portanet.converters.caffe import schema
from portanet.converters.registry import convert_paths
from portanet.errors import InvalidInputError
from portanet.parity.runners import caffe as runner
from portanet.runtime.session import Session

POOL_NET = (
    'name: "pool_only"\n'
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
    'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
    'layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }\n'
)


def _no_layer_caffemodel(path):
    net = schema.raw_messages()["NetParameter"](name="pool_only")
    path.write_bytes(net.SerializeToString())
    return path


def test_caffemodel_without_layers_is_accepted(tmp_path):
    proto = tmp_path / "pool.prototxt"
    proto.write_text(POOL_NET)
    weights = _no_layer_caffemodel(tmp_path / "pool.caffemodel")
    model = convert_paths([proto, weights])
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = Session(model).run({"data": x})["prob"]
    # the reference loads the same two files (real Caffe accepts them as well, where it is built)
    ref = runner.run_reference([proto, weights], {"data": x}, options={"output_names": ["prob"]})["prob"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


DATA_LAYERS = {
    "image_data_resize": ('layer { name: "d" type: "ImageData" top: "data" top: "label" '
                          'image_data_param { source: "list.txt" batch_size: 4 new_height: 20 new_width: 24 } }',
                          [3, 20, 24]),
    "image_data_crop_gray": ('layer { name: "d" type: "ImageData" top: "data" top: "label" transform_param '
                             '{ crop_size: 16 } image_data_param { source: "l.txt" new_height: 20 new_width: 20 '
                             "is_color: false } }", [1, 16, 16]),
    "data_crop": ('layer { name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 18 } '
                  'data_param { source: "db" batch_size: 8 } }', [3, 18, 18]),
    "window_data": ('layer { name: "d" type: "WindowData" top: "data" top: "label" '
                    'window_data_param { source: "w.txt" batch_size: 2 crop_size: 22 } }', [3, 22, 22]),
}


@pytest.mark.parametrize("case", list(DATA_LAYERS))
def test_data_layers_fix_the_input_shape(tmp_path, case):
    """No --input-shape needed; a Data layer's channels come from the first convolution."""
    data, chw = DATA_LAYERS[case]
    text = (f'name: "t"\n{data}\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            "convolution_param { num_output: 4 kernel_size: 3 } }\n"
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }\n')
    from model_zoo.caffe.writer import write_caffemodel

    proto = tmp_path / "t.prototxt"
    proto.write_text(text)
    weights = write_caffemodel(text, tmp_path / "t.caffemodel", input_shapes={"data": [1, *chw]})
    model = convert_paths([proto, weights])
    dims = [d if isinstance(d, int) else str(d) for d in model.graph.inputs[0].shape]
    assert dims == ["N", *chw]
    x = np.random.default_rng(1).standard_normal((2, *chw)).astype(np.float32)
    got = Session(model).run({"data": x})["conv"]
    ref = runner.run_reference([proto, weights], {"data": x}, options={"output_names": ["conv"]})["conv"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_hdf5_data_still_asks_for_the_shape(tmp_path):
    proto = tmp_path / "h.prototxt"
    proto.write_text('layer { name: "d" type: "HDF5Data" top: "data" hdf5_data_param { source: "h.txt" batch_size: 4 } }\n'
                     'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(InvalidInputError, match="--input-shape"):
        convert_paths([proto])
