r"""CAFE+DSA — CAFE (cafe.py) with Differentiable Siamese Augmentation (Wang et al., CVPR 2022).

The same objective and dynamic bi-level loop, with one DSA draw per class applied to that class's real
and synthetic images before the features are taken, and DSA on the synthetic images in the network's
epochs (CAFE's `--method DSA`). The survey's CAFE row is this variant (published.py notes the plain one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from . import cafe

ID = "cafe_dsa"


@dataclass(frozen=True)
class Config(cafe.Config):
    dsa: bool = True


step = cafe.step        # the DSA behaviour comes from Config.dsa=True
distill = partial(cafe.distill, method=ID)
