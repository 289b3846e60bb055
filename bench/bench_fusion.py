"""Fused multi-seed evaluation and the other issue-7 directions that did not make ddlib, measured on this machine.

Units (Fashion-MNIST shapes, ConvNet, batch = the whole set as the evaluation protocol trains it):
  stacked     k evaluation models as one network (grouped convolutions, one GroupNorm over k x 128 channels, a
              batched head) trained on k independently shuffled and augmented batches, against k models one
              after the other; one SGD step each (same maths: the losses add, the parameters are disjoint);
              and the k models' test pass over 2,000 images, stacked against sequential.
  fit_many    what ddlib adopted (train.fit_many, evaluate's `stack_seeds`, on by default on a GPU): k evaluation
              ConvNets trained for a few epochs with DSA by torch.func (stacked parameters, vmapped forward),
              against k `fit` calls.
  bf16        a training step under torch.autocast(bfloat16) against float32.
  layout      the 2,000-image test pass in channels_last against NCHW.
Each pair alternates in one process, median of `--repeats` after a warm-up; ratios > 1 mean the candidate is
faster. Writes bench/results-fusion-<device>.json. Never used in tests.

    python bench/bench_fusion.py [--k 2 5] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_units import timed  # noqa: E402
from ddlib import nets, provenance, runtime  # noqa: E402


class Stacked(nn.Module):
    """k ConvNets (depth 3, width 128, instance norm, ReLU, average pooling) as one: model i owns channel block i."""

    def __init__(self, models: list[nets.ConvNet]):
        super().__init__()
        self.k = k = len(models)
        convs = [[m for m in net.features if isinstance(m, nn.Conv2d)] for net in models]
        self.pads = [getattr(c, "pad", 0) for c in convs[0]]
        self.convs = nn.ModuleList()
        for layer in range(len(convs[0])):
            c0 = convs[0][layer]
            conv = nn.Conv2d(c0.in_channels * k, c0.out_channels * k, 3, padding=c0.padding, groups=k)
            with torch.no_grad():
                conv.weight.copy_(torch.cat([c[layer].weight for c in convs]))
                conv.bias.copy_(torch.cat([c[layer].bias for c in convs]))
            self.convs.append(conv)
        norms = [[m for m in net.features if isinstance(m, nn.GroupNorm)] for net in models]
        self.norms = nn.ModuleList()
        for layer in range(len(norms[0])):
            ch = norms[0][layer].num_channels * k
            gn = nn.GroupNorm(ch, ch)
            with torch.no_grad():
                gn.weight.copy_(torch.cat([n[layer].weight for n in norms]))
                gn.bias.copy_(torch.cat([n[layer].bias for n in norms]))
            self.norms.append(gn)
        self.head_w = nn.Parameter(torch.stack([m.classifier.weight.detach() for m in models]))   # (k, classes, d)
        self.head_b = nn.Parameter(torch.stack([m.classifier.bias.detach() for m in models]))
        self.pool = nets.AvgPool2()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, k * C, H, W), model i's images in channel block i -> logits (k, N, classes)."""
        for conv, norm, pad in zip(self.convs, self.norms, self.pads):
            x = self.pool(F.relu(norm(conv(F.pad(x, (pad,) * 4) if pad else x))))
        feats = x.reshape(x.shape[0], self.k, -1).transpose(0, 1)                            # (k, N, d)
        return torch.baddbmm(self.head_b.unsqueeze(1), feats, self.head_w.transpose(1, 2))


DEVICE = torch.device("cpu")   # main() sets it from --device


def median_pair(a, b, repeats: int) -> tuple[float, float]:
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            out.append(timed(fn, DEVICE))
    return statistics.median(ta), statistics.median(tb)


def stacked_units(k: int, n: int, test: torch.Tensor | None, repeats: int) -> list[dict]:
    """One SGD step of k models, stacked vs sequential; and their test pass over `test` unless it is None."""
    models = [nets.make_net("convnet", 1, 10, (28, 28), seed=i).to(DEVICE) for i in range(k)]
    stacked = Stacked(copy.deepcopy(models)).to(DEVICE)
    xs = [torch.randn(n, 1, 28, 28).to(DEVICE) for _ in range(k)]
    y = torch.arange(n, device=DEVICE) % 10
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in models]
    opt_s = torch.optim.SGD(stacked.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xcat = torch.cat(xs, 1)

    def sequential_step():
        for m, opt, x in zip(models, opts, xs):
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def stacked_step():
        logits = stacked(xcat)
        loss = F.cross_entropy(logits.reshape(-1, 10), y.repeat(k), reduction="sum") / n   # sum of k means
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()

    with torch.no_grad():   # the same maths: stacked logits equal the k models' before any step
        gap = max((stacked(xcat)[i] - models[i](xs[i])).abs().max().item() for i in range(k))
    seq, fused = median_pair(sequential_step, stacked_step, repeats)
    rows = [{"unit": f"{k} evaluation models, one SGD step on {n} images each", "reference_s": seq,
             "candidate": "stacked (grouped convolutions)", "candidate_s": fused, "max_logit_gap_at_init": gap}]
    if test is None:
        return rows
    with torch.inference_mode():
        tcat = test.repeat(1, k, 1, 1)
        seq, fused = median_pair(lambda: [m(test) for m in models], lambda: stacked(tcat), repeats)
    rows.append({"unit": f"{k} evaluation models, test pass over {len(test)} images", "reference_s": seq,
                 "candidate": "stacked (grouped convolutions)", "candidate_s": fused})
    return rows


def fit_many_unit(k: int, n: int, epochs: int, repeats: int) -> dict:
    from ddlib import augment, train
    x, y = torch.randn(n, 1, 28, 28).to(DEVICE), (torch.arange(n) % 10).to(DEVICE)
    dsa = lambda xb, g: augment.dsa(xb, "color_crop_cutout_flip_scale_rotate", g, siamese=False)  # noqa: E731
    fresh = lambda: [nets.make_net("convnet", 1, 10, (28, 28), seed=i).to(DEVICE) for i in range(k)]  # noqa: E731
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(k)]  # noqa: E731
    kw = dict(epochs=epochs, lr=0.01, decay_at=epochs // 2 + 1, aug=dsa)
    seq, fused = median_pair(lambda: [train.fit(m, x, y, gen=g, **kw) for m, g in zip(fresh(), gens())],
                             lambda: train.fit_many(fresh(), x, y, gens=gens(), **kw), repeats)
    return {"unit": f"{k} evaluation models, {epochs} epochs with DSA on {n} images each", "reference_s": seq,
            "candidate": "train.fit_many (torch.func)", "candidate_s": fused}


def bf16_unit(n: int, repeats: int) -> dict:
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(DEVICE)
    x, y = torch.randn(n, 1, 28, 28).to(DEVICE), torch.arange(n, device=DEVICE) % 10
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(bf16: bool):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ref, cand = median_pair(lambda: step(False), lambda: step(True), repeats)
    return {"unit": f"one training step on {n} images", "reference_s": ref, "candidate": "autocast bfloat16",
            "candidate_s": cand}


def layout_unit(test: torch.Tensor, repeats: int) -> dict:
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0).to(DEVICE).eval()
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    tcl = test.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, cand = median_pair(lambda: [net(t) for t in test.split(500)], lambda: [cl(t) for t in tcl.split(500)],
                                repeats)
    return {"unit": f"test pass over {len(test)} images (batch 500)", "reference_s": ref,
            "candidate": "channels_last", "candidate_s": cand}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 5], help="models per stack (quick: 2, paper: 5 seeds)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    runtime.set_threads()
    global DEVICE
    DEVICE = device = runtime.resolve_device(args.device)
    torch.manual_seed(0)
    test = torch.randn(2000, 1, 28, 28).to(device)
    rows = []
    for k in args.k:
        for n in (10, 100):
            rows += stacked_units(k, n, test if n == 100 else None, args.repeats)   # one test pass per k
            rows.append(fit_many_unit(k, n, 10, args.repeats))
    rows += [bf16_unit(100, args.repeats), layout_unit(test, args.repeats)]
    print("| unit | reference (s) | candidate | candidate (s) | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["reference_s"] / r["candidate_s"]
        print(f"| {r['unit']} | {r['reference_s']:.4f} | {r['candidate']} | {r['candidate_s']:.4f} | "
              f"{r['speedup']:.2f}x |")
    out = ROOT / "bench" / f"results-fusion-{device.type}.json"
    out.write_text(json.dumps({"rows": rows, "repeats": args.repeats, **provenance.record(device)}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
