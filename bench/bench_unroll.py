"""Peak memory and time of one trajectory-matching iteration as the unroll grows: MTT (the whole graph kept)
against TESLA (unroll.adjoint, one step's graph at a time), at syn_steps 10, 20, 40, 80.

Each (method, syn_steps) runs in its own process, so its peak is its own: the CUDA allocator's peak, or on the
CPU the growth of the process's max resident set over the measured iterations (interpreter, torch and data
excluded). The problem is Fashion-MNIST-shaped with the ConvNet and IPC 1 (10 images a step, MTT's IPC-1
batch); the expert segment is synthetic (a random start and a perturbed target), which changes no cost.

    python bench/bench_unroll.py                       # syn_steps 10 20 40 80
    python bench/bench_unroll.py --steps 10 20 --repeats 3
Writes bench/results-unroll-<device>.json, which the report draws (reports/costs/unroll.png).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def isolated(script: str, variant: str, steps: int, repeats: int) -> dict:
    """`script --one variant steps` in a fresh process (so the peak it reports is that cell's own)."""
    proc = subprocess.run([sys.executable, script, "--one", variant, str(steps), "--repeats", str(repeats)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.splitlines()[-1])


def sweep(script: str, measure, variants: tuple[str, ...], *, name: str, steps: list[int], repeats: int,
          argv: list[str] | None = None) -> None:
    """The benches' command line: every (variant, steps) in its own process, written to results-<name>-<device>.json;
    `--one variant steps` is the child's side (measure once, print the record)."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=steps)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)   # internal: variant, steps
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    rows = []
    for n in args.steps:
        for variant in variants:
            rows.append(isolated(script, variant, n, args.repeats))
            print(f"{variant:12s} {n:3d} steps: {rows[-1]['iteration_s']:7.2f} s/iteration, "
                  f"peak +{rows[-1]['peak_mem_mb']:7.0f} MB", flush=True)
    out = ROOT / "bench" / f"results-{name}-{rows[0]['device_type']}.json"
    out.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


def measure(method: str, syn_steps: int, repeats: int) -> dict:
    import torch

    from ddlib import nets, provenance, runtime, unroll

    runtime.set_threads()
    device = runtime.resolve_device("auto")
    gen = torch.Generator().manual_seed(0)
    fnet = unroll.FlatNet(nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(device))
    w0 = fnet.flatten()
    target = w0 + 0.01 * torch.randn(fnet.numel, generator=gen).to(device)
    x = torch.randn(10, 1, 28, 28, generator=gen).to(device).requires_grad_(True)
    y = torch.arange(10, device=device)
    lr = torch.tensor(0.01, device=device, requires_grad=True)
    runtime.reset_peak_memory(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    times = []
    for _ in range(repeats):
        p = unroll.plan(10, None, syn_steps, gen, "color_crop_cutout_flip_scale_rotate")
        start = time.perf_counter()
        if method == "mtt":
            ws = unroll.steps(fnet, w0, x, y, lr, p)
            torch.autograd.grad(unroll.distance(ws[-1], w0, target), (x, lr))
            del ws
        else:
            unroll.adjoint(fnet, w0, x, y, lr, p, lambda w: unroll.distance(w, w0, target))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = runtime.peak_memory_mb(device)
    return {"method": method, "syn_steps": syn_steps, "iteration_s": statistics.median(times),
            "peak_mem_mb": peak - base, "device_type": device.type, **provenance.record(device)}


def main() -> None:
    sweep(__file__, measure, ("mtt", "tesla"), name="unroll", steps=[10, 20, 40, 80], repeats=2)


if __name__ == "__main__":
    main()
