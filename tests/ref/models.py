"""PyTorch reference models for qtune's tests: CIFAR ResNets (20/32/56, also a 1-channel
variant for 28x28 inputs) and torchvision's ResNet-18, with BatchNorm statistics made
non-trivial so that folding BatchNorm into Conv changes the weights."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """3x3 conv 16 -> BN -> ReLU, three stages of BasicBlocks (16/32/64 channels, stride 2
    at stages 2 and 3), average pooling over the final feature map, fc 64 -> classes."""

    def __init__(self, depth, in_channels=3, num_classes=10, input_size=32):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        # 32 -> 8 and 28 -> 7: the pooling window covers the whole last feature map.
        final = (input_size + 3) // 4
        self.avgpool = nn.AvgPool2d(final)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(cin, cout, n, stride):
        blocks = [BasicBlock(cin, cout, stride)]
        blocks += [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def randomize_batchnorm(model, generator):
    """Give every BatchNorm layer random affine parameters and running statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
    return model


def share_shortcut_bias(model):
    """Give each shortcut BatchNorm the same bias as its block's second BatchNorm. The
    exporter deduplicates equal initializers, so a training-preserving export then holds
    Identity nodes, as the exports of the pretrained models do."""
    for m in model.modules():
        if isinstance(m, BasicBlock) and m.downsample is not None:
            with torch.no_grad():
                m.downsample[1].bias.copy_(m.bn2.bias)


def build(name, seed=0):
    """Return (model in eval mode, input shape without batch) for a model name."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name in ("resnet20", "resnet32", "resnet56"):
        model = CifarResNet(int(name[6:]))
        shape = (3, 32, 32)
    elif name == "resnet20_1ch":
        model = CifarResNet(20, in_channels=1, input_size=28)
        shape = (1, 28, 28)
    elif name == "resnet18":
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        shape = (3, 64, 64)
    else:
        raise ValueError("unknown model %r" % name)
    randomize_batchnorm(model, g)
    if isinstance(model, CifarResNet):
        share_shortcut_bias(model)
    model.eval()
    return model, shape


def count_parameters(model):
    """Trainable parameters (conv/fc weights and biases, BatchNorm scale and shift)."""
    return sum(p.numel() for p in model.parameters())
