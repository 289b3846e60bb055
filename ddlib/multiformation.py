"""Multi-formation (IDC, Kim et al. ICML 2022): one stored image decodes into factor^2 training images, its
factor x factor tiles each upsampled (bilinear) back to full size, and the storage accounting that compares such
sets with plain images at equal pixel budget (stored floats beside decoded images).

Used by idc, accdd and idm; `storage` is the record a SyntheticSet's provenance carries as "storage".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_tiling(im_size, factor: int) -> None:
    """An image side the factor does not divide cannot be tiled exactly: refuse before any work."""
    if any(side % factor for side in im_size):
        fits = [f for f in range(1, 5) if all(side % f == 0 for side in im_size)]
        raise ValueError(f"factor={factor} cannot tile {tuple(im_size)} images into equal tiles; "
                         f"use a factor that divides the image side: {fits}")


def decode(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) stored -> (f^2 N, C, H, W): tile (i, j) of every image, tile-major (IDC's decode_zoom)."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    th, tw = h // factor, w // factor
    tiles = [x[:, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(factor) for j in range(factor)]
    return F.interpolate(torch.cat(tiles), size=(h, w), mode="bilinear", align_corners=False)


def real_tiles(x_syn: torch.Tensor, real, factor: int, gen: torch.Generator) -> None:
    """Fill class-major stored images in place with f^2 random real images of their class each, every one
    nearest-downsampled into one tile (IDC's and IDM's real init), so that `decode` starts from real images."""
    spec, f = real.spec, factor
    ipc, (h, w) = len(x_syn) // spec.num_classes, spec.im_size
    with torch.no_grad():
        for c in range(spec.num_classes):
            x = real.sample_class(c, ipc * f * f, gen).to(x_syn.device)
            x = F.interpolate(x, size=(h // f, w // f)).view(f, f, ipc, spec.channels, h // f, w // f)
            x_syn[c * ipc:(c + 1) * ipc] = x.permute(2, 3, 0, 4, 1, 5).reshape(ipc, spec.channels, h, w)


def storage(n: int, shape, factor: int, num_classes: int) -> dict:
    """What the set stores and what it trains as (floats of pixels; hard labels are not counted)."""
    per_image = int(torch.tensor(shape).prod())
    return {"factor": factor, "stored_images": n, "stored_floats": n * per_image, "floats_per_image": per_image,
            "decoded_images": n * factor ** 2, "ipc_stored": n // num_classes,
            "ipc_decoded": n * factor ** 2 // num_classes}
