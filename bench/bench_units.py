"""Units of work, fast (ddlib) vs the per-class reference (bench/reference.py), timed in one process.

Units (Fashion-MNIST, the issue-7 table's settings): a DM iteration at IPC 10 with batch_real 256 and DSA; a DC
and a DSA iteration at IPC 1 with batch_real 256 (paper loops (1, 1)); a DC and a DSA iteration at the quick
profile's IPC-10 settings; one evaluation model at IPC 10 (`--eval-epochs` epochs with DSA, then the full 10k
test). Fast and reference runs alternate, `--repeats` times each after a warm-up, and the median is kept, so both
see the same machine state. Each unit's FLOPs (convolutions and matrix products, forward and every backward,
counted by torch.utils.flop_counter on one run) give the achieved GFLOP/s, shown against the fp32 matmul peak
measured in the same run (torch.mm 4096 x 4096).

    python bench/bench_units.py                     # all units
    python bench/bench_units.py --units dm eval --repeats 5
Writes bench/results-units-<device>.json and prints a markdown table. Never used in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import reference  # noqa: E402

from ddlib import augment, data, evaluate, loop, methods, nets, params, provenance, runtime  # noqa: E402
from ddlib.train import fit  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeats=5) -> float:
    fn()
    return min(timed(fn, device) for _ in range(repeats))


def machine_peak(device) -> dict:
    """fp32 GFLOP/s of the best large kernels here: torch.mm 4096 x 4096, and a 3x3 convolution 256 -> 256
    channels on 32 x 32 maps (oneDNN's convolutions beat MKL's matmul on some CPUs). The larger is the peak."""
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    x, w = torch.randn(32, 256, 32, 32, device=device), torch.randn(256, 256, 3, 3, device=device)
    with torch.inference_mode():
        mm = 2 * 4096 ** 3 / best_time(lambda: a @ b, device) / 1e9
        conv = 2 * 32 * 256 * 256 * 9 * 32 * 32 / best_time(lambda: F.conv2d(x, w, padding=1), device) / 1e9
    return {"matmul_gflops": mm, "conv_gflops": conv, "peak_gflops": max(mm, conv)}


def method_unit(name: str, ipc: int, overrides: dict, real, device):
    """(fast, reference) callables: one iteration each, from the same fresh state and seed."""
    all_params = params.load(ROOT / "params.yaml")
    cfg = dataclasses.replace(methods.make_config(name, params.method_params(all_params, name, "paper")), **overrides)
    module = methods.get(name)
    ref_step = reference.dm_step if name == "dm" else reference.dc_step

    def make(step):
        def run():
            state = loop.init_state(real, ipc, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                                    gen=torch.Generator().manual_seed(0), device=device)
            return step(state, real, cfg)
        return run
    return make(module.step), make(ref_step)


def eval_unit(real, test, epochs: int, device):
    """One evaluation model on a random IPC-10 set: `epochs` epochs of the protocol with DSA, then the test."""
    synset = methods.distill("random", real, ipc=10, device=device)
    protocol = evaluate.Protocol(epochs=epochs, num_seeds=1)

    def fast():
        return evaluate.evaluate(synset, test, protocol, device=device)["mean"]

    def ref():
        return reference.evaluate(synset, test, protocol, device=device)["mean"]
    return fast, ref


def compile_probe(real, device, epochs: int = 20) -> dict:
    """torch.compile (inductor), measured and not adopted: the evaluation network's training (IPC 10, DSA) and
    DM's real-side embedding of 2,560 images, eager vs compiled. `*_first_s` is the first call, compilation
    included (faster when inductor's on-disk cache already holds the graph, as after any earlier run here)."""
    import os
    import tempfile
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "torchinductor_" +
                                                                   os.environ.get("USER", "root")))
    out = {"inductor_cache_existed": os.path.isdir(cache)}
    synset = methods.distill("random", real, ipc=10, device=device)
    x, y = synset.images.to(device), synset.labels.to(device)
    aug = (lambda xb, gen: augment.dsa(xb, real.spec.dsa_strategy, gen))
    x_real = real.x[:2560].to(device)
    for name, wrap in (("eager", lambda m: m), ("compiled", torch.compile)):
        net = wrap(nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(device))
        first = timed(lambda: fit(net, x, y, epochs=1, lr=0.01, aug=aug), device)
        steady = timed(lambda: fit(net, x, y, epochs=epochs, lr=0.01, aug=aug), device) / epochs
        embedder = nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(device).requires_grad_(False)
        embed = wrap(embedder.embed)

        def real_side():
            with torch.inference_mode():
                return torch.cat([embed(xb) for xb in x_real.split(nets.CPU_CHUNK)])
        first_fwd = timed(real_side, device)
        out[name] = {"train_first_s": first, "train_epoch_s": steady, "embed_first_s": first_fwd,
                     "embed_2560_s": best_time(real_side, device, repeats=3)}
    out["train_speedup"] = out["eager"]["train_epoch_s"] / out["compiled"]["train_epoch_s"]
    out["embed_speedup"] = out["eager"]["embed_2560_s"] / out["compiled"]["embed_2560_s"]
    return out


def vmap_probe(real, device, sizes=(16, 64, 256)) -> dict:
    """DC's real side, measured and not adopted: the ten per-class gradients as a loop of autograd.grad calls
    vs one torch.func.vmap(grad(...)) over the classes, at several real batches per class."""
    from torch.func import functional_call, grad, vmap
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(device)
    params_ = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(net, p, (xb,)), yb)
    batched = vmap(grad(loss), in_dims=(None, 0, 0))
    out = {}
    for n in sizes:
        x = torch.stack([real.x[real.sample_index(c, n, torch.Generator().manual_seed(c))] for c in range(10)])
        y = torch.arange(10, device=device)[:, None].expand(10, n)
        per_class = lambda: [torch.autograd.grad(F.cross_entropy(net(x[c]), y[c]), list(net.parameters()))  # noqa: E731
                             for c in range(10)]
        out[n] = {"loop_s": best_time(per_class, device, 3), "vmap_s": best_time(lambda: batched(params_, x, y),
                                                                                   device, 3)}
    return out


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", nargs="*", default=["dm", "dc", "dsa", "dc_quick", "dsa_quick", "eval"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-epochs", type=int, default=100)
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (compile_probe)")
    ap.add_argument("--vmap", action="store_true", help="also measure vmap per-class gradients (vmap_probe)")
    args = ap.parse_args()
    runtime.set_threads()
    device = runtime.resolve_device("auto")
    real = data.load("fashion_mnist", "train", root=args.data_root).to(device)
    test = data.load("fashion_mnist", "test", root=args.data_root).to(device)
    units = {
        "dm": lambda: method_unit("dm", 10, {"batch_real": 256}, real, device),
        "dc": lambda: method_unit("dc", 1, {"batch_real": 256}, real, device),
        "dsa": lambda: method_unit("dsa", 1, {"batch_real": 256}, real, device),
        "dc_quick": lambda: method_unit("dc", 10, {"batch_real": 16, "loops": {10: (10, 1)}}, real, device),
        "dsa_quick": lambda: method_unit("dsa", 10, {"batch_real": 16, "loops": {10: (10, 1)}}, real, device),
        "eval": lambda: eval_unit(real, test, args.eval_epochs, device),
    }
    probe = machine_peak(device)
    peak = probe["peak_gflops"]
    print(f"fp32 peak: {peak:.0f} GFLOP/s (matmul {probe['matmul_gflops']:.0f}, 3x3 conv {probe['conv_gflops']:.0f}; "
          f"{provenance.record(device)['device']})")
    print("| unit | reference s | fast s | speed-up | GFLOP | fast GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.units:
        fast, ref = units[name]()
        loss_fast, loss_ref = fast(), ref()   # warm-up, and the values both give
        work = flops(fast)
        t_fast, t_ref = [], []
        for _ in range(args.repeats):
            t_ref.append(timed(ref, device))
            t_fast.append(timed(fast, device))
        row = {"unit": name, "reference_s": statistics.median(t_ref), "fast_s": statistics.median(t_fast),
               "gflop": work / 1e9, "value_fast": float(loss_fast), "value_reference": float(loss_ref)}
        row["speedup"] = row["reference_s"] / row["fast_s"]
        row["fast_gflops"] = row["gflop"] / row["fast_s"]
        row["fraction_of_peak"] = row["fast_gflops"] / peak
        rows.append(row)
        print(f"| {name} | {row['reference_s']:.3f} | {row['fast_s']:.3f} | {row['speedup']:.2f}x | {row['gflop']:.1f} "
              f"| {row['fast_gflops']:.0f} | {100 * row['fraction_of_peak']:.0f} % |", flush=True)
    compiled = compile_probe(real, device) if args.compile else None
    if compiled:
        e, c = compiled["eager"], compiled["compiled"]
        print(f"torch.compile: eval training epoch {e['train_epoch_s']:.3f} -> {c['train_epoch_s']:.3f} s "
              f"({compiled['train_speedup']:.2f}x; first call {c['train_first_s']:.1f} s), DM real side "
              f"{e['embed_2560_s']:.3f} -> {c['embed_2560_s']:.3f} s ({compiled['embed_speedup']:.2f}x; first call "
              f"{c['embed_first_s']:.1f} s); inductor cache existed: {compiled['inductor_cache_existed']}")
    vmapped = vmap_probe(real, device) if args.vmap else None
    if vmapped:
        print("per-class real gradients, loop vs vmap (s): " + ", ".join(
            f"{n}/class {v['loop_s']:.3f} vs {v['vmap_s']:.3f}" for n, v in vmapped.items()))
    out = ROOT / "bench" / f"results-units-{device.type}.json"
    out.write_text(json.dumps({**probe, "compile": compiled, "vmap": vmapped, "eval_epochs": args.eval_epochs, "repeats": args.repeats,
                               **provenance.record(device), "rows": rows}, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
