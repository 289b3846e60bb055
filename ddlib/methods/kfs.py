r"""KFS — Dataset Condensation with Latent Space Knowledge Factorization and Sharing (Lee, Lee & Hwang, 2022).

The set is n codes per class in a compact latent space (here: image channels at H/r x W/r) and D tiny decoders
shared by all classes; every (code, decoder) pair is a training image with the code's label,

    x_{i,d} = g_d(z_i),   g_d(z) = u + W2_d * relu(W1_d * u + b1_d) + b2_d,   u = U_d * z + c_d

(U_d a stride-r transposed convolution, W1_d, W2_d 3x3 convolutions), so n x D images per class come from n
small codes and D networks of a few hundred floats. The objective is distribution matching (dm.loss: the
survey files KFS under DM): for a fresh random ConvNet psi and one Siamese DSA draw per class,

    min_{z, g}  sum_c || mean_{x in T_c} psi(A(x)) - mean_{(i,d), y_i = c} psi(A(g_d(z_i))) ||^2.

No official code exists (methods.md §2.14, families-2.md §A.6), so what the abstract leaves open is ours and
marked [R]: the latent shape, the decoder, the init (codes = r x r average-pooled real images; each decoder
starts at bilinear upsampling plus a small random residual, so the first images are blurred real ones), the
optimisers (SGD momentum 0.5, DM's lr 1 on codes) and the storage rule (below).

Storage: codes fill the pixel budget ipc x K x C x H x W that the paper compares at, after the decoders'
parameters: n = floor((budget - decoder floats) / (K x code floats)) codes per class, unless
`codes_per_class` fixes n. Provenance "storage" records stored floats beside the decoded images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import loop, params
from ..data import LabeledImages
from ..storage import account
from ..synset import SyntheticSet
from . import dm

ID = "kfs"
PARTS = ("up_w", "up_b", "w1", "b1", "w2", "b2")   # one row per decoder


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 20_000    # DM's outer iterations [R: KFS's own count is not published in the abstract]
    downsample: int = 2                 # r: codes at H/r x W/r, 1/r^2 of an image's floats [R]
    n_decoders: int = 2                 # D decoders shared by every class [R]
    hidden: int = 8                     # channels of a decoder's residual branch [R]
    codes_per_class: int | dict | None = None   # None: as many as the pixel budget buys after the decoders
    lr_img: float = 1.0                 # codes: DM's SGD lr and momentum
    lr_decoder: float = 1e-4            # decoder parameters [R: of {0, 1e-4, 1e-3, 1e-2}, the lowest matching loss
                                        # after 16 quick iterations at IPC 1; never by test accuracy]
    momentum: float = 0.5
    residual_init: float = 0.1          # scale of the residual branch's last layer at init (decoders start apart)
    batch_real: int = 256               # real images per class per iteration (DM)
    batch_syn: int | dict | None = None  # decoded images per class in each matching (None: all)
    init: str = "real"                  # codes from average-pooled real images, or "noise"
    model: str = "convnet"
    dsa: bool = True
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        r = self.downsample
        if not isinstance(r, int) or r < 1 or (r > 1 and r % 2):
            raise ValueError(f"kfs downsample must be 1 or an even integer, got {r!r}")
        if self.n_decoders < 1 or self.hidden < 1 or self.batch_real < 1 or self.lr_img <= 0 or self.lr_decoder < 0:
            raise ValueError(f"invalid kfs config: {self}")


def bilinear_kernel(r: int) -> torch.Tensor:
    """The (2r x 2r) kernel of a stride-r transposed convolution that upsamples bilinearly (1 x 1 for r = 1)."""
    k = 1 if r == 1 else 2 * r
    center = (k - 1) / 2
    w = 1 - (torch.arange(k, dtype=torch.float32) - center).abs() / ((k + 1) // 2)
    return w[:, None] * w[None, :]


def decoders(n: int, c: int, cfg: Config, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """n decoders: bilinear upsampling per channel, then a residual branch at PyTorch's default conv init
    (U(+-1/sqrt(fan_in))) whose last layer is scaled by residual_init."""
    u = lambda bound, *shape: (torch.rand(shape, generator=gen) * 2 - 1) * bound   # noqa: E731
    up = torch.eye(c)[:, :, None, None] * bilinear_kernel(cfg.downsample)          # ConvT weight (in, out, k, k)
    b1, b2 = 1 / math.sqrt(c * 9), cfg.residual_init / math.sqrt(cfg.hidden * 9)
    return {"up_w": up.expand(n, *up.shape).clone(), "up_b": torch.zeros(n, c),
            "w1": u(b1, n, cfg.hidden, c, 3, 3), "b1": u(b1, n, cfg.hidden),
            "w2": u(b2, n, c, cfg.hidden, 3, 3), "b2": u(b2, n, c)}


def decoder_floats(c: int, cfg: Config) -> int:
    return sum(t[0].numel() for t in decoders(1, c, cfg, torch.Generator()).values()) * cfg.n_decoders


def apply(z: torch.Tensor, dec: dict, d: int, r: int) -> torch.Tensor:
    """g_d(z) for a batch of codes z (N, C, H/r, W/r) -> (N, C, H, W)."""
    k = dec["up_w"].shape[-1]
    u = F.conv_transpose2d(z, dec["up_w"][d], dec["up_b"][d], stride=r, padding=(k - r) // 2)
    return u + F.conv2d(F.relu(F.conv2d(u, dec["w1"][d], dec["b1"][d], padding=1)), dec["w2"][d], dec["b2"][d],
                        padding=1)


def decode(codes: torch.Tensor, dec: dict, r: int) -> torch.Tensor:
    """Every (code, decoder) pair, code-major: image i * D + d is g_d(z_i) (class-major codes, class-major images)."""
    out = torch.stack([apply(codes, dec, d, r) for d in range(len(dec["up_w"]))], 1)
    return out.flatten(0, 1)


def codes_per_class(cfg: Config, ipc: int, spec) -> int:
    """n: `codes_per_class`, or what the pixel budget ipc x K x C x H x W buys after the decoders."""
    if cfg.codes_per_class is not None:
        return params.per_ipc(cfg.codes_per_class, ipc, "codes_per_class")
    h, w = spec.im_size
    if h % cfg.downsample or w % cfg.downsample:
        raise ValueError(f"kfs downsample {cfg.downsample} does not divide the {h}x{w} images; choose a divisor")
    budget = ipc * spec.num_classes * spec.channels * h * w
    code = spec.channels * (h // cfg.downsample) * (w // cfg.downsample)
    n = (budget - decoder_floats(spec.channels, cfg)) // (spec.num_classes * code)
    if n < 1:
        raise ValueError(f"kfs at ipc={ipc}: {cfg.n_decoders} decoders leave no budget for codes; use fewer "
                         "decoders, a smaller `hidden`, a larger `downsample`, or set codes_per_class")
    return n


def init_codes(real: LabeledImages, cfg: Config, n: int, gen: torch.Generator, device) -> loop.State:
    """n codes per class (class-major): r x r average-pooled random real images, or N(0, 1) noise."""
    s = loop.init_state(real, n, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum, gen=gen, device=device)
    codes = F.avg_pool2d(s.x_syn.detach(), cfg.downsample).requires_grad_(True)
    return loop.State(x_syn=codes, y_syn=s.y_syn, opt=torch.optim.SGD([codes], lr=cfg.lr_img, momentum=cfg.momentum),
                      gen=gen)


def pick(n_per_class: int, k: int, batch: int | None, gen: torch.Generator) -> torch.Tensor | None:
    """Indices of `batch` random decoded images per class (class-major), or None for all of them."""
    if batch is None or batch >= n_per_class:
        return None
    return torch.cat([c * n_per_class + torch.randperm(n_per_class, generator=gen)[:batch] for c in range(k)])


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    k = real.spec.num_classes
    x = decode(state.x_syn, state.extra, cfg.downsample)
    idx = pick(len(x) // k, k, cfg.batch_syn, state.gen)
    return loop.update(state, dm.loss(x if idx is None else x[idx.to(x.device)], state.gen, real, cfg))


def storage(state: loop.State, spec) -> dict:
    """Stored floats: the codes and every decoder parameter, beside the images training sees."""
    return account({"codes": state.x_syn.numel(), "decoder": sum(state.extra[k].numel() for k in PARTS)},
                   len(state.x_syn) * len(state.extra["up_w"]), spec)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    spec = real.spec
    n = codes_per_class(cfg, ipc, spec)

    def setup(state):
        for name, value in decoders(cfg.n_decoders, spec.channels, cfg, state.gen).items():
            loop.learn(state, name, value, lr=cfg.lr_decoder, momentum=cfg.momentum)

    def describe(state):
        return {"storage": storage(state, spec),
                "codes": {"codes": state.x_syn.detach().cpu(), **{k: state.extra[k].detach().cpu() for k in PARTS}}}
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=setup, init=lambda gen: init_codes(real, cfg, n, gen, device),
                        decode=lambda s: (decode(s.x_syn, s.extra, cfg.downsample),
                                          s.y_syn.repeat_interleave(cfg.n_decoders)),
                        describe=describe)
