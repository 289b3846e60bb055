"""`SyntheticSet`: what every method produces and the evaluation reads (and nothing else)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import runtime


@dataclass
class SyntheticSet:
    """A distilled (or selected) training set plus everything needed to evaluate and trace it.

    images: (N, C, H, W) float32 in the dataset's normalised (or ZCA) space, on CPU.
    labels: hard (N,) int64, or soft (N, K) float class probabilities.
    lr: learned evaluation step size (MTT family), else None.
    targets: (N, K) float regression targets learned by a kernel method (KIP, FRePo, RFAD), read by its own
        KRR recipe; the common protocol trains on `labels`. None for every other method.
    """

    images: torch.Tensor
    labels: torch.Tensor
    method: str
    dataset: str
    ipc: int
    lr: float | None = None
    zca: bool = False
    params: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    targets: torch.Tensor | None = None

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not torch.isfinite(self.images).all():
            raise ValueError(f"synthetic set of {self.method!r} contains NaN or inf pixels")

    @property
    def soft(self) -> bool:
        return self.labels.is_floating_point()

    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    def content_hash(self) -> str:
        """sha256 of what training on the set sees (pixels, labels, learned lr), not of its provenance:
        two runs of the same code and params on the same kind of machine give the same hash."""
        digest = hashlib.sha256()
        for t in (self.images, self.labels):
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
        digest.update(repr(self.lr).encode())
        if self.targets is not None:   # only sets that carry targets hash them: older hashes are unchanged
            t = self.targets.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Atomic write (temp file + rename) so a killed run never leaves a half-written set."""
        record = asdict(self)
        record["images"], record["labels"] = self.images.detach().cpu(), self.labels.detach().cpu()
        if self.targets is not None:
            record["targets"] = self.targets.detach().cpu()
        return runtime.atomic_save(record, path)

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no synthetic set at {path}; run its distill stage first (dvc repro)")
        return cls(**torch.load(path, map_location="cpu", weights_only=False))
