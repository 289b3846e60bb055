"""params.yaml: one section per method and for evaluation, each with a `paper` block (official values)
and per-profile override blocks (`quick`, `tiny`) that only shrink budgets.

    methods:
      dm:
        paper: {iterations: 20000, batch_real: 256, ...}
        quick: {iterations: {1: 60, 10: 150}, batch_real: 64}

`resolve(section, profile)` = paper values updated with the profile's overrides. The active profile is the
top-level `profile` key; switching is `make profile PROFILE=paper` (or `dvc exp run -S profile=paper`).

A value may depend on the IPC: {ipc: value} with integer keys (budgets in the quick profile, and most
trajectory-matching hyper-parameters); `per_ipc` / `at_ipc` pick the value for one IPC.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import yaml

PROFILES = ("paper", "quick", "tiny")
# stage families over some methods' sets (grid.<kind> x datasets x IPCs): cross-architecture, the soft-label
# track and the applications (ddlib/apps)
APPLIED = ("xarch", "kd", "continual", "robustness", "privacy")


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no params file at {path.resolve()}")
    params = yaml.safe_load(path.read_text())
    check_profile(params.get("profile", "quick"))
    return params


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {list(PROFILES)}")
    return profile


def resolve(section: dict, profile: str) -> dict:
    """Paper values, then the profile's overrides (nested mappings merge); overrides may only name keys the
    paper block defines, so a typo in a quick block is an error instead of a silently ignored setting."""
    check_profile(profile)
    base = dict(section.get("paper") or {})
    override = dict(section.get(profile) or {}) if profile != "paper" else {}
    return _merge(base, override, f"profile {profile!r}")


def _merge(base: dict, override: dict, where: str) -> dict:
    unknown = sorted(set(override) - set(base))
    if unknown:
        raise ValueError(f"{where} overrides {unknown}, which the paper block does not define; "
                         f"paper keys: {sorted(base)}")
    out = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(base[key], dict)
        out[key] = _merge(base[key], value, f"{where}, key {key!r}") if both_dicts else value
    return out


def method_params(params: dict, method: str, profile: str | None = None) -> dict:
    methods = params.get("methods", {})
    if method not in methods:
        raise ValueError(f"params.yaml has no section methods.{method}; sections: {sorted(methods)}")
    return resolve(methods[method], profile or params.get("profile", "quick"))


def check_budget(value, name: str, *, allow_none: bool = False) -> None:
    """A budget is a number >= 0 or {ipc: number >= 0} (None only where the budget is optional)."""
    values = value.values() if isinstance(value, dict) else [value]
    for v in values:
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0 or {{ipc: number}}, got {value!r}")


def at_ipc(cfg, ipc: int):
    """The config with every per-IPC field ({ipc: value}, int keys) replaced by its value at `ipc`."""
    per = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    per = {k: per_ipc(v, ipc, k) for k, v in per.items() if isinstance(v, dict) and v and all(
        isinstance(key, int) for key in v)}
    return replace(cfg, **per)


def per_ipc(value, ipc: int, name: str):
    """A budget given as one value or as {ipc: value} (the quick profile budgets each IPC)."""
    if isinstance(value, dict):
        if ipc not in value:
            raise ValueError(f"{name} has no entry for ipc={ipc}: {value}; add one to the profile's block in "
                             "params.yaml")
        return value[ipc]
    return value


def check_grid(all_params: dict, root: str | Path = ".") -> None:
    """Everything params.yaml's grid names exists and fits, checked before any stage runs (the `code` stage and
    `python -m ddlib.plan` call this): methods (registered, with a study notebook and a params section), datasets,
    IPCs >= 1, expert and generator recipes, the cross-architecture methods and architectures (each built for each
    dataset's images) and the evaluation network. One ValueError lists every problem with the valid choices."""
    from . import data, methods, nets   # here: they import torch, which reading params needs not
    import torch
    root, problems = Path(root), []
    profile = all_params.get("profile", "quick")
    if profile not in PROFILES:
        problems.append(f"profile {profile!r} is not one of {list(PROFILES)}")
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
    if not isinstance(grid.get("privacy_ipcs"), list) or not set(grid["privacy_ipcs"]) <= set(grid.get("ipcs", [])):
        problems.append(f"grid.privacy_ipcs must be a list within grid.ipcs {grid.get('ipcs')} (the privacy stage reads "
                        f"those IPCs' sets), got {grid.get('privacy_ipcs')!r}")
    try:
        kd_cfg = resolve(all_params["kd"], profile)
        if kd_cfg["teacher"] not in grid.get("teachers", []):
            problems.append(f"kd.teacher: {kd_cfg['teacher']!r} is not in grid.teachers {grid.get('teachers')} (the "
                            "teachers stage trains the recipes listed there)")
        nets_to_check = [("kd.student", kd_cfg["student"])]
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"kd section: {err}")
        nets_to_check = []
    try:
        steps = int(resolve(all_params["continual"], profile)["steps"])
        for name in grid.get("datasets", []):
            if name in data.available() and (steps < 1 or data.get_spec(name).num_classes % steps):
                problems.append(f"continual.steps: {steps} does not split the {data.get_spec(name).num_classes} "
                                f"classes of {name} into equal groups")
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"continual section: {err}")
    try:
        from .apps import robustness
        robustness.settings(all_params, profile)
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"robustness section: {err}")
    try:
        from .apps import privacy
        cfg, _ = privacy.settings(all_params, profile)
        largest = max([i for i in grid.get("privacy_ipcs", []) if isinstance(i, int)] or [1])
        if int(cfg["population"]) < 2 * largest:
            problems.append(f"privacy.population: {cfg['population']} images per class cannot give each model's half "
                            f"grid.privacy_ipcs' largest IPC {largest} (it must be >= 2 x IPC)")
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"privacy section: {err}")
    try:
        nets_to_check.append(("evaluation.model", resolve(all_params["evaluation"], profile)["model"]))
        nets_to_check += [("xarch.archs", a) for a in resolve(all_params["xarch"], profile)["archs"]]
    except (KeyError, ValueError, TypeError) as err:
        problems.append(f"evaluation / xarch sections: {err}")
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
