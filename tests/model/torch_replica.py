"""torchvision's ResNet, MobileNetV3-Large and DeepLabv3 architectures written with torch alone.

Same modules, same state_dict names, same forward computation as
`torchvision.models.resnet50` / `resnet101` and
`torchvision.models.segmentation.deeplabv3_resnet50` / `_resnet101` (with the
auxiliary FCN head): ResNet v1.5 (stride on the 3x3 conv),
`replace_stride_with_dilation=[False, True, True]` for DeepLabv3 (the first
unit of a dilated stage keeps the previous dilation), ASPP rates 12/24/36 with
image pooling, torchvision's extra 3x3 conv + BN + ReLU before the classifier,
bilinear upsampling with align_corners=False. Likewise `mobilenet_v3_large` and
`deeplabv3_mobilenet_v3_large` (dilated last stage, ASPP 12/24/36 on features[16],
the auxiliary head on features[4]).

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


def make_divisible(value, divisor=8):
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_act(in_channels, out_channels, kernel_size=3, stride=1, groups=1, dilation=1,
                  activation=nn.Hardswish):
    """torchvision.ops.Conv2dNormActivation with MobileNetV3's BatchNorm (eps 1e-3)."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                        (kernel_size - 1) // 2 * dilation, dilation=dilation, groups=groups,
                        bias=False),
              nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.01)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with MobileNetV3's hard-sigmoid gate."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class InvertedResidual(nn.Module):
    def __init__(self, in_channels, kernel, expanded, out_channels, se, hard_swish, stride,
                 dilation):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        activation = nn.Hardswish if hard_swish else nn.ReLU
        layers = []
        if expanded != in_channels:
            layers.append(conv_norm_act(in_channels, expanded, 1, activation=activation))
        layers.append(conv_norm_act(expanded, expanded, kernel, 1 if dilation > 1 else stride,
                                    groups=expanded, dilation=dilation, activation=activation))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(conv_norm_act(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


# torchvision's inverted_residual_setting for mobilenet_v3_large: input, kernel,
# expanded, output, SE, hard-swish, stride, and whether dilated=True dilates it.
MOBILENET_V3_LARGE = (
    (16, 3, 16, 16, False, False, 1, False), (16, 3, 64, 24, False, False, 2, False),
    (24, 3, 72, 24, False, False, 1, False), (24, 5, 72, 40, True, False, 2, False),
    (40, 5, 120, 40, True, False, 1, False), (40, 5, 120, 40, True, False, 1, False),
    (40, 3, 240, 80, False, True, 2, False), (80, 3, 200, 80, False, True, 1, False),
    (80, 3, 184, 80, False, True, 1, False), (80, 3, 184, 80, False, True, 1, False),
    (80, 3, 480, 112, True, True, 1, False), (112, 3, 672, 112, True, True, 1, False),
    (112, 5, 672, 160, True, True, 2, True), (160, 5, 960, 160, True, True, 1, True),
    (160, 5, 960, 160, True, True, 1, True),
)


def mobilenet_v3_features(dilated=False):
    blocks = [InvertedResidual(*row[:7], 2 if dilated and row[7] else 1)
              for row in MOBILENET_V3_LARGE]
    return [conv_norm_act(3, 16, 3, 2), *blocks, conv_norm_act(160, 960, 1)]


class MobileNetV3(nn.Module):
    """torchvision.models.mobilenet_v3_large (width 1.0)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(*mobilenet_v3_features())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DeepLabV3MobileNetV3(nn.Module):
    """torchvision's deeplabv3_mobilenet_v3_large(num_classes, aux_loss=True): the
    dilated features as IntermediateLayerGetter keeps them ("backbone.0".."backbone.16"),
    "out" from features[16], "aux" from features[4]."""

    def __init__(self, num_classes=21):
        super().__init__()
        self.backbone = nn.ModuleDict(
            {str(i): m for i, m in enumerate(mobilenet_v3_features(dilated=True))})
        self.classifier = nn.Sequential(ASPP(960), *conv_bn_relu(256, 256, 3),
                                        nn.Conv2d(256, num_classes, 1))
        self.aux_classifier = nn.Sequential(*conv_bn_relu(40, 10, 3), nn.Dropout(0.1),
                                            nn.Conv2d(10, num_classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        for name, module in self.backbone.items():
            x = module(x)
            if name == "4":
                aux = x
        return {name: F.interpolate(head(features), size=size, mode="bilinear",
                                    align_corners=False)
                for name, head, features in (("out", self.classifier, x),
                                             ("aux", self.aux_classifier, aux))}


def build(arch: str) -> nn.Module:
    """The replica of a torchvision constructor by its name."""
    if arch == "mobilenet_v3_large":
        return MobileNetV3()
    if arch == "deeplabv3_mobilenet_v3_large":
        return DeepLabV3MobileNetV3()
    kind, depth = arch.rsplit("resnet", 1)
    if kind == "deeplabv3_":
        return DeepLabV3(int(depth))
    if kind == "":
        return ResNet(int(depth))
    raise ValueError(f"No replica for {arch!r}.")
