"""The soft-label track (track B; beyond-survey.md §1, §B1): a student trained on a synthetic set with a teacher's
soft labels, the teacher relabelling every augmented view on the fly (DD-Ranking's mode M; RDED's and SRe2L's
evaluations). Its numbers are knowledge distillation from a network that saw all the real data, so the report keeps
them in their own table, beside random real images and herding under the very same protocol, never in track A's.

Each step: a batch of the set, augmented (RandomResizedCrop to the image size with area scale in [rrc_min, 1] and
aspect in [3/4, 4/3], a horizontal flip where the dataset's DSA strategy flips, then with probability `cutmix_p`
a Beta(1, 1)-area box of another image of the batch pasted in), labelled by the teacher t, and the student s
minimises T^2 KL(softmax(t(x)/T) || softmax(s(x)/T)) with AdamW (lr, weight decay), the step size following
lr * 0.5 (1 + cos(pi e / 2E)) over epochs e < E (RDED's schedule: it ends at half the initial lr). The accuracy of
the last epoch is reported, mean ± std over seeds; nothing is selected by test accuracy (RDED keeps the best of its
last 20 % of epochs, DD-Ranking the best of every 20th: we do neither). `augment=False` trains on the set's images
as they are (no crop, flip or CutMix; the teacher still labels each): DD-Ranking's "no aug" run of its ARS.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import nets, params, provenance, runtime
from .data import LabeledImages
from .synset import SyntheticSet
from .train import accuracy


@dataclass(frozen=True)
class Protocol:
    teacher: str = "standard"           # a recipe of params.yaml's teachers section (the `teachers` stage)
    student: str = "convnet_bn"         # DD-Ranking's RDED config: ConvNet-3 with BatchNorm
    epochs: int = 300                   # RDED --re-epochs
    lr: float = 1e-3                    # AdamW ...
    weight_decay: float = 0.01          # ... weight decay
    batch_size: dict | int = None       # images per step: RDED's {1: 10, 10: 50, 50: 100}, x2 for 100+ classes
    temperature: float = 20.0           # KL temperature (RDED with CutMix)
    rrc_min: float = 1.0                # RandomResizedCrop area scale low end (RDED: 1/factor; factor 1 on CIFAR)
    cutmix_p: float = 1.0               # probability of CutMix per batch
    num_seeds: int | dict = 5           # or {ipc: n}, as evaluate.Protocol
    augment: bool = True                # False: no crop, flip or CutMix (the ARS "no aug" run)
    test_subset: int | None = None      # images per class of evaluate.py's fixed stratified subset (None: all)

    def __post_init__(self):
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", {1: 10, 10: 50, 50: 100})
        params.check_count(self.num_seeds, "num_seeds")
        if self.epochs < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"invalid soft-label protocol: {self}")
        if not 0 < self.rrc_min <= 1 or not 0 <= self.cutmix_p <= 1:
            raise ValueError(f"rrc_min must be in (0, 1] and cutmix_p in [0, 1]: {self}")
        nets.parse_name(self.student)

    def batch_for(self, ipc: int, num_classes: int) -> int:
        """RDED's batch per IPC (the nearest listed IPC at or below, else the smallest), doubled for 100+ classes."""
        table = self.batch_size if isinstance(self.batch_size, dict) else {1: self.batch_size}
        key = max((k for k in table if k <= ipc), default=min(table))
        return table[key] * (2 if num_classes >= 100 else 1)


def protocol(all_params: dict, profile: str | None = None) -> Protocol:
    return Protocol(**params.resolve(all_params["kd"], profile or all_params.get("profile", "quick")))


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Per image: a box of area fraction U(scale) and aspect ratio log-U(ratio), anywhere inside the image,
    resampled bilinearly to the full size (and mirrored with probability 1/2 when `flip`). A box that does not
    fit is the whole image (torchvision's fallback after its retries), so scale (1, 1) crops nothing."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=gen)
    aspect = torch.exp(torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen))
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)   # box sides as fractions of the image side
    fits = (w <= 1) & (h <= 1)
    w, h = torch.where(fits, w, 1.0), torch.where(fits, h, 1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)  # box centre, the box kept inside [-1, 1]
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    sx = torch.where(torch.rand(n, generator=gen) < 0.5, -w, w) if flip else w
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def paste_box(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CutMix's input side: a box of area fraction lambda ~ Beta(1, 1) (uniform) from another image of the batch
    (a random permutation) pasted at a random place. No label mixing: the teacher labels the mixed image."""
    n, _, h, w = x.shape
    lam = float(torch.rand(1, generator=gen))
    bh, bw = int(h * math.sqrt(lam)), int(w * math.sqrt(lam))
    top, left = int(torch.randint(h - bh + 1, (1,), generator=gen)), int(torch.randint(w - bw + 1, (1,), generator=gen))
    out = x.clone()
    out[:, :, top:top + bh, left:left + bw] = x[torch.randperm(n, generator=gen).to(x.device), :, top:top + bh,
                                                left:left + bw]
    return out


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)), mean over the batch."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature ** 2


def train_student(student: nn.Module, teacher: nn.Module, x: torch.Tensor, protocol: Protocol, *, batch_size: int,
                  flip: bool, gen: torch.Generator) -> list[float]:
    """The recipe of the module docstring on images x; returns the mean loss of each epoch."""
    opt = torch.optim.AdamW(student.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    history = []
    student.train()
    for epoch in range(protocol.epochs):
        for group in opt.param_groups:
            group["lr"] = protocol.lr * 0.5 * (1 + math.cos(math.pi * epoch / (2 * protocol.epochs)))
        order, total = torch.randperm(len(x), generator=gen).to(x.device), 0.0
        for start in range(0, len(x), batch_size):
            xb = x[order[start:start + batch_size]]
            if protocol.augment:
                xb = random_resized_crop(xb, gen, (protocol.rrc_min, 1.0), flip=flip)
                if len(xb) > 1 and float(torch.rand(1, generator=gen)) < protocol.cutmix_p:
                    xb = paste_box(xb, gen)
            with torch.no_grad():
                target = teacher(xb)
            loss = kd_loss(student(xb), target, protocol.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        history.append(total / len(x))
    return history


def evaluate(synset: SyntheticSet, test: LabeledImages, protocol: Protocol, teacher: nn.Module, *,
             device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """Train the protocol's `num_seeds` (at the set's IPC) students on the set with the teacher's soft labels; test
    accuracy per seed."""
    device = runtime.resolve_device(device)
    if synset.dataset != test.spec.name or synset.zca != test.zca:
        raise ValueError(f"the {synset.method!r} set ({synset.dataset}, zca={synset.zca}) does not match the test split "
                         f"({test.spec.name}, zca={test.zca})")
    if protocol.test_subset:
        test = test.subset(protocol.test_subset, torch.Generator().manual_seed(12345))   # evaluate.py's subset
    x, x_test, y_test = synset.images.to(device), test.x.to(device), test.y.to(device)
    spec, teacher = test.spec, teacher.to(device).eval()
    batch = protocol.batch_for(synset.ipc, spec.num_classes)
    accs, start = [], time.perf_counter()
    for i in range(params.per_ipc(protocol.num_seeds, synset.ipc, "kd num_seeds")):
        net_seed = seed * 1000 + i
        student = nets.make_net(protocol.student, spec.channels, spec.num_classes, spec.im_size, seed=net_seed).to(device)
        losses = train_student(student, teacher, x, protocol, batch_size=batch, flip="flip" in spec.dsa_strategy,
                               gen=torch.Generator().manual_seed(net_seed))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"student training diverged (loss {losses[-1]}) for seed {net_seed}")
        accs.append(accuracy(student, x_test, y_test))
        if progress:
            progress(i, accs[-1])
    return {"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc, "track": "soft",
            "synset_sha256": synset.content_hash(), "accs": accs, "mean": statistics.fmean(accs),
            "std": statistics.pstdev(accs), "seeds": [seed * 1000 + i for i in range(len(accs))],
            "protocol": {**asdict(protocol), "num_seeds": len(accs), "batch": batch, "test_images": len(x_test)},
            "wall_time_s": time.perf_counter() - start, **provenance.record(device)}
