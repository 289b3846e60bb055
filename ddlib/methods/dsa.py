r"""DSA — Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

DC's gradient-matching objective with the *same* random differentiable transform A_w applied to the real
and the synthetic class batch, so matching happens under augmentation without the transform's randomness
creating a mismatch:

    min_S  sum_c D( grad_theta l(theta; A_w(S_c)), grad_theta l(theta; A_w(T_c)) )

The inner loop trains theta on DSA-augmented synthetic images. Official settings equal DC's except init
from real images (methods.md §2.2); evaluation uses DSA and 1000 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from . import dc

ID = "dsa"


@dataclass(frozen=True)
class Config(dc.Config):
    init: str = "real"
    dsa: bool = True


step = dc.step          # the DSA behaviour comes from Config.dsa=True
distill = partial(dc.distill, method=ID)
