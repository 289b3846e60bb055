"""ddbook's library: dataset distillation methods under one harness.

Modules, one concept each: data (datasets), zca (whitening), nets (the networks: ConvNet family, MLP, LeNet,
AlexNet, VGG, ResNets, DenseNet), augment (DSA), train (the one training loop), evaluate (the evaluation
protocol), xarch (the protocol on other architectures), synset (SyntheticSet), loop (the one
distillation loop), methods (lazy registry + one module per method), params (params.yaml + profiles),
results (the result files between stages), report (reports/ pages), figures (plots and image grids),
published (the survey's numbers), provenance (what produced a result), sources (which code each stage runs,
and which stages are stale), plan (what `dvc repro` will run), repro (`make repro`: `dvc repro` without the
per-stage start-up), runtime (device, threads, memory).
"""

__version__ = "0.1.0"
