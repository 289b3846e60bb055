"""Peak memory and time of one KIP step against the support size and the target batch, per kernel.

A step is K(X_s, X_s), K(X_t, X_s), the float64 Cholesky solve and the backward pass to the support pixels and
targets (kip.krr_loss). Each configuration runs in its own process so its peak is its own (CUDA allocator peak,
or on the CPU the growth of the max resident set over the step). Fashion-MNIST-shaped random images.

    python bench/bench_kernels.py                      # fc_ntk over support x target, conv_ntk at small sizes
Writes bench/results-kernels-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_unroll import _rss_mb  # noqa: E402  (the same resident-set reading)

CONFIGS = ([("fc_ntk", n, t) for n in (10, 100, 500) for t in (500, 5000)]
           + [("conv_ntk", n, t) for n, t in ((10, 10), (10, 50), (10, 100), (100, 10))])


def measure(kernel: str, support: int, target: int) -> dict:
    import torch

    from ddlib import kernels, provenance, runtime
    from ddlib.methods import kip

    runtime.set_threads()
    device = runtime.resolve_device("auto")
    gen = torch.Generator().manual_seed(0)
    x_s = torch.randn(support, 1, 28, 28, generator=gen).to(device).requires_grad_(True)
    y_s = kernels.centred_onehot(torch.arange(support) % 10, 10).to(device).requires_grad_(True)
    x_t = torch.randn(target, 1, 28, 28, generator=gen).to(device)
    y_t = kernels.centred_onehot(torch.arange(target) % 10, 10).to(device)
    runtime.reset_peak_memory(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    start = time.perf_counter()
    loss = kip.krr_loss(kernels.kernel_fn(kernel), x_s, y_s, x_t, y_t, 1e-6)
    torch.autograd.grad(loss, (x_s, y_s))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"kernel": kernel, "support": support, "target": target, "step_s": seconds,
            "peak_mem_mb": runtime.peak_memory_mb(device) - base, "device_type": device.type,
            **provenance.record(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)   # internal: kernel, support, target
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    rows = []
    for kernel, support, target in CONFIGS:
        proc = subprocess.run([sys.executable, __file__, "--one", kernel, str(support), str(target)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.splitlines()[-1]))
        print(f"{kernel:8s} support {support:4d} target {target:5d}: {rows[-1]['step_s']:8.3f} s/step, "
              f"peak +{rows[-1]['peak_mem_mb']:7.0f} MB", flush=True)
    out = ROOT / "bench" / f"results-kernels-{rows[0]['device_type']}.json"
    out.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
