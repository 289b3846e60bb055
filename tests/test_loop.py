"""The shared distillation loop: NaN guard, checkpoints, kill-and-resume, wall-clock budget."""

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


def test_method_level_resume_through_the_registry(tiny_train, tmp_path):
    p = {**params.method_params(params.load("params.yaml"), "dm", "tiny"), "iterations": 3}
    ckpt = tmp_path / "dm-ipc1.pt"
    first = methods.distill("dm", tiny_train, ipc=1, params=p, checkpoint=ckpt)
    again = methods.distill("dm", tiny_train, ipc=1, params=p, checkpoint=ckpt)   # finished run: nothing redone
    assert again.provenance["resumed_from"] == 3 and torch.equal(first.images, again.images)


def test_time_budget_stops_early(tiny_train):
    info = loop.run(fresh_state(tiny_train), lambda s: dm.step(s, tiny_train, DM_CFG), iterations=1000,
                    device=CPU, time_budget_s=0.0)
    assert info.stopped_by == "time_budget" and info.iterations == 0


def test_negative_iterations_rejected(tiny_train):
    with pytest.raises(ValueError, match="iterations"):
        loop.run(fresh_state(tiny_train), lambda s: 0.0, iterations=-1, device=CPU)
