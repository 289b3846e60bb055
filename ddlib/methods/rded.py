r"""RDED — On the Diversity and Realism of Distilled Dataset (Sun, Shi, Yu & Lin, CVPR 2024).

No gradient reaches any pixel: RDED *selects and stitches* real patches scored by an observer network f (a teacher
trained on the real data, the `teachers` stage). Per class c (beyond-survey.md §A2, LINs-lab/RDED
synthesize/utils.py):

1. draw `candidates` real images of c and from each `num_crop` RandomResizedCrops x_{i,j} (area in `crop_scale`);
2. realism: score every crop by the observer's cross-entropy  s(x) = -log softmax(f(x))_c  (lower = more
   typical of c) and keep each image's best crop  x_i* = argmin_j s(x_{i,j});
3. diversity: of the kept crops (one per image, so from different images) take the ipc * factor^2 lowest-scored,
   each downsampled by `factor`, and tile factor x factor of them into one image.

factor 2 on ImageNet (4 patches an image); RDED's CIFAR scripts use factor 1 (plain selected crops), the default
here for 28-32 px images. The set's labels are hard (the classic track trains on them); in the soft-label track
(kd.py) the teacher relabels every augmented view, as RDED's evaluation does. RDED's own evaluation pairs the set
with *its* observer; the soft-label stage uses the `kd` section's teacher (the same `standard` recipe by default).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import kd, loop, runtime, teachers
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "rded"


@dataclass(frozen=True)
class Config:
    teacher: str = "standard"           # the observer: a recipe of params.yaml's teachers section
    candidates: int = 300               # --mipc: real images drawn per class
    num_crop: int = 5                   # --num-crop: RandomResizedCrops scored per image
    factor: int = 1                     # --factor: crops tiled factor x factor per image (CIFAR scripts: 1)
    crop_scale: tuple = (0.08, 1.0)     # area range of the crops [R: RDED's --min/--max-scale-crops defaults]
    batch: int = 500                    # crops scored per observer call (memory only)

    def __post_init__(self):
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        if min(self.candidates, self.num_crop, self.factor, self.batch) < 1 or not 0 < self.crop_scale[0] <= \
                self.crop_scale[1] <= 1:
            raise ValueError(f"invalid RDED config: {self}")


def inputs(cfg: Config, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return [teachers.path_of(cfg.teacher, data_root, dataset)]


@torch.no_grad()
def crop_scores(observer: torch.nn.Module, crops: torch.Tensor, label: int, batch: int) -> torch.Tensor:
    """-log p(label | crop) under the observer, one score per crop (in eval mode)."""
    logits = torch.cat([observer(part) for part in crops.split(batch)])
    return -F.log_softmax(logits, dim=1)[:, label]


def select(scores: torch.Tensor, count: int) -> torch.Tensor:
    """(images, num_crop) scores -> (count, 2) [image, crop] of the best crop of each image, best images first."""
    best, which = scores.min(1)
    order = torch.argsort(best, stable=True)[:count]
    return torch.stack([order, which[order]], 1)


def tile(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """(n * factor^2, C, H, W) full-size crops -> (n, C, H, W): each downsampled by factor, factor x factor per image."""
    if factor == 1:
        return patches
    c, h, w = patches.shape[1:]
    small = F.interpolate(patches, size=(h // factor, w // factor), mode="bilinear", antialias=True, align_corners=False)
    grid = small.view(-1, factor, factor, c, h // factor, w // factor)          # (n, rows, cols, C, h', w')
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h // factor * factor, w // factor * factor)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint=None,
            data_root: str | Path = "data") -> SyntheticSet:
    start, gen = time.perf_counter(), torch.Generator().manual_seed(seed)
    spec = real.spec
    if spec.im_size[0] % cfg.factor:
        raise ValueError(f"factor {cfg.factor} does not divide the {spec.im_size[0]} px images")
    observer = teachers.load(cfg.teacher, data_root=data_root, spec=spec, device=device)
    need = ipc * cfg.factor ** 2
    images, scores = [], []
    for c in range(spec.num_classes):
        x = real.sample_class(c, max(cfg.candidates, need), gen).to(device)
        crops = torch.stack([kd.random_resized_crop(x, gen, cfg.crop_scale, flip=False) for _ in range(cfg.num_crop)],
                            1)                                                     # (images, num_crop, C, H, W)
        s = crop_scores(observer, crops.flatten(0, 1), c, cfg.batch).view(len(x), cfg.num_crop)
        picked = select(s, need)
        images.append(tile(crops[picked[:, 0], picked[:, 1]], cfg.factor))
        scores.append(s.min(1).values[picked[:, 0]].mean().item())
    x = torch.cat(images).cpu()
    y = torch.arange(spec.num_classes).repeat_interleave(ipc)
    return loop.finish(x, y, method=ID, real=real, ipc=ipc, params=asdict(cfg), device=device, seed=seed,
                       wall_time_s=time.perf_counter() - start, peak_mem_mb=runtime.peak_memory_mb(device),
                       extra={"mean_selected_score": sum(scores) / len(scores)})
