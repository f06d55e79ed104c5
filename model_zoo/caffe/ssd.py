"""SSD detectors in Caffe's SSD-fork layout, generated as prototxt text.

* ``mobilenet_ssd_prototxt`` — MobileNet-v1 SSD (depthwise-separable backbone with
  BatchNorm + Scale + ReLU, extra feature layers, six heads, 21 VOC classes), the layout of
  the widely deployed Caffe MobileNet-SSD;
* ``face_ssd_prototxt`` — a ResNet-10-style face detector (two classes, a Normalize'd
  ``conv4_3`` head), the layout of OpenCV's res10 300x300 face detector.

Heads: ``<name>_mbox_loc`` / ``_mbox_conf`` convolutions, Permute (0, 2, 3, 1) + Flatten,
PriorBox on the feature map and the image, Concat, softmax over classes, DetectionOutput.
"""

from __future__ import annotations


def _layer(name: str, kind: str, bottoms: list[str], tops: list[str], body: str = "") -> str:
    bt = " ".join(f'bottom: "{b}"' for b in bottoms)
    tp = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "{name}" type: "{kind}" {bt} {tp} {body} }}'


class _Net:
    def __init__(self, name: str, size: int) -> None:
        self.lines = [f'name: "{name}"',
                      _layer("data", "Input", [], ["data"],
                             f"input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }}")]
        self.locs: list[str] = []
        self.confs: list[str] = []
        self.priors: list[str] = []

    def add(self, *args: object) -> None:
        self.lines.append(_layer(*args))  # type: ignore[arg-type]

    def conv(self, bottom: str, top: str, n: int, k: int, s: int = 1, p: int = 0, group: int = 1,
             bn: bool = True, relu: bool = True, bias: bool | None = None) -> str:
        g = f" group: {group}" if group > 1 else ""
        bias_term = (not bn) if bias is None else bias
        self.add(top, "Convolution", [bottom], [top],
                 f"convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p}{g} "
                 f"bias_term: {str(bias_term).lower()} }}")
        if bn:
            self.add(f"{top}/bn", "BatchNorm", [top], [top], "batch_norm_param { use_global_stats: true }")
            self.add(f"{top}/scale", "Scale", [top], [top], "scale_param { bias_term: true }")
        if relu:
            self.add(f"{top}/relu", "ReLU", [top], [top])
        return top

    def head(self, src: str, priors_per_cell: int, classes: int, prior: str) -> None:
        for kind, n, out in (("loc", 4, self.locs), ("conf", classes, self.confs)):
            top = f"{src}_mbox_{kind}"
            self.add(top, "Convolution", [src], [top],
                     f"convolution_param {{ num_output: {priors_per_cell * n} kernel_size: 3 pad: 1 }}")
            self.add(f"{top}_perm", "Permute", [top], [f"{top}_perm"],
                     "permute_param { order: 0 order: 2 order: 3 order: 1 }")
            self.add(f"{top}_flat", "Flatten", [f"{top}_perm"], [f"{top}_flat"], "flatten_param { axis: 1 }")
            out.append(f"{top}_flat")
        self.add(f"{src}_mbox_priorbox", "PriorBox", [src, "data"], [f"{src}_mbox_priorbox"],
                 f"prior_box_param {{ {prior} variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }}")
        self.priors.append(f"{src}_mbox_priorbox")

    def detection(self, classes: int, output: str) -> str:
        self.add("mbox_loc", "Concat", self.locs, ["mbox_loc"], "concat_param { axis: 1 }")
        self.add("mbox_conf", "Concat", self.confs, ["mbox_conf"], "concat_param { axis: 1 }")
        self.add("mbox_priorbox", "Concat", self.priors, ["mbox_priorbox"], "concat_param { axis: 2 }")
        self.add("mbox_conf_reshape", "Reshape", ["mbox_conf"], ["mbox_conf_reshape"],
                 f"reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }}")
        self.add("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], ["mbox_conf_softmax"],
                 "softmax_param { axis: 2 }")
        self.add("mbox_conf_flatten", "Flatten", ["mbox_conf_softmax"], ["mbox_conf_flatten"],
                 "flatten_param { axis: 1 }")
        self.add("detection_out", "DetectionOutput", ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
                 ["detection_out"], output)
        return "\n".join(self.lines) + "\n"


def mobilenet_ssd_prototxt(width: float = 0.5, size: int = 300, classes: int = 21) -> str:
    """MobileNet-v1 SSD (width multiplier ``width``) with the deployed net's heads and settings."""
    net = _Net("MobileNet-SSD", size)

    def ch(c: int) -> int:
        return max(8, int(c * width))

    x = net.conv("data", "conv0", ch(32), 3, 2, 1)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
            (512, 1), (512, 1), (1024, 2), (1024, 1)]
    c_in = ch(32)
    for i, (c, s) in enumerate(plan, 1):
        x = net.conv(x, f"conv{i}/dw", c_in, 3, s, 1, group=c_in)
        x = net.conv(x, f"conv{i}", ch(c), 1)
        c_in = ch(c)
    # extra feature layers
    x = "conv13"
    for i, (mid, out) in enumerate([(256, 512), (128, 256), (128, 256), (64, 128)], 14):
        net.conv(x, f"conv{i}_1", ch(mid), 1)
        x = net.conv(f"conv{i}_1", f"conv{i}_2", ch(out), 3, 2, 1)
    heads = [("conv11", 60, None, "aspect_ratio: 2"), ("conv13", 105, 150, "aspect_ratio: 2 aspect_ratio: 3"),
             ("conv14_2", 150, 195, "aspect_ratio: 2 aspect_ratio: 3"),
             ("conv15_2", 195, 240, "aspect_ratio: 2 aspect_ratio: 3"),
             ("conv16_2", 240, 285, "aspect_ratio: 2 aspect_ratio: 3"),
             ("conv17_2", 285, 300, "aspect_ratio: 2 aspect_ratio: 3")]
    for src, lo, hi, ratios in heads:
        per_cell = (3 if hi is None else 6)
        max_s = f" max_size: {hi}" if hi is not None else ""
        net.head(src, per_cell, classes,
                 f"min_size: {lo}{max_s} {ratios} flip: true clip: false offset: 0.5")
    return net.detection(classes, (
        f"detection_output_param {{ num_classes: {classes} share_location: true background_label_id: 0 "
        "nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 100 "
        "confidence_threshold: 0.1 }"
    ))


def face_ssd_prototxt(size: int = 300, width: int = 16) -> str:
    """A ResNet-10-style SSD face detector: two classes, a Normalize'd conv4_3 head, steps fixed."""
    net = _Net("res10_ssd", size)
    x = net.conv("data", "conv1_h", width * 2, 7, 2, 3)
    net.add("conv1_pool", "Pooling", [x], ["conv1_pool"], "pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
    x, c = "conv1_pool", width * 2
    for stage, (out, stride) in enumerate([(width * 2, 1), (width * 4, 2), (width * 8, 2), (width * 16, 2)], 1):
        tag = f"layer_{stage + 63}_1"
        a = net.conv(x, f"{tag}_conv1_h", out, 3, stride, 1)
        b = net.conv(a, f"{tag}_conv2_h", out, 3, 1, 1, relu=False)
        short = x if stride == 1 and c == out else net.conv(x, f"{tag}_conv_expand_h", out, 1, stride, relu=False)
        net.add(f"{tag}_sum", "Eltwise", [b, short], [f"{tag}_sum"])
        net.add(f"{tag}_relu", "ReLU", [f"{tag}_sum"], [f"{tag}_sum"])
        x, c = f"{tag}_sum", out
        if stage == 3:
            net.add("conv4_3_norm", "Normalize", [x], ["conv4_3_norm"],
                    'norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } }')
    fc7 = "layer_67_1_sum"
    net.conv(fc7, "conv6_1_h", width * 8, 1, bn=False, bias=True)
    net.conv("conv6_1_h", "conv6_2_h", width * 16, 3, 2, 1, bn=False, bias=True)
    net.conv("conv6_2_h", "conv7_1_h", width * 4, 1, bn=False, bias=True)
    net.conv("conv7_1_h", "conv7_2_h", width * 8, 3, 2, 1, bn=False, bias=True)
    net.conv("conv7_2_h", "conv8_1_h", width * 4, 1, bn=False, bias=True)
    net.conv("conv8_1_h", "conv8_2_h", width * 8, 3, 1, 1, bn=False, bias=True)
    heads = [("conv4_3_norm", 30, 60, 8, ""), (fc7, 60, 111, 16, "aspect_ratio: 2"),
             ("conv6_2_h", 111, 162, 32, "aspect_ratio: 2"), ("conv7_2_h", 162, 213, 64, "aspect_ratio: 2"),
             ("conv8_2_h", 213, 264, 100, "aspect_ratio: 2")]
    for src, lo, hi, step, ratios in heads:
        per_cell = 4 if ratios else 2
        net.head(src, per_cell, 2, f"min_size: {lo} max_size: {hi} {ratios} flip: true clip: false "
                                    f"step: {step} offset: 0.5")
    return net.detection(2, (
        "detection_output_param { num_classes: 2 share_location: true background_label_id: 0 "
        "nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200 "
        "confidence_threshold: 0.2 }"
    ))
