"""torchvision's ResNet and DeepLabv3 architectures written with torch alone.

Same modules, same state_dict names, same forward computation as
`torchvision.models.resnet50` / `resnet101` and
`torchvision.models.segmentation.deeplabv3_resnet50` / `_resnet101` (with the
auxiliary FCN head): ResNet v1.5 (stride on the 3x3 conv),
`replace_stride_with_dilation=[False, True, True]` for DeepLabv3 (the first
unit of a dilated stage keeps the previous dilation), ASPP rates 12/24/36 with
image pooling, torchvision's extra 3x3 conv + BN + ReLU before the classifier,
bilinear upsampling with align_corners=False.

The import tests use torchvision itself where it is installed and this module
where only torch is (torchvision's wheels come with their own torch build);
`test_torch_replica_equals_torchvision` checks the two against each other.
"""

import torch
import torch.nn.functional as F
from torch import nn

UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet with Bottleneck units; `with_fc=False` drops
    avgpool/fc and returns {"out": layer4, "aux": layer3} as DeepLabv3's
    IntermediateLayerGetter does."""

    def __init__(self, depth, num_classes=1000, replace_stride_with_dilation=(False, False, False),
                 with_fc=True):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        units = UNITS[depth]
        self.layer1 = self._make_layer(64, units[0])
        self.layer2 = self._make_layer(128, units[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, units[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, units[3], 2, replace_stride_with_dilation[2])
        self.with_fc = with_fc
        if with_fc:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(2048, num_classes)

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c4 = self.layer3(self.layer2(self.layer1(x)))
        c5 = self.layer4(c4)
        if not self.with_fc:
            return {"out": c5, "aux": c4}
        return self.fc(torch.flatten(self.avgpool(c5), 1))


def conv_bn_relu(in_channels, out_channels, kernel_size=1, dilation=1):
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, out_channels))

    def forward(self, x):
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels, rates=(12, 24, 36), out_channels=256):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Sequential(*conv_bn_relu(in_channels, out_channels))]
            + [nn.Sequential(*conv_bn_relu(in_channels, out_channels, 3, r)) for r in rates]
            + [ASPPPooling(in_channels, out_channels)])
        self.project = nn.Sequential(*conv_bn_relu(len(self.convs) * out_channels, out_channels),
                                     nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """torchvision's deeplabv3_resnet{50,101}(num_classes, aux_loss=True)."""

    def __init__(self, depth, num_classes=21):
        super().__init__()
        self.backbone = ResNet(depth, replace_stride_with_dilation=(False, True, True),
                               with_fc=False)
        self.classifier = nn.Sequential(ASPP(2048), *conv_bn_relu(256, 256, 3),
                                        nn.Conv2d(256, num_classes, 1))
        self.aux_classifier = nn.Sequential(*conv_bn_relu(1024, 256, 3), nn.Dropout(0.1),
                                            nn.Conv2d(256, num_classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        features = self.backbone(x)
        return {
            name: F.interpolate(head(features[key]), size=size, mode="bilinear",
                                align_corners=False)
            for name, key, head in (("out", "out", self.classifier),
                                    ("aux", "aux", self.aux_classifier))}


def build(arch: str) -> nn.Module:
    """The replica of a torchvision constructor by its name."""
    kind, depth = arch.rsplit("resnet", 1)
    if kind == "deeplabv3_":
        return DeepLabV3(int(depth))
    if kind == "":
        return ResNet(int(depth))
    raise ValueError(f"No replica for {arch!r}.")
