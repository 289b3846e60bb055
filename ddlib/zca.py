"""ZCA whitening of images, fitted once on the whole training split (methods.md §1.5).

ZCA rotates centred pixels into the eigenbasis of their covariance, scales each direction by
1/sqrt(lambda + r) and rotates back, so whitened images still look like images (edges kept, flat colour
removed). The two published variants differ only in the covariance normaliser and the regulariser r:

- mode="kornia" (MTT, FTD, TESLA, DATM, HaBa through `kornia.enhance.ZCAWhitening(eps=0.1)`): unbiased
  covariance Xc^T Xc / (N - 1) and r = eps, absolute (0.1 on pixels in [0, 1]).
- mode="relative" (KIP, FRePo, RFAD): covariance Xc^T Xc / N and r = eps * trace(cov) / d, i.e. eps
  (their zca_reg = 0.1) times the mean eigenvalue, so the shrinkage does not depend on the pixel scale.

Preprocessing that precedes the fit in those codebases (per-channel standardisation, KIP's per-image
layer norm) is the caller's. The fit runs in float64; the transform is stored in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import data

MODES = ("kornia", "relative")


@dataclass
class Zca:
    """A fitted ZCA transform for flattened (N, C*H*W) images; W is symmetric, W_inv its inverse."""

    mean: torch.Tensor  # (d,) per-pixel training mean
    W: torch.Tensor  # (d, d) whitening matrix U diag(1/sqrt(lambda + r)) U^T
    W_inv: torch.Tensor  # (d, d) U diag(sqrt(lambda + r)) U^T: maps whitened images back for figures
    mode: str
    eps: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten (N, C, H, W) images, on x's device and dtype."""
        flat = x.reshape(len(x), -1) - self.mean.to(x)  # (N, d)
        return (flat @ self.W.to(x)).reshape(x.shape)  # W is symmetric, so row vectors need no transpose

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Undo apply(): whitened (N, C, H, W) back to pixel space."""
        return (x.reshape(len(x), -1) @ self.W_inv.to(x) + self.mean.to(x)).reshape(x.shape)

    def to(self, device: str | torch.device) -> Zca:
        """The same transform with its matrices on `device` (saves a copy per apply() in a GPU loop)."""
        return replace(self, mean=self.mean.to(device), W=self.W.to(device), W_inv=self.W_inv.to(device))

    def state_dict(self) -> dict:
        return {"mean": self.mean.cpu(), "W": self.W.cpu(), "W_inv": self.W_inv.cpu(), "mode": self.mode,
                "eps": self.eps}

    @classmethod
    def from_state_dict(cls, state: dict) -> Zca:
        return cls(state["mean"], state["W"], state["W_inv"], str(state["mode"]), float(state["eps"]))


def fit_zca(x: torch.Tensor, *, eps: float = 0.1, mode: str = "kornia", chunk: int = 4096) -> Zca:
    """Fit ZCA on training images x (N, C, H, W); eps is absolute (kornia) or relative to trace/d (relative)."""
    if mode not in MODES:
        raise ValueError(f"unknown ZCA mode {mode!r}; choose one of {MODES}")
    flat = x.reshape(len(x), -1)
    n, d = flat.shape
    mean = flat.mean(0, dtype=torch.float64)
    cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk):  # float64 in chunks: a float64 copy of all CIFAR-10 would take 1.2 GB
        block = flat[start:start + chunk].to(torch.float64) - mean
        cov += block.T @ block
    cov /= (n - 1) if mode == "kornia" else n
    shrink = eps if mode == "kornia" else eps * cov.trace() / d
    lam, U = torch.linalg.eigh(cov)
    lam = lam.clamp_min(0) + shrink  # eigh may return -1e-17 for directions the data never spans
    W, W_inv = (U * lam.rsqrt()) @ U.T, (U * lam.sqrt()) @ U.T  # U diag(s) U^T without forming diag(s)
    return Zca(mean.float(), W.float(), W_inv.float(), mode, float(eps))


def load_split(dataset: str, split: str, root: str | Path, *, whiten: bool) -> data.LabeledImages:
    """A split in the space a method works in: mean/std-normalised pixels (whiten=False), or [0, 1] pixels
    whitened by the transform the zca stage fitted on the training split (root/<dataset>/zca.pt)."""
    if not whiten:
        return data.load(dataset, split, root)
    path = Path(root) / dataset / "zca.pt"
    if not path.exists():
        raise FileNotFoundError(f"no ZCA transform at {path}; make it with `dvc repro zca@{dataset}`")
    transform = Zca.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    raw = data.load(dataset, split, root, normalize=False)
    return data.LabeledImages(transform.apply(raw.x), raw.y, raw.spec, zca=True)
