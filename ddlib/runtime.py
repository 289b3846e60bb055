"""Where and how code runs: device resolution, CPU threads, resource accounting (provenance: provenance.py)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is validated and returned.

    Choosing CUDA also fixes cuDNN to deterministic kernels without autotuning (provenance.py says what
    that does and does not make reproducible).
    """
    if isinstance(device, str):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        if device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda[:N]'")
        device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return device


def set_threads(n: int | None = None) -> int:
    """Use every core for intra-op work (the matmul peak doubles from 1 to 2 threads on the dev box).

    The thread count is part of what makes a CPU result bit-reproducible (provenance.py): DDLIB_THREADS=2
    reproduces numbers made on a 2-core machine on a bigger one with the same instruction set.
    """
    n = n or int(os.environ.get("DDLIB_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save through a temporary file beside `path` and a rename: a run killed mid-write leaves the previous
    file (or none), never a half-written one. Every checkpoint, expert, generator and synthetic set is saved so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run: CUDA allocator peak on GPU, else the process's max resident set size.

    On CPU the figure is process-wide (includes the interpreter and the dataset); each pipeline stage runs
    in its own kernel process, so it is the stage's peak.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Timer:
    """Wall-clock stopwatch that can be paused around work that should not count (e.g. checkpoint I/O)."""

    def __init__(self, elapsed: float = 0.0):
        self.elapsed, self._start = elapsed, None

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed += time.perf_counter() - self._start
        self._start = None

    def now(self) -> float:
        return self.elapsed + (time.perf_counter() - self._start if self._start is not None else 0.0)


def project_root(start: str | Path | None = None) -> Path:
    """The workbook root: $DVC_ROOT when DVC runs the stage, else the nearest folder holding dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    raise FileNotFoundError(f"no dvc.yaml in {here} or its parents; run from inside the ddbook checkout")
