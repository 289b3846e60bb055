"""Peak memory and time of one backpropagation-through-training iteration (bptt.gradient, the objective of DD,
SLDD and RTP) as the unroll grows: plain BPTT (one graph over all N steps) against checkpointed BPTT
(segment = ceil(sqrt(N)): the states every segment, one segment's graph at a time), at N = 10, 50, 100, 200
steps of SGD with momentum 0.9 (RTP's inner loop).

Each (variant, N) runs in its own process, so its peak is its own: the CUDA allocator's peak, or on the CPU
the growth of the process's resident set over the measured iteration (interpreter, torch and data excluded).
The problem is Fashion-MNIST-shaped with the ConvNet: 10 synthetic images a step, a real batch of 256 for the
meta-loss.

    python bench/bench_bptt.py                       # N = 10 50 100 200
    python bench/bench_bptt.py --steps 10 50 --repeats 2
Writes bench/results-bptt-<device>.json, which the report draws (reports/costs/bptt-<device>.png).
"""

from __future__ import annotations

import math
import statistics
import time

from bench_unroll import _rss_mb, sweep   # the same isolation, memory accounting and command line

VARIANTS = ("plain", "checkpointed")


def measure(variant: str, n: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ddlib import bptt, nets, provenance, runtime, unroll

    runtime.set_threads()
    device = runtime.resolve_device("auto")
    gen = torch.Generator().manual_seed(0)
    fnet = unroll.FlatNet(nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(device))
    w0 = fnet.flatten()
    x = torch.randn(10, 1, 28, 28, generator=gen).to(device).requires_grad_(True)
    y = torch.arange(10, device=device)
    x_real, y_real = torch.randn(256, 1, 28, 28, generator=gen).to(device), torch.arange(256, device=device) % 10
    raw = torch.full((n,), -4.0, device=device, requires_grad=True)
    p = unroll.Plan([torch.arange(10, device=device)] * n, [None] * n)
    segment = math.ceil(math.sqrt(n)) if variant == "checkpointed" else None
    runtime.reset_peak_memory(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bptt.gradient(fnet, w0, x, y, F.softplus(raw), p, lambda w: F.cross_entropy(fnet(w, x_real), y_real), [x, raw],
                    momentum=0.9, segment=segment)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = runtime.peak_memory_mb(device)
    return {"variant": variant, "steps": n, "segment": segment, "iteration_s": statistics.median(times),
            "peak_mem_mb": peak - base, "device_type": device.type, **provenance.record(device)}


def main() -> None:
    sweep(__file__, measure, VARIANTS, name="bptt", steps=[10, 50, 100, 200], repeats=1)


if __name__ == "__main__":
    main()
