r"""Kernels of kernel-ridge-regression distillation (KIP, FRePo, RFAD) and the ridge solve they share.

Infinite-width kernels of ReLU networks in the NTK parameterisation (weights N(0, w_var / fan_in), biases
N(0, b_var); neural-tangents' `W_std**2`, `b_std**2`): the NNGP Sigma (covariance of the output at init) and
the NTK Theta (expected gradient inner product), by the layer recursions

    dense / conv:  Sigma' = w_var A(K) + b_var,   Theta' = Sigma' + w_var A(Theta)   (A: mean over fan-in)
    ReLU:          K = sqrt(s11 s22)/(2 pi) (sin t + (pi - t) cos t),  Kdot = (pi - t)/(2 pi),  cos t = s12/sqrt(s11 s22)
                   Theta <- Kdot * Theta
    avg pooling:   the same linear map on Sigma and Theta.

`fc` is a depth-L fully connected net. `conv` is `nets.ConvNet` without normalisation (`convnet_nn`, the net
KIP and RFAD use: no norm layer has a deterministic infinite-width limit per image): depth blocks of 3x3 conv
(padding 1; 3 for a 1-channel 28x28 input, as nets.py) -> ReLU -> 2x2 average pooling, then a dense readout
on the flattened features. Average pooling couples neighbouring positions, so the conv recursion carries, for
every position i, the covariance with positions i + delta inside a window |delta| <= r that halves (r -> (r-1)/2)
at each pooling: r = 7, 3, 1 for depth 3 and 0 at the readout, a (15x15) window at full resolution, not the
(HW)^2 full covariance. Cost and memory are O(n1 n2 (2r+1)^2 H W): chunked over rows (`chunk`).
Both are validated against Monte-Carlo estimates from wide random finite nets (tests/test_kernels.py).

`krr` is the prediction K_ts (K_ss + lam tr(K_ss)/n I)^-1 y_s of KIP and FRePo, solved in float64 by Cholesky;
an ill-conditioned K_ss (lam = 0, duplicated support points) gets escalating jitter, and a kernel that stays
singular raises instead of returning NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import nets

W_VAR, B_VAR = 2.0, 0.01      # KIP's neural-tangents nets: W_std = sqrt(2), b_std = 0.1
KERNELS = ("fc_nngp", "fc_ntk", "conv_nngp", "conv_ntk")
# |cos t| <= 1 - eps keeps arccos differentiable (cos t = 1 exactly on a diagonal); it costs the NTK's diagonal
# ~sqrt(2 eps)/pi relative: 5e-4 in float32, 5e-7 in float64 (tests/test_kernels.py, against neural-tangents)
_EPS = {torch.float32: 1e-6, torch.float64: 1e-12}
CHUNK_ELEMENTS = 2**23         # entries of one (rows, n2, window, H, W) tensor of the conv recursion (32 MB fp32)


def _sd(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v), 0 where v = 0 (a padded position), with a finite gradient there."""
    live = v > 0
    return torch.sqrt(torch.where(live, v, torch.ones_like(v))) * live


def _inv(sd: torch.Tensor) -> torch.Tensor:
    return torch.where(sd > 0, 1 / torch.where(sd > 0, sd, torch.ones_like(sd)), torch.zeros_like(sd))


def relu_moments(s12, sd1, sd2):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[sd1^2, s12], [s12, sd2^2]]), given the
    standard deviations (small tensors broadcast against s12; 0 at a padded position, where E = 0)."""
    eps = _EPS.get(s12.dtype, 1e-3)   # half precision: coarse
    cos = (s12 * _inv(sd1) * _inv(sd2)).clamp(-1 + eps, 1 - eps)
    u = math.pi - torch.arccos(cos)
    e = (torch.sqrt(1 - cos * cos) + u * cos) * (sd1 / (2 * math.pi)) * sd2   # sin(arccos c) = sqrt(1 - c^2)
    return e, u / (2 * math.pi)


def fc(x1: torch.Tensor, x2: torch.Tensor, *, depth: int = 1, ntk: bool = True, w_var: float = W_VAR,
       b_var: float = B_VAR) -> torch.Tensor:
    """(n1, n2) NTK (or NNGP) of a fully connected ReLU net with `depth` hidden layers and a dense readout."""
    x1, x2 = x1.flatten(1), x2.flatten(1)
    d = x1.shape[1]
    s12 = w_var * x1 @ x2.T / d + b_var
    s11 = w_var * (x1 * x1).sum(1, keepdim=True) / d + b_var
    s22 = w_var * (x2 * x2).sum(1)[None] / d + b_var
    theta = s12
    for _ in range(depth):
        e, edot = relu_moments(s12, _sd(s11), _sd(s22))
        s12 = w_var * e + b_var
        theta = s12 + w_var * edot * theta
        s11, s22 = w_var * s11 / 2 + b_var, w_var * s22 / 2 + b_var   # E[relu(u)^2] = s/2
    return theta if ntk else s12


def _shift(v: torch.Tensor, r: int) -> torch.Tensor:
    """(..., H, W) -> (..., 2r+1, 2r+1, H, W): out[..., a, b, i, j] = v[..., i+a-r, j+b-r], zero outside."""
    h, w = v.shape[-2:]
    vp = F.pad(v, (r, r, r, r))
    return torch.stack([torch.stack([vp[..., a:a + h, b:b + w] for b in range(2 * r + 1)], -3)
                        for a in range(2 * r + 1)], -4)


def _box3(k: torch.Tensor) -> torch.Tensor:
    """Sum over the 3x3 neighbourhood of each position (zero outside): a 3x3 conv's fan-in, times 9."""
    kp = F.pad(k, (1, 1, 1, 1))
    rows = kp[..., :-2, :] + kp[..., 1:-1, :] + kp[..., 2:, :]
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]


def _pool_axis(k: torch.Tensor, r_out: int, dim_d: int, dim_p: int) -> torch.Tensor:
    """2x average pooling along one spatial axis of a window tensor: cov(mean of x[2q], x[2q+1]; mean of
    x'[2q+2d], x'[2q+2d+1]) = 1/4 sum over b, b' in {0, 1} of K[pos 2q+b, delta 2d+b'-b]."""
    n, j = k.shape[dim_p] // 2, torch.arange(2 * r_out + 1, device=k.device)
    out = 0
    for b in (0, 1):
        kb = k.index_select(dim_p, 2 * torch.arange(n, device=k.device) + b)
        for b2 in (0, 1):
            out = out + kb.index_select(dim_d, 2 * j + b2 - b + 1)
    return out / 4


def _pool(k: torch.Tensor, r_out: int) -> torch.Tensor:
    """(..., D, D, H, W) window tensor of radius 2 r_out + 1 -> radius r_out at half the resolution."""
    return _pool_axis(_pool_axis(k, r_out, -4, -2), r_out, -3, -1)


def _conv_pass(k, depth, w_var, b_var, variances):
    """The ConvNet recursion on input-covariance windows k (A, B, D, D, H, W); `variances(l, k)` gives each
    side's pre-activation standard deviations at block l (broadcastable to k). Returns the readout's (NNGP, NTK), each (A, B)."""
    theta, trimmed, w9 = None, False, w_var / 9
    for block in range(depth):
        r = (k.shape[-3] - 1) // 2
        mask = _shift(torch.ones(k.shape[-2:], dtype=k.dtype, device=k.device), r)  # pos + delta inside
        if trimmed:   # an odd side's pooled-away row may sit in the window: it is outside the grid now
            k, theta = k * mask, theta * mask
        k = (w9 * _box3(k) + b_var) * mask
        theta = k if theta is None else k + w9 * _box3(theta) * mask
        e, edot = relu_moments(k, *variances(block, k))
        trimmed = k.shape[-1] % 2 == 1 or k.shape[-2] % 2 == 1
        k, theta = _pool(e, (r - 1) // 2), _pool(edot * theta, (r - 1) // 2)   # theta = 0 where e is masked
    centre = (k.shape[-3] - 1) // 2
    nngp = w_var * k[..., centre, centre, :, :].mean((-2, -1)) + b_var
    return nngp, nngp + w_var * theta[..., centre, centre, :, :].mean((-2, -1))


def _inputs(x: torch.Tensor, depth: int) -> tuple[torch.Tensor, int]:
    """Pad so that every conv is 'same' (28x28 grey: the first conv's padding 3 = pad 2 + same), and the
    window radius the first block needs (r_l = 2 r_(l+1) + 1, r = 0 at the readout)."""
    if x.shape[1] == 1 and x.shape[-1] == 28:
        x = F.pad(x, (2, 2, 2, 2))
    return x, 2 ** depth - 1


def _maybe_checkpoint(fn, *tensors):
    """fn(*tensors), recomputed in the backward pass instead of keeping its window tensors when a gradient is
    coming (the memory of a step is then one chunk's, not every pair's)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return checkpoint(fn, *tensors, use_reentrant=False)
    return fn(*tensors)


def _own_maps(x: torch.Tensor, depth: int, w_var: float, b_var: float) -> tuple[torch.Tensor, ...]:
    x, r = _inputs(x, depth)
    k = torch.einsum("icxy,icabxy->iabxy", x, _shift(x, r)).unsqueeze(1) / x.shape[1]
    maps = []

    def own(block, k):
        r = (k.shape[-3] - 1) // 2
        v = k[..., r, r, :, :]
        maps.append(v[:, 0])
        sd = _sd(v)
        return sd[..., None, None, :, :], _shift(sd, r)

    _conv_pass(k, depth, w_var, b_var, own)
    return tuple(maps)


def conv_variances(x: torch.Tensor, *, depth: int = 3, w_var: float = W_VAR, b_var: float = B_VAR) -> list:
    """Each image's own pre-activation variance map at every block (what the cross kernel's ReLUs need),
    in chunks of images that keep one window tensor within CHUNK_ELEMENTS."""
    per_image = (2 ** (depth + 1) - 1) ** 2 * (x.shape[-1] + 4) ** 2
    parts = [_maybe_checkpoint(lambda xb: _own_maps(xb, depth, w_var, b_var), xb)
             for xb in x.split(max(1, CHUNK_ELEMENTS // per_image))]
    return [torch.cat(maps) for maps in zip(*parts)]


def conv(x1: torch.Tensor, x2: torch.Tensor, *, depth: int = 3, ntk: bool = True, w_var: float = W_VAR,
         b_var: float = B_VAR, chunk: int | None = None, var1=None, var2=None) -> torch.Tensor:
    """(n1, n2) NTK (or NNGP) of the normalisation-free ConvNet (module docstring), `chunk` rows at a time
    (default: as many as keep one window tensor within CHUNK_ELEMENTS), each chunk recomputed in the backward
    pass rather than stored."""
    var1 = var1 if var1 is not None else conv_variances(x1, depth=depth, w_var=w_var, b_var=b_var)
    var2 = var2 if var2 is not None else conv_variances(x2, depth=depth, w_var=w_var, b_var=b_var)
    (p1, r), (p2, _) = _inputs(x1, depth), _inputs(x2, depth)
    per_row = len(p2) * (2 * r + 1) ** 2 * p2[0, 0].numel()
    chunk = chunk or max(1, CHUNK_ELEMENTS // per_row)

    def rows(part, p1_part, p2, *var):
        v1, v2 = var[:depth], var[depth:]
        k = torch.einsum("icxy,jcabxy->ijabxy", p1_part, _shift(p2, r)) / p1_part.shape[1]

        def stored(block, k):
            rb = (k.shape[-3] - 1) // 2
            return _sd(v1[block][part])[:, None, None, None], _shift(_sd(v2[block]), rb)[None]

        return _conv_pass(k, depth, w_var, b_var, stored)[1 if ntk else 0]

    out = []
    for start in range(0, len(p1), chunk):
        part = slice(start, start + chunk)
        out.append(_maybe_checkpoint(lambda p, q, *v, part=part: rows(part, p, q, *v), p1[part], p2, *var1, *var2))
    return torch.cat(out)


def kernel_fn(name: str, *, depth: int | None = None):
    """A kernel by name (KERNELS): (x1, x2) -> (n1, n2). Depth defaults: fc 1 hidden layer (KIP's notebook),
    conv 3 blocks (the ConvNet)."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; available: {list(KERNELS)}")
    family, kind = name.split("_")
    fn = fc if family == "fc" else conv
    d = depth if depth is not None else (1 if family == "fc" else 3)
    return lambda x1, x2: fn(x1, x2, depth=d, ntk=kind == "ntk")


def krr(k_ts: torch.Tensor, k_ss: torch.Tensor, y_s: torch.Tensor, *, reg: float = 1e-6,
        max_tries: int = 6) -> torch.Tensor:
    """K_ts (K_ss + reg tr(K_ss)/n I)^-1 y_s in float64. If Cholesky fails, jitter 1e-6, 1e-5, ... x tr/n is
    added (reported as a warning-free retry); a kernel singular even at 1e-2 raises ValueError."""
    n = k_ss.shape[0]
    k64 = k_ss.double()
    scale = torch.diagonal(k64).mean().detach().clamp_min(1e-30)
    if not torch.isfinite(k64).all():
        raise FloatingPointError("support kernel contains NaN or inf; the support images are not finite")
    eye = torch.eye(n, dtype=torch.float64, device=k_ss.device)
    for attempt in range(max_tries):
        jitter = reg if attempt == 0 else max(reg, 10.0 ** (attempt - 7))
        chol, info = torch.linalg.cholesky_ex(k64 + jitter * scale * eye)
        if int(info) == 0:
            alpha = torch.cholesky_solve(y_s.double(), chol)
            return (k_ts.double() @ alpha).to(k_ts.dtype)
    raise ValueError(f"support kernel ({n}x{n}) is singular even with jitter {jitter:g} x tr/n: the support "
                     "holds (near-)duplicate points; raise `reg` or deduplicate the support")


def centred_onehot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """KIP/FRePo regression targets: one-hot minus 1/C."""
    return F.one_hot(y, num_classes).float() - 1.0 / num_classes


def balanced_batch(real, per_class: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced real target batch (images, labels), `per_class` of each class."""
    index = torch.cat([real.sample_index(c, per_class, gen) for c in range(real.spec.num_classes)])
    return real.x[index.to(real.x.device)], real.y[index.to(real.y.device)]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 mean over the batch of || pred - target ||^2 (KIP's loss)."""
    return 0.5 * ((pred - target) ** 2).sum(1).mean()


@torch.no_grad()
def krr_accuracy(kernel, x_s: torch.Tensor, y_s: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                 reg: float = 1e-6, batch: int = 500) -> float:
    """Top-1 accuracy (%) of the KRR predictor fitted on the support (x_s, targets y_s): a kernel method's own
    evaluation recipe, no network trained."""
    k_ss = kernel(x_s, x_s)
    correct = 0
    for start in range(0, len(x_test), batch):
        pred = krr(kernel(x_test[start:start + batch], x_s), k_ss, y_s, reg=reg)
        correct += (pred.argmax(1) == y_test[start:start + batch]).sum().item()
    return 100.0 * correct / len(x_test)


def random_convnets(name: str, channels: int, im_size, seeds: list[int], *, w_var: float = W_VAR,
                    b_var: float = B_VAR, device=None) -> list:
    """Random finite nets for the random-feature NNGP (RFAD): `name` (a normalisation-free ConvNet) with
    weights N(0, w_var/fan_in) and biases N(0, b_var), one per seed, frozen."""
    out = []
    for seed in seeds:
        net = nets.make_net(name, channels, 1, im_size, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(w_var / m.weight[0].numel()))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * math.sqrt(b_var))
        out.append(net.requires_grad_(False).to(device))
    return out


def random_features(models: list, x: torch.Tensor, *, w_var: float = W_VAR) -> torch.Tensor:
    """(n, M d) features whose inner product plus b_var is the Monte-Carlo NNGP of M random nets:
    phi(x) phi(x')^T = w_var / (M d) sum_m f_m(x) . f_m(x')."""
    feats = [m.embed(x) for m in models]
    return torch.cat(feats, 1) * math.sqrt(w_var / (len(models) * feats[0].shape[1]))


def feature_kernel(phi1: torch.Tensor, phi2: torch.Tensor, b_var: float = B_VAR) -> torch.Tensor:
    return phi1 @ phi2.T + b_var
