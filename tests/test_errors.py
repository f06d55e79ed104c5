from portanet.errors import (
    ConversionError,
    InvalidModelError,
    ParityError,
    PortanetError,
    RuntimeBackendError,
    UnsupportedOpError,
)


def test_hierarchy():
    assert issubclass(UnsupportedOpError, ConversionError)
    assert issubclass(UnsupportedOpError, NotImplementedError)
    assert issubclass(ConversionError, PortanetError)
    assert issubclass(InvalidModelError, ValueError) and issubclass(InvalidModelError, PortanetError)
    assert issubclass(RuntimeBackendError, PortanetError)
    assert ParityError.exit_code == 3 and PortanetError.exit_code == 2


def test_conversion_error_message_locates_layer():
    err = ConversionError("expected 4-D weights, received (64, 3)", framework="caffe", layer="conv1",
                          layer_type="Convolution", path="net.caffemodel")
    assert str(err) == "net.caffemodel: caffe layer 'conv1' (Convolution): expected 4-D weights, received (64, 3)"
    assert "\n" not in str(err)


def test_located_fills_only_missing_fields():
    err = ConversionError("bad", layer="a").located(framework="mxnet", layer="b", layer_type="Conv", path="m.json")
    assert str(err) == "m.json: mxnet layer 'a' (Conv): bad"


def test_unsupported_lists_every_type_with_counts():
    err = UnsupportedOpError({"PriorBox": ["p1", "p2"], "DetectionOutput": ["det"]}, framework="caffe", path="ssd.prototxt")
    msg = str(err)
    assert "3 unsupported layer(s) of 2 type(s)" in msg
    assert "PriorBox x2 (p1, p2)" in msg and "DetectionOutput x1 (det)" in msg
    assert msg.startswith("ssd.prototxt:")
