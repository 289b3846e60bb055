"""params.yaml's grid checked before any stage runs (the `code` stage and `python -m ddlib.plan` call `check`).

Everything the grid names must exist and fit: methods (registered, with a study notebook and a params section),
datasets, IPCs >= 1, expert / generator / teacher recipes, the methods of each stage family over sets
(params.APPLIED) and their IPC subsets (`grid.<kind>_ipcs`), the networks that the evaluation, cross-architecture
and soft-label sections and every method, expert and teacher recipe of the grid name (each built for each dataset's
images), and each application's own section (`check` of its module in ddlib/apps). One ValueError lists every
problem with the valid choices.

This module, not params.py, imports the applications: params.py is read by every stage, and whatever it imports
would be in every stage's code fingerprint (ddlib/sources.py), so editing one application would rerun them all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from . import data, evaluate, kd, methods, nets
from .params import APPLIED, PROFILES, check_count, per_ipc, resolve

APPS = ("continual", "robustness", "privacy", "nas", "federated")   # ddlib/apps/<name>.py, each with check()


def app_problems(all_params: dict, profile: str, grid: dict) -> list[str]:
    """Each application's own check of its params.yaml section (a module that fails to read it: one problem)."""
    problems = []
    for name in APPS:
        try:
            problems += importlib.import_module(f"ddlib.apps.{name}").check(all_params, profile, grid)
        except (KeyError, ValueError, TypeError) as err:
            problems.append(f"{name} section: {err}")
    return problems


def named_nets(cfg: dict, where: str) -> list[tuple[str, str]]:
    """(place, name) of every network a resolved section names: keys `model` or `*_model`, nested sections too."""
    found = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            found += named_nets(value, f"{where}.{key}")
        elif isinstance(value, str) and (key == "model" or key.endswith("_model")):
            found.append((f"{where}.{key}", value))
    return found


def check(all_params: dict, root: str | Path = ".") -> None:
    """Raise one ValueError naming every problem of the grid (module docstring); return None when it fits."""
    root, problems = Path(root), []
    profile = all_params.get("profile", "quick")
    if profile not in PROFILES:
        problems.append(f"profile {profile!r} is not one of {list(PROFILES)}")
        profile = "quick"
    grid = all_params.get("grid") or {}
    for key in ("datasets", "methods", "ipcs", "buffers", "generators", "teachers", *APPLIED):
        if not isinstance(grid.get(key), list) or not grid[key]:
            problems.append(f"grid.{key} must be a non-empty list (the report reads every stage family's results)")
    grid = {k: v if isinstance(v, list) else [] for k, v in grid.items()}
    for name in grid.get("datasets", []):
        if name not in data.available():
            problems.append(f"grid.datasets: unknown dataset {name!r}; available: {data.available()}")
    for name in grid.get("methods", []):
        if name not in methods.available():
            problems.append(f"grid.methods: unknown method {name!r}; available: {methods.available()}")
        elif not (root / "notebooks" / "methods" / f"{name}.ipynb").exists():
            problems.append(f"grid.methods: {name!r} has no notebook notebooks/methods/{name}.ipynb")
        elif name not in (all_params.get("methods") or {}):
            problems.append(f"grid.methods: {name!r} has no section methods.{name} in params.yaml")
    for ipc in grid.get("ipcs", []):
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            problems.append(f"grid.ipcs: {ipc!r} is not an image count >= 1 (e.g. 1, 10, 50)")
    for kind in ("buffers", "generators", "teachers"):
        for name in grid.get(kind, []):
            if name not in (all_params.get(kind) or {}):
                problems.append(f"grid.{kind}: no recipe {name!r}; recipes: {sorted(all_params.get(kind) or {})}")
    for kind in APPLIED:
        for name in grid.get(kind, []):
            if name not in grid.get("methods", []):
                problems.append(f"grid.{kind}: {name!r} is not in grid.methods (the {kind} stage trains on its sets)")
        ipcs = (all_params.get("grid") or {}).get(f"{kind}_ipcs", grid.get("ipcs"))
        if not isinstance(ipcs, list) or not ipcs or not set(ipcs) <= set(grid.get("ipcs", [])):
            problems.append(f"grid.{kind}_ipcs must be a non-empty list within grid.ipcs {grid.get('ipcs')} (the "
                            f"{kind} stage reads those IPCs' sets), got {ipcs!r}")
    ars = (all_params.get("grid") or {}).get("ars_ipcs")
    if not isinstance(ars, list) or not set(ars) <= set(grid.get("ipcs", [])):
        problems.append(f"grid.ars_ipcs must be a list within grid.ipcs {grid.get('ipcs')} ([] for none: the IPCs whose "
                        f"sets the evaluate stage also trains without augmentation), got {ars!r}")
    try:
        check_count(resolve(all_params["ars"], profile)["seeds"], f"ars.{profile}.seeds")
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"ars section: {err}")
    nets_to_check = []
    try:
        kd_cfg = resolve(all_params["kd"], profile)
        if kd_cfg["teacher"] not in grid.get("teachers", []):
            problems.append(f"kd.teacher: {kd_cfg['teacher']!r} is not in grid.teachers {grid.get('teachers')} (the "
                            "teachers stage trains the recipes listed there)")
        nets_to_check.append(("kd.student", kd_cfg["student"]))
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"kd section: {err}")
    problems += app_problems(all_params, profile, grid)
    recipes = [("methods", m) for m in grid.get("methods", [])] + [
        (kind, name) for kind in ("buffers", "teachers") for name in grid.get(kind, [])]
    for kind, name in recipes:
        if name in (all_params.get(kind) or {}):
            try:
                nets_to_check += named_nets(resolve(all_params[kind][name], profile), f"{kind}.{name}.{profile}")
            except (KeyError, ValueError, TypeError) as err:
                problems.append(f"{kind}.{name}: {err}")
    try:
        nets_to_check.append(("evaluation.model", resolve(all_params["evaluation"], profile)["model"]))
        nets_to_check += [("xarch.archs", a) for a in resolve(all_params["xarch"], profile)["archs"]]
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"evaluation / xarch sections: {err}")
    for section, module in (("evaluation", evaluate), ("kd", kd)):   # seeds per IPC: one for each IPC run
        ipcs = grid.get("ipcs", []) if section == "evaluation" else grid.get("kd_ipcs", grid.get("ipcs", []))
        try:
            seeds = module.protocol(all_params, profile).num_seeds
            for ipc in ipcs:
                per_ipc(seeds, ipc, f"{section}.{profile}.num_seeds")
        except (KeyError, ValueError, TypeError) as err:
            problems.append(f"{section} section: {err}")
    for where, arch in nets_to_check:
        for name in grid.get("datasets", []):
            if name in data.available():
                spec = data.get_spec(name)
                try:
                    with torch.device("meta"):   # builds nothing real: shapes only
                        nets.make_net(arch, spec.channels, spec.num_classes, spec.im_size)
                except ValueError as err:
                    problems.append(f"{where}: {err} ({name})")
    if problems:
        raise ValueError("params.yaml: " + "; ".join(dict.fromkeys(problems)) + ". Fix params.yaml; nothing has run.")
