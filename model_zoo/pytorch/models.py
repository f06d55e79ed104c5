"""Reference PyTorch networks: the case-study CNN, LeNet-5, ResNet-18, MobileNetV2, a small U-Net."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model_zoo.common import cache_dir, cached


class CaseStudyCNN(nn.Module):
    """The case-study CNN of the paper, for 1x28x28 digits.

    Conv 16 k3 ReLU -> MaxPool 2 -> Conv 32 k4 ReLU -> AvgPool 2 -> Dropout 0.3 -> Conv 64 k5
    ReLU -> Flatten -> Dense 32 tanh -> Dropout 0.2 -> Dense 10 -> Softmax.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3),  # (N, 1, 28, 28) -> (N, 16, 26, 26)
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> (N, 16, 13, 13)
            nn.Conv2d(16, 32, 4),  # -> (N, 32, 10, 10)
            nn.ReLU(),
            nn.AvgPool2d(2),  # -> (N, 32, 5, 5)
            nn.Dropout(0.3),
            nn.Conv2d(32, 64, 5),  # -> (N, 64, 1, 1)
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # -> (N, 64)
            nn.Linear(64, 32),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Linear(32, 10),
            nn.Softmax(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 1x32x32 inputs, tanh activations and average pooling."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)  # (N, 1, 32, 32) -> (N, 6, 28, 28)
        self.pool1 = nn.AvgPool2d(2)  # -> (N, 6, 14, 14)
        self.conv2 = nn.Conv2d(6, 16, 5)  # -> (N, 16, 10, 10)
        self.pool2 = nn.AvgPool2d(2)  # -> (N, 16, 5, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act(self.conv1(x)))
        x = self.pool2(self.act(self.conv2(x)))
        x = torch.flatten(x, 1)  # (N, 16, 5, 5) -> (N, 400)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm and an identity/projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResNet(nn.Module):
    """The ImageNet ResNet layout (He et al. 2016): 7x7 stem, max-pool, four stages ``layer1..4``
    of ``block``s (widths 64/128/256/512, the first block of stages 2-4 strided), global pool, fc."""

    def __init__(self, block: type[nn.Module], blocks: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for b in range(n):
                layers.append(block(cin, width, (1 if i == 0 else 2) if b == 0 else 1))
                cin = width * getattr(block, "expansion", 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, C, 1, 1) -> (N, C)


class ResNet18(_ResNet):
    """ResNet-18: two basic blocks per stage; any input of at least 32x32."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), num_classes)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 reduce, 3x3 (with the stride), 1x1 expand x4, shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(_ResNet):
    """ResNet-50: 3, 4, 6, 3 bottleneck blocks; 25.6 M parameters."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3), num_classes)


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(cin, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0, the ImageNet layout."""

    #: (expansion t, channels c, repeats n, first stride s) per stage, from the paper's Table 2
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # (N, 1280, 1, 1) -> (N, 1280)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )


class SmallUNet(nn.Module):
    """A three-level U-Net: one up path with ConvTranspose, one with Upsample; skips by Concat.

    Input (N, 3, H, W) with H, W divisible by 4 -> (N, classes, H, W).
    """

    def __init__(self, cin: int = 3, classes: int = 2, base: int = 8) -> None:
        super().__init__()
        self.enc1 = DoubleConv(cin, base)
        self.enc2 = DoubleConv(base, base * 2)
        self.bottom = DoubleConv(base * 2, base * 4)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(base * 4, base * 2, 2, stride=2)  # (N, 4b, H/4, W/4) -> (N, 2b, H/2, W/2)
        self.dec2 = DoubleConv(base * 4, base * 2)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = DoubleConv(base * 2 + base, base)
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # (N, b, H, W)
        e2 = self.enc2(self.pool(e1))  # (N, 2b, H/2, W/2)
        b = self.bottom(self.pool(e2))  # (N, 4b, H/4, W/4)
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))  # (N, 2b, H/2, W/2)
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))  # (N, b, H, W)
        return self.head(d1)


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (variance > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return module


@dataclass(frozen=True)
class ZooEntry:
    factory: Callable[[], nn.Module]
    #: input shape without the batch dimension
    input_shape: tuple[int, ...]


ZOO: dict[str, ZooEntry] = {
    "case_study_cnn": ZooEntry(CaseStudyCNN, (1, 28, 28)),
    "lenet5": ZooEntry(LeNet5, (1, 32, 32)),
    "resnet18": ZooEntry(ResNet18, (3, 64, 64)),
    "mobilenetv2": ZooEntry(MobileNetV2, (3, 64, 64)),
    "small_unet": ZooEntry(SmallUNet, (3, 32, 32)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """A zoo model with seeded random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ZOO[name].factory()
    return randomize_batchnorm(model, seed).eval()


def save_pt2(name: str, seed: int = 0, batch: int = 2) -> Path:
    """``torch.export.save`` of a zoo model with a dynamic batch dimension, cached on disk."""
    def write(tmp: Path) -> None:
        model = build(name, seed)
        x = torch.randn(batch, *ZOO[name].input_shape)
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("N")},))
        torch.export.save(ep, tmp)

    return cached(cache_dir("pytorch") / f"{name}-s{seed}.pt2", write)
