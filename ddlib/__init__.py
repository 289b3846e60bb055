"""ddbook's library: dataset distillation methods under one harness.

Modules, one concept each: data (datasets), zca (whitening), nets (ConvNet family), augment (DSA),
train (the one training loop), evaluate (the evaluation protocol), synset (SyntheticSet), loop (the one
distillation loop), methods (registry + one module per method), params (params.yaml + profiles),
report (tables and figures), published (the survey's numbers), runtime (device, threads, provenance).
"""

__version__ = "0.1.0"
