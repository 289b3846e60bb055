r"""NCFM — Neural Characteristic Function Matching (Wang et al., CVPR 2025).

Matches each class's distribution of L2-normalised features f(x) through its empirical characteristic function
Phi(t) = mean_x exp(i t^T f(x)) at random frequencies t ~ N(0, I) (num_freqs of them, redrawn every call):

    L_c = scale * mean_t sqrt( alpha (|Phi_T(t)| - |Phi_S(t)|)^2
                              + beta 2 (|Phi_T(t)| |Phi_S(t)| - Re Phi_T Re Phi_S - Im Phi_T Im Phi_S) ),

an amplitude term (diversity) and a phase term (realism; 2 |Phi_T||Phi_S| (1 - cos of the phase gap), clamped at
1e-12 before the root). The released configs switch the paper's min-max frequency sampler off (`sampling_net:
False`): frequencies are plain Gaussian draws, as here. T_c is a real batch, S_c the class's decoded images (IDC's
multi-formation, factor 2), both under one IDC-style augmentation draw. The feature network is an interpolation
l theta_init + (1 - l) theta_trained, l ~ U(0, 1), between one pretrained model's initial and trained weights; a
calibration step then lowers calib_weight * CE(trained model(A(S_c)), c). As the official Condenser does, every
class takes its own image step for the matching loss, then every class one for the calibration (AdamW, so the
order matters), and the images are clamped to [0, 1] pixels each iteration. The pretrained models are the
`buffers` stage's plain experts (epoch 0 and the last epoch; the official pretrains 20 ConvNets 60 epochs with
momentum); the step size is in [0, 1]-pixel units (lr_img / std in normalised ones). beyond-survey.md §A8,
gszfwsb/NCFM NCFM/NCFM.py, condenser/compute_loss.py, config/ipc*/cifar10.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import experts, loop, nets, params, pools
from ..data import LabeledImages, _channel_stats
from ..multiformation import check_tiling, decode, real_tiles, storage
from ..synset import SyntheticSet
from . import idc

ID = "ncfm"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 20_000  # niter
    lr_img: float = 0.01             # AdamW on [0, 1] pixels (optimizer: adamw, lr_img 0.01)
    weight_decay: float = 5e-4       # the AdamW of the images takes train.weight_decay
    batch_real: int = 1024           # real images per class per match
    factor: int = 2                  # multi-formation (decode_type single)
    num_freqs: int = 4096            # frequencies per loss (the paper's text says 1024; the configs 4096)
    alpha: float = 0.5               # amplitude weight
    beta: float = 0.5                # phase weight
    scale: float = 300.0             # the loss's constant factor (match_loss)
    calib_weight: float = 1.0        # calibration CE weight (iter_calib 1)
    strategy: str = "color_crop_cutout"   # aug_type of the matching and calibration views
    buffer: str = "plain"            # expert recipe standing in for the pretrained models
    model_num: int = 20              # num_premodel
    init: str = "real"               # "mix": f^2 real images per stored image, one per tile
    model: str = "convnet"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if (self.lr_img <= 0 or self.batch_real < 1 or self.factor < 1 or self.num_freqs < 1 or self.model_num < 1
                or min(self.alpha, self.beta, self.scale, self.calib_weight, self.weight_decay) < 0):
            raise ValueError(f"invalid NCFM config: {self}")


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return pools.inputs(cfg.buffer, dataset, data_root)


def characteristic(t: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the empirical characteristic function of the rows of feat at the rows of t."""
    phase = t @ feat.T
    return phase.cos().mean(1), phase.sin().mean(1)


def cf_loss(feat_real: torch.Tensor, feat_syn: torch.Tensor, t: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """mean_t sqrt(alpha * amplitude gap^2 + beta * phase term) between two feature sets (NCFM.py CFLossFunc)."""
    re_r, im_r = characteristic(t, feat_real)
    re_s, im_s = characteristic(t, feat_syn)
    amp_r, amp_s = torch.sqrt(re_r ** 2 + im_r ** 2), torch.sqrt(re_s ** 2 + im_s ** 2)
    phase = (2 * (amp_r * amp_s - re_r * re_s - im_r * im_s)).clamp(min=1e-12)
    return torch.sqrt(alpha * (amp_r - amp_s) ** 2 + beta * phase).mean()


def feature_nets(pool: experts.Buffers, real: LabeledImages, cfg: Config, gen: torch.Generator, device):
    """(interpolated, trained) nets of one random pretrained model: l theta_0 + (1 - l) theta_last, l ~ U(0, 1)."""
    i = int(torch.randint(min(cfg.model_num, pool.num_experts), (1,), generator=gen))
    w0, w1 = pool.at(i, 0, -1)
    lam = float(torch.rand((), generator=gen))
    return [pools.frozen_net(w, real, cfg.model, device) for w in (lam * w0 + (1 - lam) * w1, w1)]


def step(state: loop.State, real: LabeledImages, cfg: Config, pool: experts.Buffers) -> float:
    """One iteration: per class a CF-matching image step, then per class a calibration step."""
    k, device = real.spec.num_classes, state.x_syn.device
    idc.clamp_to_pixels(state, real)
    net, trained = feature_nets(pool, real, cfg, state.gen, device)
    ipc, total = len(state.x_syn) // k, 0.0
    for c in range(k):
        x_real = real.sample_class(c, cfg.batch_real, state.gen).to(device)
        x_syn = decode(state.x_syn[c * ipc:(c + 1) * ipc], cfg.factor)
        both = idc.sequential_aug(torch.cat([x_real, x_syn]), cfg.strategy, state.gen)
        with torch.no_grad():
            feat_real = F.normalize(nets.embed_chunked(net, both[:len(x_real)]), dim=1)
        feat_syn = F.normalize(net.embed(both[len(x_real):]), dim=1)
        t = torch.randn((cfg.num_freqs, feat_syn.shape[1]), generator=state.gen).to(device)
        total += loop.update(state, cfg.scale * cf_loss(feat_real, feat_syn, t, cfg.alpha, cfg.beta))
    for c in range(k):
        x_syn = idc.sequential_aug(decode(state.x_syn[c * ipc:(c + 1) * ipc], cfg.factor), cfg.strategy, state.gen)
        y = torch.full((len(x_syn),), c, device=device)
        total += loop.update(state, cfg.calib_weight * F.cross_entropy(trained(x_syn), y))
    return total / k


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    check_tiling(real.spec.im_size, cfg.factor)
    cfg = params.at_ipc(cfg, ipc)
    pool = pools.load(real, buffer=cfg.buffer, model=cfg.model, data_root=data_root)
    k, f = real.spec.num_classes, cfg.factor

    def setup(state: loop.State) -> None:
        if cfg.init == "real" and f > 1:
            real_tiles(state.x_syn, real, f, state.gen)
        _, std = _channel_stats(real.spec, state.x_syn)      # [0, 1]-pixel steps: lr / std in normalised units
        state.opt = torch.optim.AdamW([state.x_syn], lr=cfg.lr_img / float(std.mean()), weight_decay=cfg.weight_decay)

    return loop.distill(ID, lambda s: step(s, real, cfg, pool), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=setup,
                        decode=lambda s: (decode(s.x_syn, f), s.y_syn.repeat(f * f)),
                        describe=lambda s: {"storage": storage(len(s.x_syn), s.x_syn.shape[1:], f, k)})
