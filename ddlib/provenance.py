"""What produced a result: code version, libraries, hardware, and what that means for reproducibility.

Every result file carries `record(device)`.

The code version is the last commit that changed the *source* (`SOURCE`: ddlib/, notebooks/, dvc.yaml,
params.yaml, the requirements): the pipeline's own outputs (dvc.lock, reports/, results/, runs/) and the docs
never make a result "dirty", so a commit that only adds results keeps the code version of the commit that
made them, and a fresh clone regenerates the same report. A result made from uncommitted source is
"<commit>+dirty.<hash of the diff>", so two dirty runs of the same edit are recognisably the same code.

On the CPU a result is bit-reproducible for the same code version, params, torch, CPU instruction set and
thread count (oneDNN's reductions depend on the last two: DC's second-order gradients differ at 1 and 2
threads). On CUDA it is not: DSA's grid_sample and index ops accumulate with atomics; cuDNN runs with
deterministic=True, benchmark=False (set by `runtime.resolve_device`), which narrows but does not close that.

Whether a recorded result is still current is sources.stale's question.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

SOURCE = ("ddlib", "notebooks", "dvc.yaml", "params.yaml", "requirements.txt", "requirements-lock.txt",
          "pyproject.toml")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True).stdout


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    return Path(__file__).resolve().parents[1]   # the checkout ddlib lives in


def diff_hash(root: str | Path | None = None) -> str:
    """sha256 (first 12 hex) of the uncommitted source: the diff against HEAD plus untracked source files."""
    root, digest = _root(root), hashlib.sha256()
    try:
        digest.update(_git(root, "diff", "HEAD", "--binary", "--", *SOURCE).encode())
    except subprocess.CalledProcessError:   # no commit yet: every file counts as untracked
        pass
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *SOURCE).split()
    for name in sorted(untracked):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()[:12]


def code_version(root: str | Path | None = None) -> str:
    """'<last commit that changed the source>' or '<that commit>+dirty.<diff hash>'; 'unknown' outside git."""
    root = _root(root)
    try:
        commit = _git(root, "log", "-1", "--format=%h", "--abbrev=10", "--", *SOURCE).strip() or "uncommitted"
    except subprocess.CalledProcessError:    # a repository without commits
        commit = "uncommitted"
    except OSError:                          # no git at all
        return "unknown"
    try:
        dirty = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *SOURCE).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty.{diff_hash(root)}" if dirty or commit == "uncommitted" else commit


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def record(device: torch.device) -> dict:
    """Code version, libraries and hardware: everything besides params and seed that decides the numbers."""
    out = {"code_version": code_version(), "torch": torch.__version__, "python": platform.python_version(),
           "device": device_name(device), "host": platform.node(), "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        out.update(bit_reproducible=False, cudnn_deterministic=torch.backends.cudnn.deterministic,
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   # TF32 (10-bit mantissas) moves a DM step's images ~1e-2 from fp32's (README, GPU)
                   tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        out["bit_reproducible"] = True
    return out
