"""The shared distillation loop: NaN guard, checkpoints, kill-and-resume, wall-clock budget."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from ddlib import loop, methods, params
from ddlib.methods import dm

CPU = torch.device("cpu")
DM_CFG = methods.make_config("dm", {**params.method_params(params.load("params.yaml"), "dm", "tiny"),
                                    "iterations": 4, "checkpoint_every": 1})


def fresh_state(train):
    return loop.init_state(train, 1, init="real", lr_img=DM_CFG.lr_img, momentum=DM_CFG.momentum,
                           gen=torch.Generator().manual_seed(0), device=CPU)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_train, tmp_path):
    state, ckpt = fresh_state(tiny_train), tmp_path / "run.pt"

    def step(s):
        if s.iteration == 2:   # third iteration blows up
            return loop.update(s, s.x_syn.sum() * float("nan"))
        return dm.step(s, tiny_train, DM_CFG)

    with pytest.raises(loop.NonFiniteError, match="non-finite distillation loss"):
        loop.run(state, step, iterations=5, device=CPU, checkpoint=ckpt, run_id="a", checkpoint_every=1)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["state"]["iteration"] == 2 and torch.isfinite(saved["state"]["x_syn"]).all()
    assert torch.isfinite(state.x_syn).all()   # the guard fires before the images are touched


def test_nan_gradient_is_refused(tiny_train):
    state = fresh_state(tiny_train)
    before = state.x_syn.detach().clone()
    loss = (state.x_syn - state.x_syn.detach()).sqrt().sum()  # value 0, gradient 1/(2 sqrt(0)) = inf
    with pytest.raises(loop.NonFiniteError, match="gradient"):
        loop.update(state, loss)
    assert torch.equal(before, state.x_syn.detach())


def test_kill_and_resume_gives_the_uninterrupted_result(tiny_train, tmp_path):
    reference = fresh_state(tiny_train)
    loop.run(reference, lambda s: dm.step(s, tiny_train, DM_CFG), iterations=4, device=CPU)

    class Killed(Exception):
        pass

    def kill_after_two(state, loss):
        if state.iteration == 2:   # dies after iteration 2's step, before its checkpoint is written
            raise Killed

    ckpt = tmp_path / "dm.pt"
    with pytest.raises(Killed):
        loop.run(fresh_state(tiny_train), lambda s: dm.step(s, tiny_train, DM_CFG), iterations=4, device=CPU,
                 checkpoint=ckpt, run_id="x", checkpoint_every=1, hooks=(kill_after_two,))
    resumed = fresh_state(tiny_train)
    info = loop.run(resumed, lambda s: dm.step(s, tiny_train, DM_CFG), iterations=4, device=CPU,
                    checkpoint=ckpt, run_id="x", checkpoint_every=1)
    assert info.resumed_from == 1 and info.iterations == 4   # iteration 2 is redone from checkpoint 1
    assert [i for i, _ in info.history] == [1, 2, 3, 4]
    assert torch.allclose(resumed.x_syn, reference.x_syn, atol=1e-6)


def test_checkpoint_of_another_configuration_is_not_resumed(tiny_train, tmp_path):
    ckpt = tmp_path / "dm.pt"
    loop.run(fresh_state(tiny_train), lambda s: dm.step(s, tiny_train, DM_CFG), iterations=2, device=CPU,
             checkpoint=ckpt, run_id="config-a")
    info = loop.run(fresh_state(tiny_train), lambda s: dm.step(s, tiny_train, DM_CFG), iterations=2, device=CPU,
                    checkpoint=ckpt, run_id="config-b")
    assert info.resumed_from is None


def test_finished_run_removes_its_checkpoint_and_is_deterministic(tiny_train, tmp_path):
    p = {**params.method_params(params.load("params.yaml"), "dm", "tiny"), "iterations": 3}
    ckpt = tmp_path / "dm-ipc1.pt"
    first = methods.distill("dm", tiny_train, ipc=1, params=p, checkpoint=ckpt)
    assert not ckpt.exists()   # a finished run removes its checkpoint
    again = methods.distill("dm", tiny_train, ipc=1, params=p, checkpoint=ckpt)
    assert again.provenance["resumed_from"] is None and torch.equal(first.images, again.images)  # deterministic


def test_time_budget_stops_early(tiny_train):
    info = loop.run(fresh_state(tiny_train), lambda s: dm.step(s, tiny_train, DM_CFG), iterations=1000,
                    device=CPU, time_budget_s=0.0)
    assert info.stopped_by == "time_budget" and info.iterations == 0


def test_negative_iterations_rejected(tiny_train):
    with pytest.raises(ValueError, match="iterations"):
        loop.run(fresh_state(tiny_train), lambda s: 0.0, iterations=-1, device=CPU)



KILLABLE = """
import sys
from ddlib import data, methods
real = data.load("fashion_mnist", "train", root=sys.argv[1])
methods.distill("dm", real, ipc=1, params={"iterations": 60, "batch_real": 4, "checkpoint_every": 1},
                checkpoint=sys.argv[2])
"""


def test_sigkill_then_resume(fixture_root, tiny_train, tmp_path):
    """A real SIGKILL mid-run: the rerun resumes from the last checkpoint and ends where an unkilled run ends."""
    params_ = {"iterations": 60, "batch_real": 4, "checkpoint_every": 1}
    ckpt = tmp_path / "dm.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(fixture_root), str(ckpt)])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=False)["state"]["iteration"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the child finished before it could be killed"
    killed_at = torch.load(ckpt, weights_only=False)["state"]["iteration"]
    resumed = methods.distill("dm", tiny_train, ipc=1, params=params_, checkpoint=ckpt)
    assert resumed.provenance["resumed_from"] == killed_at >= 3 and resumed.provenance["iterations"] == 60
    reference = methods.distill("dm", tiny_train, ipc=1, params=params_)
    assert torch.allclose(resumed.images, reference.images, atol=1e-5)


def test_budgets_are_iterations_per_ipc():
    assert params.per_ipc({1: 60, 10: 150}, 10, "iterations") == 150 and params.per_ipc(7, 10, "iterations") == 7
    with pytest.raises(ValueError, match=r"iterations has no entry for ipc=50.*params.yaml"):
        params.per_ipc({1: 60, 10: 150}, 50, "iterations")
    for bad in ({1: -3}, "many", -1, True):
        with pytest.raises(ValueError, match="iterations must be a number >= 0"):
            methods.make_config("dm", {"iterations": bad})
    methods.make_config("dc", {"iterations": {1: 60, 10: 10}, "time_budget_s": {1: None, 10: 30}})


def test_a_run_cut_by_the_wall_clock_cap_records_it(tiny_train):
    p = {**params.method_params(params.load("params.yaml"), "dm", "tiny"), "iterations": {1: 5}, "time_budget_s": 0}
    synset = methods.distill("dm", tiny_train, ipc=1, params=p)
    prov = synset.provenance
    assert (prov["stopped_by"], prov["iterations"], prov["iterations_planned"]) == ("time_budget", 0, 5)
    full = methods.distill("dm", tiny_train, ipc=1, params={**p, "time_budget_s": None})
    assert (full.provenance["stopped_by"], full.provenance["iterations"]) == ("iterations", 5)
