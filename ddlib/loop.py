"""The one distillation loop every iterative method runs.

A method supplies `init(...) -> State` and `step(state, real) -> float`; `run` owns the iteration counter,
periodic checkpoints with resume after a kill, the NaN/inf guard, the optional wall-clock cap, the progress
bar and the timing/peak-memory accounting.

Image updates go through `update`, which refuses a non-finite loss or gradient *before* touching the images,
so the state (and the last checkpoint on disk) stay good.

Budgets are iteration counts (an int, or {ipc: int} in the quick profile), so the same code and params give
the same result on the same kind of machine (provenance.py). A wall-clock cap (`time_budget_s`) exists as an
option; a run it cut short records stopped_by="time_budget", and the report labels it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.std import tqdm

from . import params, provenance, runtime
from .synset import SyntheticSet


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/inf; the run stops and the last good checkpoint is kept."""


@dataclass
class State:
    """Everything an iterative method carries between iterations (one `state_dict` = one checkpoint)."""

    x_syn: torch.Tensor                # (N, C, H, W) leaf tensor with requires_grad
    y_syn: torch.Tensor                # (N,) hard labels or (N, K) soft labels
    opt: torch.optim.Optimizer         # optimizer over x_syn (and any learned extras, one param group each)
    gen: torch.Generator               # every random draw of the method comes from here
    iteration: int = 0
    # checkpointed with the state; `distill` packages four names: "lr" (a learned evaluation step size),
    # "labels" (learned label logits: the set gets their softmax), "ema" (images evaluated instead of x_syn) and
    # "targets" (a kernel method's learned regression targets: SyntheticSet.targets, the labels stay hard)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"x_syn": self.x_syn.detach().cpu(), "y_syn": self.y_syn.detach().cpu(),
                "opt": self.opt.state_dict(), "gen": self.gen.get_state(), "iteration": self.iteration,
                "extra": {k: v.detach().cpu() for k, v in self.extra.items()}}

    def load_state_dict(self, d: dict) -> None:
        with torch.no_grad():
            self.x_syn.copy_(d["x_syn"])
            self.y_syn.copy_(d["y_syn"])
            for k, v in d["extra"].items():
                self.extra[k].copy_(v)
        self.opt.load_state_dict(d["opt"])
        self.gen.set_state(d["gen"])
        self.iteration = d["iteration"]


def check_finite(value: float, state: State) -> float:
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite distillation loss ({value}) at iteration {state.iteration}; "
                             "try a smaller lr_img — the images were not updated")
    return value


def _guarded_step(state: State) -> None:
    for group in state.opt.param_groups:
        for p in group["params"]:
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise NonFiniteError(f"non-finite gradient at iteration {state.iteration}; images not updated")
    state.opt.step()


def update(state: State, loss: torch.Tensor) -> float:
    """One guarded optimizer step on the synthetic data; returns the loss value."""
    value = check_finite(loss.item(), state)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    _guarded_step(state)
    return value


def update_with(state: State, value: float, grads: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The same guarded step from gradients computed by other means (e.g. unroll.adjoint)."""
    check_finite(value, state)
    state.opt.zero_grad(set_to_none=True)
    for param, grad in grads:
        param.grad = grad
    _guarded_step(state)
    return value


def learn(state: State, name: str, value: torch.Tensor, *, lr: float, momentum: float) -> torch.Tensor:
    """Make `value` a learned leaf beside the images (MTT's step size, DATM's labels): its own SGD param
    group in state.opt, kept in state.extra[name] so checkpoints carry it."""
    leaf = value.detach().clone().to(state.x_syn.device).requires_grad_(True)
    state.opt.add_param_group({"params": [leaf], "lr": lr, "momentum": momentum})
    state.extra[name] = leaf
    return leaf


def fingerprint(**config) -> str:
    """Stable hash of what defines a run, so a checkpoint is only resumed by the same run."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunInfo:
    iterations: int
    wall_time_s: float
    peak_mem_mb: float
    history: list[tuple[int, float]]
    stopped_by: str            # "iterations" or "time_budget"
    resumed_from: int | None


def _progress(desc: str, iterations: int, done: int, time_budget_s: float | None, elapsed: float) -> tqdm:
    """Plain-text bar (readable under papermill): iterations, or seconds when a wall-clock cap is set."""
    common = dict(desc=desc, file=sys.stderr, mininterval=float(os.environ.get("TQDM_MININTERVAL", 10)),
                  dynamic_ncols=False, ascii=True)
    if time_budget_s is None:
        return tqdm(total=iterations, initial=done, unit="it", **common)
    return tqdm(total=time_budget_s, initial=min(elapsed, time_budget_s), unit="s",
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]", **common)


def run(state: State, step: Callable[[State], float], *, iterations: int, device: torch.device,
        checkpoint: str | Path | None = None, run_id: str = "", checkpoint_every: int = 50,
        checkpoint_every_s: float = 60.0, time_budget_s: float | None = None, desc: str = "distill",
        hooks: tuple[Callable[[State, float], None], ...] = ()) -> RunInfo:
    """Run `step` until `iterations` (or the wall-clock budget) is reached, resuming from `checkpoint`."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    ckpt = Path(checkpoint) if checkpoint else None
    history, timer, resumed_from = [], runtime.Timer(), None
    if ckpt and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("run_id") == run_id:
            state.load_state_dict(saved["state"])
            history, timer, resumed_from = saved["history"], runtime.Timer(saved["elapsed"]), state.iteration
            print(f"[{desc}] resumed from {ckpt} at iteration {state.iteration}", file=sys.stderr)
        else:
            print(f"[{desc}] ignoring checkpoint {ckpt} from a different configuration", file=sys.stderr)
    def save():
        if ckpt:
            runtime.atomic_save({"run_id": run_id, "state": state.state_dict(), "history": history,
                                 "elapsed": timer.now()}, ckpt)

    runtime.reset_peak_memory(device)
    stopped_by, last_save = "iterations", timer.now()
    bar = _progress(desc, iterations, state.iteration, time_budget_s, timer.now())
    while state.iteration < iterations:
        if time_budget_s is not None and timer.now() >= time_budget_s:
            stopped_by = "time_budget"
            break
        with timer:
            loss = step(state)
        state.iteration += 1
        history.append((state.iteration, float(loss)))
        for hook in hooks:
            hook(state, loss)
        bar.set_postfix(it=f"{state.iteration}/{iterations}", loss=f"{loss:.4g}", refresh=False)
        # a capped run counts seconds towards its cap, so the bar's total and ETA are the real ones
        bar.update(1 if time_budget_s is None else min(timer.now(), time_budget_s) - bar.n)
        if state.iteration % checkpoint_every == 0 or timer.now() - last_save >= checkpoint_every_s:
            save()
            last_save = timer.now()
    bar.close()
    if ckpt:  # finished: the result is returned (and cached by DVC); a stale checkpoint must not outlive code changes
        ckpt.unlink(missing_ok=True)
    return RunInfo(state.iteration, timer.now(), runtime.peak_memory_mb(device), history, stopped_by, resumed_from)


def finish(x: torch.Tensor, y: torch.Tensor, *, method: str, real, ipc: int, params: dict, device: torch.device,
           seed: int, wall_time_s: float, peak_mem_mb: float, iterations: int = 0, lr: float | None = None,
           zca: bool = False, extra: dict | None = None, targets: torch.Tensor | None = None) -> SyntheticSet:
    """Package the result of any method (selection or optimisation) as a SyntheticSet with provenance."""
    prov = {**provenance.record(device), "seed": seed, "wall_time_s": wall_time_s, "peak_mem_mb": peak_mem_mb,
            "iterations": iterations, **(extra or {})}
    return SyntheticSet(images=x.detach().cpu().float(), labels=y.detach().cpu(), method=method,
                        dataset=real.spec.name, ipc=ipc, lr=lr, zca=zca, params=params, provenance=prov,
                        targets=None if targets is None else targets.detach().cpu().float())


def init_state(real, ipc: int, *, init: str, lr_img: float, momentum: float, gen: torch.Generator,
               device: torch.device) -> State:
    """Synthetic images initialised from random real images ("real") or N(0, 1) noise ("noise"),
    optimised by SGD with momentum, the optimiser of DC/DSA/DM/MTT."""
    if init not in ("real", "noise"):
        raise ValueError(f"unknown init {init!r}; expected 'real' or 'noise'")
    num_classes = real.spec.num_classes
    if init == "real":
        x = torch.cat([real.sample_class(c, ipc, gen) for c in range(num_classes)])
    else:
        x = torch.randn((num_classes * ipc, real.spec.channels, *real.spec.im_size), generator=gen)
    x_syn = x.to(device).requires_grad_(True)
    y_syn = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    opt = torch.optim.SGD([x_syn], lr=lr_img, momentum=momentum)
    return State(x_syn=x_syn, y_syn=y_syn, opt=opt, gen=gen)


def new_seed(gen: torch.Generator) -> int:
    """A fresh integer seed drawn from the method's generator (for network initialisations)."""
    return int(torch.randint(2**62, (1,), generator=gen))


def distill(method: str, step: Callable[[State], float], real, cfg, *, ipc: int, device: torch.device, seed: int,
            checkpoint: str | Path | None = None, setup: Callable[[State], None] | None = None,
            zca: bool = False, init: Callable[[torch.Generator], State] | None = None,
            decode: Callable[[State], tuple[torch.Tensor, torch.Tensor]] | None = None,
            describe: Callable[[State], dict] | None = None) -> SyntheticSet:
    """The whole life of an iterative method: init the synthetic set from `cfg` (or `init(gen)`, a method's own
    parameterisation: bases, codes, ...), then `setup(state)`, which may add learned extras, change the init or
    replace the optimizer; run `step`; package it (see State.extra for learned extras). A parameterised set
    gives the images it trains on and their labels through `decode(state)` and adds provenance (its storage)
    through `describe`."""
    gen = torch.Generator().manual_seed(seed)
    state = init(gen) if init is not None else init_state(real, ipc, init=cfg.init, lr_img=cfg.lr_img,
                                                          momentum=getattr(cfg, "momentum", 0.0), gen=gen,
                                                          device=device)
    if setup is not None:
        setup(state)
    iterations = params.per_ipc(cfg.iterations, ipc, "iterations")
    budget = params.per_ipc(cfg.time_budget_s, ipc, "time_budget_s")
    desc = f"{method} ipc{ipc}" + (f" (capped at {budget:g} s)" if budget is not None else "")
    info = run(state, step, iterations=iterations, device=device, checkpoint=checkpoint,
               run_id=fingerprint(method=method, ipc=ipc, seed=seed, **asdict(cfg)),
               checkpoint_every=cfg.checkpoint_every, time_budget_s=budget, desc=desc)
    extra = state.extra
    labels = torch.softmax(extra["labels"].detach(), 1) if "labels" in extra else state.y_syn
    if decode is not None:
        with torch.no_grad():
            images, labels = decode(state)
    else:
        images = extra.get("ema", state.x_syn)
    return finish(images, labels, method=method, real=real, ipc=ipc, params=asdict(cfg),
                  device=device, seed=seed, wall_time_s=info.wall_time_s, peak_mem_mb=info.peak_mem_mb,
                  iterations=info.iterations, lr=float(extra["lr"].detach()) if "lr" in extra else None, zca=zca,
                  targets=extra.get("targets"),
                  extra={"iterations_planned": iterations, "stopped_by": info.stopped_by,
                         "resumed_from": info.resumed_from, "loss_history": info.history,
                         **(describe(state) if describe is not None else {})})
