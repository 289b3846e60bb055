"""params.yaml: one section per method and for evaluation, each with a `paper` block (official values)
and per-profile override blocks (`quick`, `tiny`) that only shrink budgets.

    methods:
      dm:
        paper: {iterations: 20000, batch_real: 256, ...}
        quick: {iterations: {1: 60, 10: 150}, batch_real: 64}

`resolve(section, profile)` = paper values updated with the profile's overrides. The active profile is the
top-level `profile` key; switching is `make profile PROFILE=paper` (or `dvc exp run -S profile=paper`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

PROFILES = ("paper", "quick", "tiny")


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
