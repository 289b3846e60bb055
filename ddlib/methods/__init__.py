"""Method registry: id (lowercase paper acronym) -> module with `Config` and `distill`.

Every method module exposes `ID`, a frozen `Config` dataclass whose defaults are the paper's values, and
`distill(real, cfg, *, ipc, device, seed, checkpoint=None) -> SyntheticSet`. Four shapes occur: selection
(random, herding, kcenter), single-level matching (dm), bilevel matching with an inner loop (dc, dsa, dcc; idc
and accdd train the matching net on real data; cafe, cafe_dsa align features),
trajectory matching against expert trajectories (mtt, ftd, tesla, datm) and kernel ridge regression (kip,
frepo, rfad; these may add `own_evaluation`, their papers' recipe, reported beside the common protocol).

A method that reads shared inputs besides the dataset (expert buffers, a ZCA transform) says which in
`inputs(cfg, *, dataset, ipc, data_root) -> [paths]` and takes `data_root` in `distill`; the pipeline's
`inputs` stage fingerprints those files so that its stages rerun when, and only when, they change.

The registry is lazy: a method's module is imported when it is asked for, so running one method never
imports (or depends on) another family's code; sources.py relies on that to give each pipeline stage
exactly the files it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from types import ModuleType

from .. import params as params_
from .. import runtime
from ..data import LabeledImages
from ..synset import SyntheticSet


def _discover() -> tuple[str, ...]:
    """Every module here that declares `ID = "<its file name>"` at top level (shared pieces such as coreset.py
    declare none). Read from the files, not imported, so adding a method edits no file other methods run."""
    here = Path(__file__).parent
    return tuple(sorted(p.stem for p in here.glob("*.py")
                        if re.search(rf'^ID = "{re.escape(p.stem)}"$', p.read_text(), re.MULTILINE)))


IDS = _discover()


def available() -> list[str]:
    return list(IDS)


def get(name: str) -> ModuleType:
    if name not in IDS:
        raise ValueError(f"unknown method {name!r}; available: {available()}")
    return importlib.import_module(f"{__name__}.{name}")


def make_config(name: str, params: dict | None = None):
    """Build a method's Config from a params mapping; unknown keys are an error, not silently ignored."""
    cls = get(name).Config
    params = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {name!r}; known: {sorted(known)}")
    return cls(**params)


def check_ipc(ipc: int, real: LabeledImages) -> None:
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc (images per class) must be an integer >= 1, got {ipc!r}")
    smallest = min(len(i) for i in real.class_indices())
    if ipc > smallest:
        raise ValueError(f"ipc={ipc} exceeds the smallest class of {real.spec.name} ({smallest} images)")


def inputs(name: str, params: dict | None, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    """Files besides the dataset that the method reads at this IPC ([] for most methods)."""
    module = get(name)
    if not hasattr(module, "inputs"):
        return []
    return module.inputs(make_config(name, params), dataset=dataset, ipc=ipc, data_root=data_root)


def uses_zca(name: str, params: dict | None, ipc: int) -> bool:
    """Whether the method works on ZCA-whitened images at this IPC (zca.load_split gives it that space)."""
    return bool(getattr(params_.at_ipc(make_config(name, params), ipc), "zca", False))


def own_evaluation(name: str, synset: SyntheticSet, test: LabeledImages, *, params: dict | None,
                   device="auto") -> dict | None:
    """A method's own evaluation recipe (KIP/RFAD: KRR with the learned targets), or None for methods that have
    none: {"recipe": what it is, "accs": [...], "mean", "std"}, reported in its own, labelled column."""
    module = get(name)
    if not hasattr(module, "own_evaluation"):
        return None
    if synset.method != name:
        raise ValueError(f"own evaluation of {name!r} asked for a {synset.method!r} set")
    out = module.own_evaluation(synset, test, make_config(name, params), device=runtime.resolve_device(device))
    accs = out["accs"]
    mean = sum(accs) / len(accs)
    return {**out, "mean": mean, "std": (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5}


def distill(name: str, real: LabeledImages, *, ipc: int, params: dict | None = None, device="auto",
            seed: int = 0, checkpoint: str | Path | None = None, data_root: str | Path = "data") -> SyntheticSet:
    """Validate everything up front, then run the method."""
    module = get(name)
    cfg = make_config(name, params)
    check_ipc(ipc, real)
    device = runtime.resolve_device(device)
    extra = {"data_root": data_root} if hasattr(module, "inputs") else {}
    return module.distill(real, cfg, ipc=ipc, device=device, seed=seed, checkpoint=checkpoint, **extra)
