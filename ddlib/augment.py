"""Differentiable Siamese Augmentation (DSA).

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.
Each call draws ONE op family uniformly from the strategy tokens, then its parameters. Every op is
differentiable wrt the images, so gradients reach synthetic pixels through the augmentation. In Siamese
mode (``n=None``) one value per parameter is shared by every image, so the *same* transform can be
applied to a real batch and a synthetic batch of different sizes (what gradient/distribution matching
needs); with ``n=int`` each image gets its own draw (evaluation-time augmentation).

Parameters (methods.md §1.4, DC's ``ParamDiffAug``):

| token   | values (stored in DsaParams)       | distribution          | effect                              |
|---------|------------------------------------|-----------------------|-------------------------------------|
| color   | brightness                         | U(-0.5, 0.5)          | x + b                               |
|         | saturation                         | U(0, 2)               | grey + s * (x - grey), grey = channel mean |
|         | contrast                           | U(0.5, 1.5)           | image-mean + c * (x - image-mean)   |
| crop    | ux, uy (unit draws)                | U(0, 1)               | shift floor(u*(2m+1))-m px, m=round(side/8) |
| cutout  | cx, cy (centre, fraction of side)  | U(0, 1)               | zero one round(side/2)^2 box        |
| flip    | flip                               | Bernoulli(0.5)        | horizontal flip                     |
| scale   | sx, sy                             | U(1/1.2, 1.2)         | affine grid scaled per axis         |
| rotate  | radians                            | U(-15deg, 15deg)      | affine grid rotated                 |

Crop and cutout store unit-interval draws because the image side is only known when applying.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCALE_MAX = 1.2                  # per-axis factor in [1/1.2, 1.2]
ROTATE_DEG = 15.0                # angle in [-15, 15] degrees
CROP_RATIO = 0.125               # max translation as a fraction of the side (4 px at 32)
CUTOUT_RATIO = 0.5               # box side as a fraction of the image side (16 px at 32)


@dataclass
class DsaParams:
    """One op family and its drawn values: 0-d tensors (shared) or shape (n,) (per sample)."""
    op: str
    values: dict[str, torch.Tensor]


def _uniform(gen: torch.Generator, shape: tuple, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


# name -> (draw(gen, shape) -> values); draws happen on CPU so the sequence is device independent.
_SAMPLERS = {
    "color": lambda g, s: {"brightness": _uniform(g, s, -0.5, 0.5),
                           "saturation": _uniform(g, s, 0.0, 2.0),
                           "contrast": _uniform(g, s, 0.5, 1.5)},
    "crop": lambda g, s: {"ux": torch.rand(s, generator=g), "uy": torch.rand(s, generator=g)},
    "cutout": lambda g, s: {"cx": torch.rand(s, generator=g), "cy": torch.rand(s, generator=g)},
    "flip": lambda g, s: {"flip": (torch.rand(s, generator=g) < 0.5).float()},
    "scale": lambda g, s: {"sx": _uniform(g, s, 1 / SCALE_MAX, SCALE_MAX),
                           "sy": _uniform(g, s, 1 / SCALE_MAX, SCALE_MAX)},
    "rotate": lambda g, s: {"radians": _uniform(g, s, -1.0, 1.0) * math.radians(ROTATE_DEG)},
}


def parse_strategy(strategy: str) -> list[str]:
    """Split a strategy such as "color_crop_cutout" into validated op tokens."""
    tokens = [t for t in strategy.split("_") if t]
    if not tokens:
        raise ValueError(f"empty DSA strategy {strategy!r}; join tokens from {sorted(_SAMPLERS)} with '_'")
    unknown = [t for t in tokens if t not in _SAMPLERS]
    if unknown:
        raise ValueError(f"unknown DSA token(s) {unknown} in {strategy!r}; valid tokens: {sorted(_SAMPLERS)}")
    return tokens


def sample_dsa(strategy: str, gen: torch.Generator, n: int | None = None) -> DsaParams:
    """Draw one op family uniformly from `strategy`, then its values (shared if n is None, else (n,))."""
    tokens = parse_strategy(strategy)
    op = tokens[int(torch.randint(len(tokens), (1,), generator=gen))]
    return DsaParams(op, _SAMPLERS[op](gen, () if n is None else (n,)))


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Values as (B,) on x's device/dtype, B = 1 (shared, broadcasts) or N (one per image)."""
    v = v.to(device=x.device, dtype=x.dtype).reshape(-1)
    if v.numel() not in (1, x.shape[0]):
        raise ValueError(f"DSA params hold {v.numel()} values but the batch has {x.shape[0]} images; "
                         "sample with n=None (shared) or n=batch size")
    return v


def color(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Brightness, then saturation, then contrast (DC's order)."""
    b, s, c = (_per_image(p[k], x).view(-1, 1, 1, 1) for k in ("brightness", "saturation", "contrast"))
    x = x + b
    # Saturation moves each pixel away from its grey value; with one channel the mean IS the pixel: no-op.
    grey = x.mean(dim=1, keepdim=True)
    x = grey + s * (x - grey)
    # Contrast uses the per-image mean, a statistic of the data, so it stays per image even when shared.
    level = x.mean(dim=(1, 2, 3), keepdim=True)
    return level + c * (x - level)


def crop(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Translate by whole pixels with zero fill (DC's pad-and-crop), via one gather so grads reach x."""
    n, ch, h, w = x.shape
    # Uniform over the 2m+1 integer shifts, m = round-half-up(side/8) as DC's int(side*ratio+0.5).
    m_y, m_x = int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5)
    dy = torch.floor(_per_image(p["uy"], x) * (2 * m_y + 1)).clamp(max=2 * m_y).long() - m_y   # (B,)
    dx = torch.floor(_per_image(p["ux"], x) * (2 * m_x + 1)).clamp(max=2 * m_x).long() - m_x
    src_y = torch.arange(h, device=x.device) - dy[:, None]          # (B, H): output row i reads row i - dy
    src_x = torch.arange(w, device=x.device) - dx[:, None]          # (B, W)
    valid = ((src_y >= 0) & (src_y < h))[:, :, None] & ((src_x >= 0) & (src_x < w))[:, None, :]  # (B, H, W)
    flat = src_y.clamp(0, h - 1)[:, :, None] * w + src_x.clamp(0, w - 1)[:, None, :]               # (B, H, W)
    out = x.reshape(n, ch, h * w).gather(2, flat.reshape(-1, 1, h * w).expand(n, ch, h * w))
    return out.view(n, ch, h, w) * valid[:, None].to(x.dtype)


def cutout(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Zero one box of half the side centred at (cx, cy) (fractions of the side); clipped at borders."""
    _, _, h, w = x.shape
    box_h, box_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    y0 = torch.floor(_per_image(p["cy"], x) * h).clamp(max=h - 1).long() - box_h // 2    # (B,) top row
    x0 = torch.floor(_per_image(p["cx"], x) * w).clamp(max=w - 1).long() - box_w // 2    # (B,) left col
    rows = torch.arange(h, device=x.device)[None, :] - y0[:, None]                        # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] - x0[:, None]                        # (B, W)
    inside = ((rows >= 0) & (rows < box_h))[:, :, None] & ((cols >= 0) & (cols < box_w))[:, None, :]
    # A multiplicative mask of x (not of the params) keeps d out / d x = mask.
    return x * (~inside)[:, None].to(x.dtype)


def flip(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Horizontal flip where flip == 1."""
    return torch.where(_per_image(p["flip"], x).view(-1, 1, 1, 1) > 0.5, x.flip(-1), x)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample x on an affine grid; align_corners=True and zero padding as DC's DiffAugment."""
    theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def scale(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Per-axis scaling of the sampling grid (factor > 1 samples a wider area: zoom out)."""
    sx, sy = _per_image(p["sx"], x), _per_image(p["sy"], x)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)  # (B, 2, 3)
    return _warp(x, theta)


def rotate(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Rotation of the sampling grid about the image centre."""
    a = _per_image(p["radians"], x)
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], 1)  # (B, 2, 3)
    return _warp(x, theta)


_OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def apply_dsa(x: torch.Tensor, p: DsaParams) -> torch.Tensor:
    """Apply drawn DSA params to x (N, C, H, W); differentiable wrt x, runs on x's device."""
    if p.op not in _OPS:
        raise ValueError(f"unknown DSA op {p.op!r}; valid ops: {sorted(_OPS)}")
    return _OPS[p.op](x, p.values)


def apply_per_group(x: torch.Tensor, draws: list[DsaParams]) -> torch.Tensor:
    """x split into len(draws) equal consecutive groups (class-major batches), group i under draws[i]."""
    if len(x) % len(draws):
        raise ValueError(f"{len(x)} images do not split into {len(draws)} equal groups")
    return torch.cat([apply_dsa(xg, p) for xg, p in zip(x.chunk(len(draws)), draws)])


def dsa(x: torch.Tensor, strategy: str, gen: torch.Generator, siamese: bool = False) -> torch.Tensor:
    """Sample and apply: one shared draw if `siamese`, else one draw per image."""
    return apply_dsa(x, sample_dsa(strategy, gen, None if siamese else x.shape[0]))


def crop_noise(x: torch.Tensor, gen: torch.Generator, noise: float = 0.001) -> torch.Tensor:
    """DC's evaluation augmentation for BatchNorm nets when DSA is off (its `augment` with 'crop_noise'): each
    image, by a coin flip, is either shifted by whole pixels (DSA's crop: up to side/8) or given N(0, noise^2)
    pixel noise. Not differentiated through; evaluation only."""
    n = x.shape[0]
    take_crop = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    shifted = crop(x, _SAMPLERS["crop"](gen, (n,)))
    noisy = x + noise * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return torch.where(take_crop, shifted, noisy)
