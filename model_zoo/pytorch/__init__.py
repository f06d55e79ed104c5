"""PyTorch reference models written in this project (torchvision is not available here).

Every builder returns an ``nn.Module`` in eval mode with seeded random weights and random
BatchNorm statistics, so that BatchNorm is not an identity and parity tests exercise it.
"""

from model_zoo.pytorch.models import (
    ZOO,
    CaseStudyCNN,
    LeNet5,
    MobileNetV2,
    ResNet18,
    ResNet50,
    SmallUNet,
    build,
    randomize_batchnorm,
    save_pt2,
)

__all__ = [
    "ZOO",
    "CaseStudyCNN",
    "LeNet5",
    "MobileNetV2",
    "ResNet18",
    "ResNet50",
    "SmallUNet",
    "build",
    "randomize_batchnorm",
    "save_pt2",
]
