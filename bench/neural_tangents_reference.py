"""Reference kernel values from neural-tangents (the library KIP's official code computes its kernels with), for
tests/test_kernels.py::test_kernels_match_neural_tangents. Not run by the tests or the pipeline: JAX is not a
ddbook dependency, so the values are computed once and committed (tests/golden/neural_tangents.json).

    python3 -m venv /tmp/ntenv && /tmp/ntenv/bin/pip install "jax[cpu]==0.4.30" "jaxlib==0.4.30" neural-tangents==0.6.5
    python bench/neural_tangents_reference.py inputs /tmp/nt      # with ddbook's venv: the inputs (torch draws)
    /tmp/ntenv/bin/python bench/neural_tangents_reference.py kernels /tmp/nt tests/golden/neural_tangents.json

Nets (NTK parameterisation, W_std sqrt 2, b_std 0.1, float64): `depth` x [Dense(512) -> Relu] -> Dense(1), and
`depth` x [Conv(128, 3x3, SAME) -> Relu -> AvgPool(2x2, stride 2)] -> Flatten -> Dense(1); a 1-channel 28x28
input is zero-padded by 2 first (nets.py's first conv has padding 3 = pad 2 + SAME).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

INPUTS = {"x8": ((5, 3, 8, 8), 1), "x28": ((5, 1, 28, 28), 0), "x7": ((4, 2, 7, 7), 2)}   # x7: odd sides   # name: (shape, torch generator seed)


def make_inputs(folder: Path) -> None:
    import numpy as np
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    for name, (shape, seed) in INPUTS.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        np.save(folder / f"{name}.npy", x.numpy())


def make_kernels(folder: Path, out: Path) -> None:
    import jax
    import neural_tangents as nt
    import numpy as np
    from neural_tangents import stax
    jax.config.update("jax_enable_x64", True)
    w, b = np.sqrt(2.0), 0.1
    record = {"neural_tangents": nt.__version__, "jax": jax.__version__, "W_std": float(w), "b_std": b,
              "inputs": {k: {"shape": list(s), "seed": seed} for k, (s, seed) in INPUTS.items()}, "kernels": {}}
    for name in INPUTS:
        x = np.load(folder / f"{name}.npy")
        for depth in (1, 2):
            layers = [layer for _ in range(depth) for layer in (stax.Dense(512, W_std=w, b_std=b), stax.Relu())]
            k = stax.serial(*layers, stax.Dense(1, W_std=w, b_std=b))[2](x.reshape(len(x), -1), None, ("nngp", "ntk"))
            record["kernels"][f"{name}/fc/{depth}"] = {"nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist()}
        xh = np.transpose(x, (0, 2, 3, 1))
        if xh.shape[1] == 28 and xh.shape[-1] == 1:
            xh = np.pad(xh, ((0, 0), (2, 2), (2, 2), (0, 0)))
        for depth in ((1, 2) if xh.shape[1] < 8 else (1, 2, 3)):
            layers = [layer for _ in range(depth) for layer in
                      (stax.Conv(128, (3, 3), padding="SAME", W_std=w, b_std=b), stax.Relu(),
                       stax.AvgPool((2, 2), strides=(2, 2)))]
            k = stax.serial(*layers, stax.Flatten(), stax.Dense(1, W_std=w, b_std=b))[2](xh, None, ("nngp", "ntk"))
            record["kernels"][f"{name}/conv/{depth}"] = {"nngp": np.asarray(k.nngp).tolist(),
                                                         "ntk": np.asarray(k.ntk).tolist()}
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "inputs":
        make_inputs(Path(sys.argv[2]))
    else:
        make_kernels(Path(sys.argv[2]), Path(sys.argv[3]))
