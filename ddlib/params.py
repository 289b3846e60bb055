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
# track and the applications (ddlib/apps); ddlib/grid.py checks them
APPLIED = ("xarch", "kd", "continual", "robustness", "privacy", "nas", "federated")


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


def check_count(value, name: str) -> None:
    """A count is an integer >= 1 or {ipc: integer >= 1}."""
    values = value.values() if isinstance(value, dict) and value else [value]
    if isinstance(value, dict) and not all(isinstance(k, int) and not isinstance(k, bool) for k in value):
        values = [None]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be an integer >= 1 or {{ipc: integer >= 1}}, got {value!r}")


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
