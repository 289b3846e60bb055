"""Trajectory matching: the unrolled student, TESLA's constant-memory gradient, experts, GSAM and the methods."""

import math

import pytest
import torch
from torch import nn

from ddlib import experts, methods, nets, params, unroll, zca
from ddlib.methods import datm
from ddlib.train import Sam, gsam_gradients

PARAMS = params.load("params.yaml")


def tiny(method):
    return params.method_params(PARAMS, method, "tiny")


# ---------------------------------------------------------------- the student and its gradients
def test_loss_of_one_step_on_a_two_parameter_model_by_hand():
    """w = (a, b), model f(x) = a x + b, loss 0.5 (f(x) - y)^2 on one point x = 2, y = 1."""
    net = nn.Linear(1, 1)
    fnet = unroll.FlatNet(net)
    assert fnet.numel == 2 and [n for n in fnet.names] == ["weight", "bias"]
    w0, lr = torch.tensor([0.5, 0.0]), torch.tensor(0.1)
    x, y = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    p = unroll.Plan([torch.tensor([0])], [None])
    ws = unroll.steps(fnet, w0, x, y, lr, p, loss_fn=lambda out, t: 0.5 * ((out - t) ** 2).sum())
    # f = 1, residual 0: no move. Start elsewhere: a = 1 -> f = 2, r = 1, grad = (r x, r) = (2, 1)
    assert torch.equal(ws[1], w0)
    ws = unroll.steps(fnet, torch.tensor([1.0, 0.0]), x, y, lr, p, loss_fn=lambda out, t: 0.5 * ((out - t) ** 2).sum())
    assert torch.allclose(ws[1], torch.tensor([0.8, -0.1]))
    # distance to a target (0.8, 0.0) from start (1, 0): ||(0, -0.1)||^2 / ||(0.2, 0)||^2 = 0.01 / 0.04
    assert unroll.distance(ws[1], torch.tensor([1.0, 0.0]), torch.tensor([0.8, 0.0])).item() == pytest.approx(0.25)


def _problem(steps=4, batch=3, dsa=True, seed=0):
    torch.manual_seed(seed)
    fnet = unroll.FlatNet(nets.make_net("convnet_w8_d2", 1, 4, (28, 28), seed=seed))
    w0 = fnet.flatten() + 0.01 * torch.randn(fnet.numel)
    target = w0 + 0.05 * torch.randn(fnet.numel)
    x = torch.randn(8, 1, 28, 28, requires_grad=True)
    y = torch.arange(4).repeat(2)
    p = unroll.plan(8, batch, steps, torch.Generator().manual_seed(seed),
                    "color_crop_cutout_flip_scale_rotate" if dsa else None)
    return fnet, w0, target, x, y, p


def _full_graph(fnet, w0, target, x, y, lr, p):
    ws = unroll.steps(fnet, w0, x, y, lr, p)
    loss = unroll.distance(ws[-1], w0, target)
    gx, glr = torch.autograd.grad(loss, (x, lr))
    return loss.item(), gx, glr


@pytest.mark.parametrize("dsa", [False, True])
def test_tesla_gives_mtts_gradient(dsa):
    fnet, w0, target, x, y, p = _problem(dsa=dsa)
    lr = torch.tensor(0.05, requires_grad=True)
    value, gx, glr = _full_graph(fnet, w0, target, x, y, lr, p)
    value_a, gx_a, glr_a = unroll.adjoint(fnet, w0, x, y, lr, p, lambda w: unroll.distance(w, w0, target))
    assert value_a == pytest.approx(value, rel=1e-5)
    assert gx.norm() > 0 and relative_error(gx_a, gx) < 1e-5        # float32 rounding: measured ~3e-7
    assert glr_a.item() == pytest.approx(glr.item(), rel=1e-5)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_released_teslas_first_order_gradient_is_an_approximation():
    lr = torch.tensor(0.05, requires_grad=True)
    errors = {}
    for steps in (1, 4):
        fnet, w0, target, x, y, p = _problem(steps=steps)
        _, gx, _ = _full_graph(fnet, w0, target, x, y, lr, p)
        _, gx_first, _ = unroll.adjoint(fnet, w0, x, y, lr, p, lambda w: unroll.distance(w, w0, target),
                                        first_order=True)
        errors[steps] = relative_error(gx_first, gx)
    assert errors[1] < 1e-5          # one step: nothing to drop
    assert errors[4] > 0.05          # four steps: the dropped cross-step terms matter (measured ~40 %)


def test_plan_cycles_through_permutations_and_fixes_the_augmentation():
    p = unroll.plan(5, 2, 4, torch.Generator().manual_seed(0), "flip")
    assert [len(b) for b in p.batches] == [2, 2, 1, 2]
    assert sorted(torch.cat(p.batches[:3]).tolist()) == [0, 1, 2, 3, 4]   # one full pass before repeating
    assert all(a.op == "flip" and a.values["flip"].shape == (len(b),) for a, b in zip(p.augs, p.batches))
    assert unroll.plan(5, None, 2, torch.Generator(), None).augs == [None, None]


def test_flat_net_refuses_a_vector_of_another_architecture():
    fnet = unroll.FlatNet(nets.make_net("convnet_w8_d1", 1, 10, (28, 28), seed=0))
    with pytest.raises(ValueError, match="does not fit"):
        fnet(torch.zeros(fnet.numel + 1), torch.zeros(1, 1, 28, 28))


# ---------------------------------------------------------------- GSAM
def test_gsam_direction_by_hand():
    """Quadratic loss 0.5 w^T A w: every quantity of GSAM in closed form (non-adaptive)."""
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    sam = Sam(rho=0.1, alpha=0.5, adaptive=False)
    loss_at = lambda: 0.5 * w @ A @ w
    (direction,) = gsam_gradients([w], loss_at(), loss_at, sam)
    g = A @ w.detach()                                   # (2, 1)
    e = 0.1 * g / g.norm()
    gp = A @ (w.detach() + e)
    cos = (g @ gp) / (g.norm() * gp.norm())
    expected = gp - 0.5 * (g - cos * g.norm() * gp / gp.norm())
    assert torch.allclose(direction, expected, atol=1e-6)
    assert torch.equal(w.detach(), torch.tensor([1.0, 1.0]))   # back at w afterwards
    (plain,) = gsam_gradients([w], loss_at(), loss_at, Sam(rho=0.0, alpha=0.0, adaptive=False))
    assert torch.allclose(plain, g)                      # rho = 0, alpha = 0: the plain gradient


# ---------------------------------------------------------------- experts
RECIPE = experts.Recipe(**params.resolve(PARAMS["buffers"]["plain"], "tiny"))


def test_experts_record_distinct_snapshots_and_accuracies(tiny_buffers):
    buffers = experts.load(tiny_buffers / "fashion_mnist" / "buffers" / "plain", dataset="fashion_mnist",
                           zca=False, model="convnet", stage="buffers@plain-fashion_mnist")
    trajectory = buffers.trajectory(0)
    assert trajectory.shape == (RECIPE.epochs + 1, buffers.index["num_params"])
    assert all(not torch.equal(trajectory[i], trajectory[i + 1]) for i in range(RECIPE.epochs))   # no aliasing
    assert len(buffers.index["test_acc"][0]) == RECIPE.epochs + 1
    start, last = buffers.at(0, 0, -1)
    assert torch.equal(start, trajectory[0]) and torch.equal(last, trajectory[-1])


def test_a_killed_expert_run_resumes_where_it_stopped(tiny_train, tiny_test, tmp_path):
    recipe = experts.Recipe(**{**params.resolve(PARAMS["buffers"]["plain"], "tiny"), "epochs": 3})
    reference = experts.train(tiny_train, tiny_test, recipe, tmp_path / "ref", name="plain", device=torch.device("cpu"),
                              seed=0, checkpoint_dir=tmp_path / "ckpt-ref")

    class Killed(Exception):
        pass

    calls = {"n": 0}
    original = experts.fit

    def dies_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return original(*args, **kwargs)

    experts.fit = dies_in_epoch_3
    try:
        with pytest.raises(Killed):
            experts.train(tiny_train, tiny_test, recipe, tmp_path / "out", name="plain", device=torch.device("cpu"),
                          seed=0, checkpoint_dir=tmp_path / "ckpt")
    finally:
        experts.fit = original
    partial = torch.load(tmp_path / "ckpt" / "expert_000.partial", weights_only=False)
    assert len(partial["record"]["train_loss"]) == 2 and not (tmp_path / "out").exists()
    resumed = experts.train(tiny_train, tiny_test, recipe, tmp_path / "out", name="plain", device=torch.device("cpu"),
                            seed=0, checkpoint_dir=tmp_path / "ckpt")
    assert resumed["test_acc"] == reference["test_acc"]
    assert torch.equal(torch.load(tmp_path / "out" / "expert_000.pt")["trajectory"],
                       torch.load(tmp_path / "ref" / "expert_000.pt")["trajectory"])
    assert not list((tmp_path / "ckpt").glob("expert_*"))      # checkpoints go once the stage is done


def test_bfloat16_storage_halves_the_files(tiny_train, tiny_test, tmp_path):
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        recipe = experts.Recipe(**{**params.resolve(PARAMS["buffers"]["plain"], "tiny"), "dtype": dtype})
        experts.train(tiny_train, tiny_test, recipe, tmp_path / dtype, name="plain", device=torch.device("cpu"),
                      seed=0, checkpoint_dir=tmp_path / f"ckpt-{dtype}")
        sizes[dtype] = (tmp_path / dtype / "expert_000.pt").stat().st_size
        assert torch.load(tmp_path / dtype / "expert_000.pt")["trajectory"].dtype == experts.DTYPES[dtype]
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.55


def test_buffers_of_another_kind_are_refused_with_the_stage_to_run(tiny_buffers, tmp_path):
    folder = tiny_buffers / "fashion_mnist" / "buffers" / "plain"
    stage = "buffers@plain-fashion_mnist"
    with pytest.raises(FileNotFoundError, match=f"dvc repro {stage}"):
        experts.load(tmp_path / "nothing", dataset="fashion_mnist", zca=False, model="convnet", stage=stage)
    for wrong in ({"dataset": "mnist"}, {"zca": True}, {"model": "convnet_bn"}):
        kwargs = {"dataset": "fashion_mnist", "zca": False, "model": "convnet", **wrong}
        with pytest.raises(ValueError, match=f"do not fit this run.*{list(wrong)[0]}.*dvc repro {stage}"):
            experts.load(folder, stage=stage, **kwargs)
    # an expert of another recipe slipped into the folder: never mixed
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in folder.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    record = torch.load(mixed / "expert_000.pt")
    record["fingerprint"] = "0" * 16
    torch.save(record, mixed / "expert_000.pt")
    with pytest.raises(ValueError, match="another recipe"):
        experts.load(mixed, dataset="fashion_mnist", zca=False, model="convnet", stage=stage)


def test_recipe_validation():
    with pytest.raises(ValueError, match="dtype"):
        experts.Recipe(dtype="float8")
    with pytest.raises(TypeError):
        experts.Recipe(sam={"rho": 0.1, "beta": 1})


# ---------------------------------------------------------------- the methods
TM = ("mtt", "ftd", "tesla", "datm")


@pytest.mark.parametrize("method", TM)
def test_trajectory_methods_learn_a_step_size_and_record_their_space(method, tiny_train, tiny_buffers):
    p = {**tiny(method), **({"threshold": 10.0} if method == "datm" else {})}   # DATM's gate: always update
    synset = methods.distill(method, tiny_train, ipc=1, params=p, device="cpu", data_root=tiny_buffers)
    assert synset.lr is not None and math.isfinite(synset.lr) and synset.lr != params.at_ipc(
        methods.make_config(method, tiny(method)), 1).lr_init   # alpha was updated
    assert synset.zca is False and torch.isfinite(synset.images).all()


def test_ftd_evaluates_the_moving_average(tiny_train, tiny_buffers):
    from ddlib import loop
    p = {**tiny("ftd"), "iterations": 3}
    first = loop.init_state(tiny_train, 1, init="real", lr_img=1, momentum=0, gen=torch.Generator().manual_seed(0),
                            device=torch.device("cpu")).x_syn.detach()
    frozen = methods.distill("ftd", tiny_train, ipc=1, params={**p, "ema_decay": 1.0}, data_root=tiny_buffers)
    last = methods.distill("ftd", tiny_train, ipc=1, params={**p, "ema_decay": 0.0}, data_root=tiny_buffers)
    half = methods.distill("ftd", tiny_train, ipc=1, params={**p, "ema_decay": 0.5}, data_root=tiny_buffers)
    assert torch.equal(frozen.images, first)                 # decay 1: the average never leaves the initial set
    assert not torch.equal(last.images, first)               # decay 0: the last images, which moved
    assert not torch.equal(half.images, first) and not torch.equal(half.images, last.images)


def test_datm_labels_are_distributions_and_start_from_correct_experts(tiny_train, tiny_buffers):
    synset = methods.distill("datm", tiny_train, ipc=1, params={**tiny("datm"), "threshold": 10.0},
                             data_root=tiny_buffers)
    assert synset.soft and synset.labels.shape == (10, 10)
    assert torch.allclose(synset.labels.sum(1), torch.ones(10)) and (synset.labels >= 0).all()


def test_datm_difficulty_window_grows():
    cfg = params.at_ipc(methods.make_config("datm", params.method_params(PARAMS, "datm", "paper")), 10)
    assert [datm.upper_bound(cfg, it) for it in (0, 500, 1000, 5000)] == [10, 15, 20, 20]
    at_1 = params.at_ipc(methods.make_config("datm", params.method_params(PARAMS, "datm", "paper")), 1)
    assert not at_1.sequential and datm.upper_bound(at_1, 0) == at_1.max_start_epoch == 4


def test_tesla_soft_labels_come_from_the_expert(tiny_train, tiny_buffers):
    synset = methods.distill("tesla", tiny_train, ipc=1, params={**tiny("tesla"), "soft_labels": True},
                             data_root=tiny_buffers)
    assert synset.soft and torch.allclose(synset.labels.sum(1), torch.ones(10))


def test_a_start_epoch_beyond_the_trajectories_fails_before_any_work(tiny_train, tiny_buffers):
    with pytest.raises(ValueError, match="needs expert epoch 6, but the trajectories of buffers@plain-fashion_mnist"
                                         " end at epoch 3"):
        methods.distill("mtt", tiny_train, ipc=1, params={**tiny("mtt"), "max_start_epoch": 5}, data_root=tiny_buffers)


def test_missing_buffers_name_the_stage(tiny_train, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro buffers@flat-fashion_mnist"):
        methods.distill("datm", tiny_train, ipc=1, params=tiny("datm"), data_root=tmp_path)


def test_a_method_in_zca_space_needs_whitened_data(tiny_train, tiny_buffers):
    with pytest.raises(ValueError, match="zca=True but the training split given has zca=False"):
        methods.distill("mtt", tiny_train, ipc=1, params={**tiny("mtt"), "zca": True}, data_root=tiny_buffers)


def test_a_nan_in_the_unroll_stops_with_the_loops_error(tiny_train, tiny_buffers):
    from ddlib import loop
    with pytest.raises(loop.NonFiniteError):
        methods.distill("mtt", tiny_train, ipc=1, params={**tiny("mtt"), "lr_init": float("inf")},
                        data_root=tiny_buffers)


def test_inputs_name_the_buffers_and_zca(tmp_path):
    p = tiny("mtt")
    assert methods.inputs("mtt", p, dataset="fashion_mnist", ipc=1, data_root=tmp_path) == [
        tmp_path / "fashion_mnist" / "buffers" / "plain" / "index.json"]
    with_zca = methods.inputs("mtt", {**p, "zca": {1: True, 10: False}}, dataset="fashion_mnist", ipc=1, data_root=tmp_path)
    assert with_zca[-1] == tmp_path / "fashion_mnist" / "zca.pt"
    assert methods.inputs("dm", tiny("dm"), dataset="fashion_mnist", ipc=1, data_root=tmp_path) == []
    assert methods.uses_zca("mtt", {**p, "zca": {1: True, 10: False}}, 1) and not methods.uses_zca("dm", {}, 1)


def test_zca_split_needs_the_zca_stage(tmp_path, fixture_root):
    with pytest.raises(FileNotFoundError, match="dvc repro zca@fashion_mnist"):
        zca.load_split("fashion_mnist", "train", tmp_path, whiten=True)
    assert zca.load_split("fashion_mnist", "test", fixture_root, whiten=False).zca is False
