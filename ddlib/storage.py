"""Storage accounting of a parameterised synthetic set (codes, bases, decoders): what it stores, in floats, beside
the images that training sees. Methods put the result in provenance "storage"; the report compares sets at equal
storage (IPC-equivalent = stored floats / floats per image / classes) and marks a set over its budget."""

from __future__ import annotations

import math


def account(parts: dict[str, int], decoded_images: int, spec) -> dict:
    """{<part>_floats, stored_floats, floats_per_image, ipc_stored, decoded_images, ipc_decoded} for stored
    `parts` (name -> floats) that decode to `decoded_images` images of the dataset `spec`."""
    per_image = spec.channels * math.prod(spec.im_size)
    total = sum(parts.values())
    return {**{f"{name}_floats": n for name, n in parts.items()}, "stored_floats": total,
            "floats_per_image": per_image, "ipc_stored": total / (per_image * spec.num_classes),
            "decoded_images": decoded_images, "ipc_decoded": decoded_images // spec.num_classes}
