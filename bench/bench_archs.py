"""What cross-architecture evaluation costs: each network of nets.py trained by the evaluation protocol.

For each architecture (Fashion-MNIST, 1 x 28 x 28): parameters, FLOPs of one training image (forward and
backward, torch.utils.flop_counter), and the time of the quick profile's evaluation of one seed: 25 epochs with
DSA on `ipc` random real images per class (IPC 1 and 10), then the 2,000-image stratified test subset, with the
test accuracy it reached (random real images, a fixed draw: a cost reference, not a method's result). Picks the
`xarch.archs` that fit a budget: the quick profile's choice (ResNet-18) comes from this table.

    python bench/bench_archs.py                                   # every family's reference variants
    python bench/bench_archs.py --archs mlp resnet18 --ipcs 1
Writes bench/results-archs-<device>.json and prints a markdown table. Never used in tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddlib import augment, data, evaluate, nets, params, provenance, runtime  # noqa: E402
from ddlib.train import accuracy, fit  # noqa: E402

ARCHS = ["convnet", "convnet_bn", "mlp", "lenet", "alexnet", "alexnet_bn", "vgg11", "vgg11_bn", "resnet10",
         "resnet18", "resnet18_bn", "resnet18_ap", "densenet121", "resnet152"]


def train_flops(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one forward + backward pass, per image."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    args = parser.parse_args(argv)
    runtime.set_threads()
    device = runtime.resolve_device("auto")
    protocol = evaluate.protocol(params.load(ROOT / "params.yaml"), "quick")
    data.prepare("fashion_mnist", root=args.data_root)
    train = data.load("fashion_mnist", "train", root=args.data_root)
    test = evaluate.test_split(data.load("fashion_mnist", "test", root=args.data_root), protocol)
    x_test, y_test = test.x.to(device), test.y.to(device)
    strategy = train.spec.dsa_strategy
    rows = []
    for arch in args.archs:
        net = nets.make_net(arch, 1, 10, (28, 28), seed=0).to(device)
        row = {"arch": arch, "params": sum(p.numel() for p in net.parameters()),
               "train_mflop_per_image": train_flops(net, train.x[:2].to(device), train.y[:2].to(device)) / 1e6}
        for ipc in args.ipcs:
            real = train.subset(ipc, torch.Generator().manual_seed(ipc))
            net = nets.make_net(arch, 1, 10, (28, 28), seed=0).to(device)
            start = time.perf_counter()
            fit(net, real.x.to(device), real.y.to(device), epochs=protocol.train_epochs, lr=protocol.lr,
                batch_size=protocol.batch_size, momentum=protocol.momentum, weight_decay=protocol.weight_decay,
                decay_at=protocol.train_epochs // 2 + 1, gen=torch.Generator().manual_seed(0),
                aug=lambda xb, gen: augment.dsa(xb, strategy, gen, siamese=False))
            trained = time.perf_counter() - start
            start = time.perf_counter()
            acc = accuracy(net, x_test, y_test)
            row[f"ipc{ipc}"] = {"train_s": trained, "test_s": time.perf_counter() - start, "accuracy": acc}
        rows.append(row)
        print(f"{arch}: " + ", ".join(f"IPC {i} {row[f'ipc{i}']['train_s'] + row[f'ipc{i}']['test_s']:.1f} s "
                                      f"({row[f'ipc{i}']['accuracy']:.1f} %)" for i in args.ipcs), flush=True)
    record = {"protocol": {"epochs": protocol.train_epochs, "dsa": True, "test_images": len(y_test),
                           "seeds": 1, "images": "random real, seeded"}, "rows": rows, **provenance.record(device)}
    out = ROOT / "bench" / f"results-archs-{device.type}.json"
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print("\n| arch | params | train MFLOP / image | " + " | ".join(
        f"IPC {i} train (s) | IPC {i} test (s) | IPC {i} acc (%)" for i in args.ipcs) + " |")
    print("|---|---|---|" + "---|---|---|" * len(args.ipcs))
    for r in rows:
        print(f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {r['train_mflop_per_image']:.0f} | " + " | ".join(
            f"{r[f'ipc{i}']['train_s']:.1f} | {r[f'ipc{i}']['test_s']:.1f} | {r[f'ipc{i}']['accuracy']:.1f}"
            for i in args.ipcs) + " |")
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
