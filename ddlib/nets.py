"""The ConvNet family of the dataset-distillation literature, with composable names.

ConvNet (Gidaris & Komodakis 2018, as used by DC/DSA/DM/MTT; methods.md §1.1): `depth` blocks of
Conv3x3(width) -> norm -> act -> pool, then one Linear head. "Instance norm" is GroupNorm(C, C) with affine
parameters (per-sample, per-channel). A one-channel 28x28 input gets padding 3 in the first conv so the maps
are 32x32, exactly as the reference code does; feature bookkeeping therefore treats 28 as 32.

Names compose: `convnet` (depth 3, width 128, instance norm, ReLU, average pooling) plus optional tokens
`d<N>` (depth), `w<N>` (width), a norm (`in`, `bn`, `ln`, `gn`, `nn`), an activation (`relu`, `sigmoid`,
`leaky`, `swish`) and a pooling (`ap`, `mp`, `np`): e.g. `convnet_d4`, `convnet_w64_bn`, `convnet_mp_nn`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

NORMS = ("in", "bn", "ln", "gn", "nn")
ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leaky": lambda: nn.LeakyReLU(0.01), "swish": nn.SiLU}
POOLS = ("ap", "mp", "np")
FAMILIES = ("convnet",)


def _norm(kind: str, channels: int, size: int) -> nn.Module:
    if kind == "in":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return nn.LayerNorm([channels, size, size], elementwise_affine=True)
    if kind == "gn":
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


class _Pool2(torch.autograd.Function):
    """2x2 average pooling, stride 2, as two strided adds (rows, then columns): ~5x faster than CPU
    F.avg_pool2d's NCHW kernel (bench/bench_units.py). Its adjoint is `_Spread2`, and each is the other's
    backward, so it is differentiable to any order (DC's second-order matching goes through it), and it works
    under torch.func transforms (grad, vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        n, c, h, w = x.shape
        rows = x.reshape(n, c, h // 2, 2 * w)
        rows = rows[..., :w] + rows[..., w:]                   # x[2i] + x[2i+1], (n, c, h/2, w)
        return (rows[..., 0::2] + rows[..., 1::2]) * 0.25

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass   # linear: nothing to keep

    @staticmethod
    def backward(ctx, g):
        return _Spread2.apply(g)


class _Spread2(torch.autograd.Function):
    """The adjoint of `_Pool2`: each value / 4 copied to its 2x2 block."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g):
        n, c, h, w = g.shape
        g = (g * 0.25).unsqueeze(-1).expand(n, c, h, w, 2).reshape(n, c, h, 1, 2 * w)
        return g.expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return _Pool2.apply(g)


class AvgPool2(nn.Module):
    """nn.AvgPool2d(2) (odd sides floored the same way), computed by `_Pool2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        return _Pool2.apply(x[..., :h, :w].contiguous())


class PrePaddedConv2d(nn.Conv2d):
    """A Conv2d that zero-pads its input explicitly, then convolves unpadded: the same values (and parameter
    names), but for the 1-channel 28x28 input with padding 3 oneDNN runs it ~1.6x faster (bench/bench_units.py)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pad: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, (self.pad,) * 4), self.weight, self.bias)


class ConvNet(nn.Module):
    """depth x [conv3x3 -> norm -> act -> pool] -> linear; `embed` returns the flattened features."""

    def __init__(self, in_channels: int, num_classes: int, im_size: tuple[int, int] = (32, 32), *,
                 width: int = 128, depth: int = 3, norm: str = "in", act: str = "relu", pool: str = "ap"):
        super().__init__()
        size = im_size[0]
        # Reference quirk kept for fidelity: 1-channel 28x28 inputs are padded to 32x32 by the first conv.
        first_pad = 3 if in_channels == 1 and size == 28 else 1
        size = 32 if first_pad == 3 else size
        layers, channels = [], in_channels
        for block in range(depth):
            conv = (PrePaddedConv2d(channels, width, 3, first_pad) if block == 0 and first_pad == 3
                    else nn.Conv2d(channels, width, 3, padding=1))
            layers += [conv,
                       _norm(norm, width, size), ACTS[act]()]
            if pool != "np":
                layers.append(AvgPool2() if pool == "ap" else nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def parse_name(name: str) -> dict:
    """'convnet_d4_w64_bn' -> ConvNet keyword arguments; unknown names or tokens raise ValueError."""
    family, *tokens = name.lower().split("_")
    if family not in FAMILIES:
        raise ValueError(f"unknown network {name!r}; available: {available()}")
    kwargs: dict = {}
    for tok in tokens:
        if m := re.fullmatch(r"d(\d+)", tok):
            kwargs["depth"] = int(m[1])
        elif m := re.fullmatch(r"w(\d+)", tok):
            kwargs["width"] = int(m[1])
        elif tok in NORMS:
            kwargs["norm"] = tok
        elif tok in ACTS:
            kwargs["act"] = tok
        elif tok in POOLS:
            kwargs["pool"] = tok
        else:
            raise ValueError(f"unknown token {tok!r} in network name {name!r}; tokens: d<N>, w<N>, "
                             f"norm {NORMS}, act {tuple(ACTS)}, pool {POOLS}; e.g. {available()}")
    if kwargs.get("depth", 3) < 1 or kwargs.get("width", 128) < 1:
        raise ValueError(f"network {name!r}: depth and width must be >= 1")
    return kwargs


def available() -> list[str]:
    """Representative names (tokens combine freely)."""
    return ["convnet", "convnet_d1", "convnet_d2", "convnet_d4", "convnet_w32", "convnet_w64", "convnet_w256",
            "convnet_bn", "convnet_ln", "convnet_gn", "convnet_nn", "convnet_mp", "convnet_np",
            "convnet_sigmoid", "convnet_leaky", "convnet_swish"]


def make_net(name: str, in_channels: int, num_classes: int, im_size: tuple[int, int], *,
             seed: int | None = None) -> ConvNet:
    """Build a network by name. With `seed`, the initialisation is reproducible and the global RNG untouched."""
    kwargs = parse_name(name)
    if seed is None:
        return ConvNet(in_channels, num_classes, tuple(im_size), **kwargs)
    with torch.random.fork_rng(devices=[]):  # restores the global CPU RNG afterwards
        torch.manual_seed(seed)
        return ConvNet(in_channels, num_classes, tuple(im_size), **kwargs)


# Forward-only passes over many images go through the CPU in chunks of this many: smaller activations stay
# in cache (on the 2-core dev CPU 64 images per call embed ~5 % faster than 256, ~35 % faster than 2,560).
CPU_CHUNK = 64


def has_bn(net: nn.Module) -> bool:
    """Whether any layer is BatchNorm (batch statistics couple the images of a batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def embed_chunked(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """net.embed(x) for many images: in CPU_CHUNK-image calls on the CPU, in one call on a GPU."""
    if x.device.type != "cpu":
        return net.embed(x)
    return torch.cat([net.embed(xb) for xb in x.split(CPU_CHUNK)])


def functional_forward(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Forward pass with explicit parameters (for unrolled/second-order methods)."""
    return functional_call(net, params, (x,))
