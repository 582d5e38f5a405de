"""Network registry: ConvNet, AlexNet, VGG-11 and ResNet-18 in DM's 32x32 variants (SPEC §2, §7).

Every net has ``embed(x)`` (the feature vector distribution matching uses) and
``forward(x) = classifier(embed(x))``. Instance norm is ``GroupNorm(C, C, affine=True)``
as in the DM code; ``*_bn`` names use batch norm.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .registry import Registry

NETS: Registry[Callable[..., nn.Module]] = Registry("net")


def register_net(name: str):
    """Register a network factory under ``name`` (a decorator), usable everywhere a net is
    named (``options.net``, ``evaluate --net``, ``teacher --net``).

    The contract: ``factory(channels, num_classes, image_size, **options)`` returns an
    ``nn.Module`` with

    - ``embed(x)``: ``N x C x H x W`` -> ``N x feature_dim`` (the features distribution
      matching compares; they must depend on the input through differentiable ops);
    - ``feature_dim``: an int attribute;
    - ``classifier``: a module mapping ``N x feature_dim`` to ``N x num_classes`` logits;
    - ``forward(x) == classifier(embed(x))``.

    Weights are initialised by the global RNG at construction (:func:`init_net` seeds it).
    Per-sample normalisation (or none) keeps the matching's one-forward path exact; batch
    norm is detected and handled.
    """
    return NETS.register(name)


def list_nets() -> list[str]:
    return NETS.names()


def create_net(
    name: str, channels: int, num_classes: int, image_size: int = 32, **kwargs
) -> nn.Module:
    """Build a registered net (randomly initialised by the global or current RNG state).

    Use :func:`init_net` to initialise from an explicit seed.
    """
    factory = NETS.get(name)
    try:
        net = factory(channels=channels, num_classes=num_classes, image_size=image_size, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for net {name!r}: {e}") from None
    missing = [a for a in ("embed", "feature_dim", "classifier") if not hasattr(net, a)]
    if missing:
        raise ConfigError(f"net {name!r} lacks {', '.join(missing)}: see ltdistill.register_net for the contract")
    return net


def init_net(name: str, channels: int, num_classes: int, image_size: int, seed: int, **kwargs) -> nn.Module:
    """Build a net whose initial weights come only from ``seed`` (global RNG untouched).

    Only the CPU generator is seeded (and restored): a net is built on the CPU, and
    ``torch.manual_seed`` would also re-seed every CUDA generator behind the caller's back.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return create_net(name, channels, num_classes, image_size, **kwargs)


_DEVICE_RESETTABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.GroupNorm, nn.LayerNorm,
                      nn.modules.batchnorm._NormBase)


def _reset_with(m: nn.Module, g: torch.Generator) -> None:
    """PyTorch's default initialisation of ``m`` (kaiming-uniform with a = sqrt(5) for
    convolutions and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and
    bias; ones and zeros for norms), drawn from ``g`` where the parameters live."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        bound = 1.0 / math.sqrt(max(m.weight[0].numel(), 1))
        m.weight.uniform_(-bound, bound, generator=g)
        if m.bias is not None:
            m.bias.uniform_(-bound, bound, generator=g)
        return
    if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
        m.reset_running_stats()
    if getattr(m, "weight", None) is not None:
        m.weight.fill_(1.0)
    if getattr(m, "bias", None) is not None:
        m.bias.zero_()


class Reinit:
    """Re-initialise a net in place, as :func:`init_net` with another seed would build it,
    without constructing a module or running a dummy forward.

    Two paths, one distribution (PyTorch's default initialisation):

    - **host** (the default for a net on the CPU): the draws happen on a contiguous CPU
      template (each module's ``reset_parameters`` in module order, which is
      construction order), so the parameters are bit-identical to ``init_net(..., seed)``'s
      on every device and whatever the net's memory format; they reach the net as one copy
      per tensor.
    - **device** (the default for a net on a GPU): every parameter is drawn in place from a
      generator on the net's device seeded with ``seed``: no host work, no copy, and the
      global RNGs are never touched. Same seed and device give the same weights. Used when
      every module with parameters is a known layer (convolution, linear, the norms);
      otherwise the host path.

    Buffers such as batch norm's running statistics are reset to their defaults
    (``init_net``'s dummy forward leaves them slightly moved; a net in training mode never
    reads them).
    """

    def __init__(self, net: nn.Module, on_device: bool | None = None) -> None:
        self.net = net
        self.template = copy.deepcopy(net).cpu()
        self.resettable = [m for m in self.template.modules() if hasattr(m, "reset_parameters")]
        bare = [type(m).__name__ for m in self.template.modules()
                if not hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]
        if bare:
            raise ConfigError(f"cannot re-initialise {', '.join(bare)} in place: no reset_parameters()")
        self.source = self.template.state_dict()
        params = list(net.parameters())
        device = params[0].device if params else torch.device("cpu")
        known = all(isinstance(m, _DEVICE_RESETTABLE) for m in net.modules()
                    if any(True for _ in m.parameters(recurse=False)))
        self.on_device = (device.type != "cpu" if on_device is None else on_device) and known
        self.live = [m for m in net.modules() if isinstance(m, _DEVICE_RESETTABLE)]
        self.g = torch.Generator(device=device) if self.on_device else None

    def __call__(self, seed: int) -> nn.Module:
        if self.on_device:
            self.g.manual_seed(seed)
            with torch.no_grad():
                for m in self.live:
                    _reset_with(m, self.g)
            return self.net
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.default_generator.manual_seed(seed)
            for m in self.resettable:
                m.reset_parameters()
            dst = self.net.state_dict()
            for k, src in self.source.items():
                dst[k].copy_(src, non_blocking=True)
        return self.net


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` normalises over the batch (so per-sample tricks change its output)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choose instancenorm, batchnorm or none")


class _Net(nn.Module):
    """``features`` then a linear ``classifier``; ``embed`` is the flattened feature map."""

    features: nn.Module
    classifier: nn.Module
    feature_dim: int

    def _head(self, channels: int, image_size: int, num_classes: int) -> None:
        with torch.no_grad():
            self.feature_dim = self.embed(torch.zeros(1, channels, image_size, image_size)).shape[1]
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNet(_Net):
    """DM's ConvNet: depth x [conv3x3 -> norm -> ReLU -> avgpool2], then a linear layer.

    ``depth=None`` follows the image size: pool until the map is 4x4 or smaller
    (3 for 32 px, 4 for 64 px, 1 for 8 px).
    """

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, width: int = 128,
                 depth: int | None = None, norm: str = "instancenorm") -> None:
        super().__init__()
        if depth is None:
            depth = max(1, int(math.ceil(math.log2(max(image_size, 1) / 4))))
        if image_size // (2 ** depth) < 1:
            raise ConfigError(f"ConvNet depth {depth} is too deep for {image_size}px images")
        layers: list[nn.Module] = []
        c, s = channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2, 2)]
            c, s = width, s // 2
        self.features = nn.Sequential(*layers)
        self._head(channels, image_size, num_classes)


class AlexNet(_Net):
    """DM's 32x32 AlexNet (no norm by default)."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, norm: str = "none") -> None:
        super().__init__()
        if image_size < 32:
            raise ConfigError(f"alexnet needs images of at least 32px, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=4 if channels == 1 else 2), _norm(norm, 128),
            nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2), _norm(norm, 192), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1), _norm(norm, 256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, 3, padding=1), _norm(norm, 192), nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, 3, padding=1), _norm(norm, 192), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self._head(channels, image_size, num_classes)


class VGG11(_Net):
    """DM's VGG-11: five conv stages with max pooling, then a linear layer on 512 features."""

    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, norm: str = "instancenorm") -> None:
        super().__init__()
        if image_size < 32:
            raise ConfigError(f"vgg11 needs images of at least 32px, got {image_size}")
        layers: list[nn.Module] = []
        c = channels
        for i, v in enumerate(self.CFG):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                pad = 3 if (channels == 1 and i == 0) else 1
                layers += [nn.Conv2d(c, v, 3, padding=pad), _norm(norm, v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self._head(channels, image_size, num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(_Net):
    """DM's CIFAR ResNet-18: 3x3 stem, no max-pool, [2, 2, 2, 2] basic blocks, global average pool."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, norm: str = "instancenorm") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), _norm(norm, 64), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            for j in range(2):
                blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self._head(channels, image_size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _variant(cls, norm: str):
    def make(channels: int, num_classes: int, image_size: int = 32, **kw):
        kw.setdefault("norm", norm)
        return cls(channels, num_classes, image_size, **kw)

    make.__doc__ = f"{cls.__name__} with norm={norm!r}."
    return make


NETS.add("convnet", _variant(ConvNet, "instancenorm"))
NETS.add("convnet_bn", _variant(ConvNet, "batchnorm"))
NETS.add("convnet_nonorm", _variant(ConvNet, "none"))
NETS.add("alexnet", _variant(AlexNet, "none"))
NETS.add("alexnet_bn", _variant(AlexNet, "batchnorm"))
NETS.add("vgg11", _variant(VGG11, "instancenorm"))
NETS.add("vgg11_bn", _variant(VGG11, "batchnorm"))
NETS.add("resnet18", _variant(ResNet18, "instancenorm"))
NETS.add("resnet18_bn", _variant(ResNet18, "batchnorm"))
