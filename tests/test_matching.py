"""Gradient and feature matching, part two (dcc, idc, accdd, cafe): distances and losses against hand
computations, second-order gradients, BatchNorm handling, IDC's decode and storage accounting, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddlib import loop, methods, multiformation, nets
from ddlib.methods import accdd, cafe, dc, dcc, idc

from .test_methods import tiny


def _state(real, ipc=1, init="real", seed=0):
    return loop.init_state(real, ipc, init=init, lr_img=0.1, momentum=0.5, gen=torch.Generator().manual_seed(seed),
                           device=torch.device("cpu"))


# ---------------------------------------------------------------- distances by hand
def test_l1_and_magnitude_aware_distances_by_hand():
    g_real, g_syn = [torch.tensor([[3.0, 4.0]])], [torch.tensor([[6.0, 8.0]])]
    assert dc.gradient_distance(g_real, g_syn, "l1").item() == pytest.approx(7.0)     # |3-6| + |4-8|
    # same direction: the angle term is ~0; norms 5 and 10 -> (10 - 5)^2 / 5^2 = 1, times the weight
    assert dc.layer_distance(g_real[0], g_syn[0]).item() == pytest.approx(0.0, abs=1e-6)
    assert dc.layer_distance(g_real[0], g_syn[0], magnitude=0.5).item() == pytest.approx(0.5, abs=1e-5)
    orthogonal = torch.tensor([[-4.0, 3.0]])                                           # cos 0, equal norms
    assert dc.layer_distance(g_real[0], orthogonal, magnitude=2.0).item() == pytest.approx(1.0, abs=1e-5)


def test_dcc_mean_gradient_and_the_whole_set_identity(tiny_train):
    a, b = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    assert dcc.mean_gradient([a, b])[0].tolist() == [2.0, 0.0]
    # the synthetic side of the contrastive signal is one CE over all classes: with equal class sizes its
    # gradient is the mean of the class-wise gradients, the quantity the real side averages
    net = nets.make_net("convnet_w16", 1, 10, (28, 28), seed=0)
    params_ = list(net.parameters())
    x, y = tiny_train.x[:20], tiny_train.y[:20]
    order = y.argsort()
    x, y = x[order], y[order]
    per_class = [dc.grad_of(net, params_, x[y == c], y[y == c], graph=False) for c in y.unique()]
    counts = torch.stack([(y == c).sum() for c in y.unique()]).float()
    weighted = [sum(n * g[i] for n, g in zip(counts, per_class)) / counts.sum() for i in range(len(params_))]
    whole = dc.grad_of(net, params_, x, y, graph=False)
    assert all(torch.allclose(w, h, atol=1e-6) for w, h in zip(weighted, whole))


def test_dcc_contrastive_loss_switches_after_the_warmup_and_is_second_order(tiny_train):
    cfg = methods.make_config("dcc", {**tiny("dcc"), "outer_warmup": 1})
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0)
    params_ = list(net.parameters())
    state = _state(tiny_train)
    state.gen.manual_seed(0)
    warm = dcc.contrastive_loss(net, params_, state, tiny_train, cfg)
    state.gen.manual_seed(0)
    assert warm.item() == pytest.approx(dc.matching_loss(net, params_, state, tiny_train, cfg).item(), rel=1e-5)
    state.iteration = 1
    state.gen.manual_seed(0)
    loss = dcc.contrastive_loss(net, params_, state, tiny_train, cfg)
    # by hand: the same draws, the mean real gradient against the gradient of the whole augmented set
    state.gen.manual_seed(0)
    _, g_reals, x_syns = dc.class_signals(net, params_, state, tiny_train, cfg, per_class=False)
    g_syn = dc.grad_of(net, params_, torch.cat(x_syns), state.y_syn, graph=False)
    by_hand = dc.gradient_distance(dcc.mean_gradient(g_reals), g_syn, "ours")
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, state.x_syn)
    assert all(g.abs().sum() > 0 for g in grad.view(10, -1))   # every class's image gets the signal


# ---------------------------------------------------------------- BatchNorm-aware matching
def test_bn_frozen_gradient_does_not_depend_on_how_classes_are_batched(tiny_train):
    net = nets.make_net("convnet_bn", 1, 10, (28, 28), seed=0)
    params_ = list(net.parameters())
    x = tiny_train.x[:12]
    y = tiny_train.y[:12]

    def per_image_grads():
        alone = dc.grad_of(net, params_, x[:6], y[:6], graph=False)
        together = dc.grad_of(net, params_, x, y, graph=False)
        rest = dc.grad_of(net, params_, x[6:], y[6:], graph=False)
        return [torch.allclose((a + r) / 2, t, atol=1e-5) for a, r, t in zip(alone, rest, together)]

    net.train()   # batch statistics: a class's gradient depends on the other images of its batch
    assert not all(per_image_grads())
    dc.bn_freeze(net, tiny_train, torch.Generator().manual_seed(0), "cpu")
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(per_image_grads())    # frozen real statistics: batching no longer matters


@pytest.mark.parametrize("method", ["dc", "dsa", "dm", "dcc", "idc", "cafe"])
def test_matching_methods_run_with_a_batchnorm_net(tiny_train, method):
    synset = methods.distill(method, tiny_train, ipc=1, params={**tiny(method), "model": "convnet_bn"}, seed=0)
    assert torch.isfinite(synset.images).all() and synset.params["model"] == "convnet_bn"


def test_idc_matches_with_frozen_bn_and_trains_on_real_data_unfrozen(tiny_train, monkeypatch):
    modes = []
    real_loss, real_step = idc.class_loss, idc.real_update

    def spy_loss(net, *a, **k):
        modes.append(("match", {m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}))
        return real_loss(net, *a, **k)

    def spy_update(net, *a, **k):
        real_step(net, *a, **k)
        modes.append(("train", {m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}))

    monkeypatch.setattr(idc, "class_loss", spy_loss)
    monkeypatch.setattr(idc, "real_update", spy_update)
    methods.distill("idc", tiny_train, ipc=1, params={**tiny("idc"), "model": "convnet_bn"}, seed=0)
    assert {k for k, _ in modes} == {"match", "train"}
    assert all(m == ({False} if k == "match" else {True}) for k, m in modes)


# ---------------------------------------------------------------- IDC: decode, storage, errors (multiformation.py)
def test_idc_decode_is_exact():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    out = multiformation.decode(x, 2)
    assert out.shape == (8, 1, 4, 4)
    # tile-major: out[t * 2 + n] is tile t = (i, j) of image n, upsampled bilinearly to 4 x 4
    for i in range(2):
        for j in range(2):
            for n in range(2):
                tile = x[n:n + 1, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                want = F.interpolate(tile, size=(4, 4), mode="bilinear", align_corners=False)
                assert torch.equal(out[(2 * i + j) * 2 + n], want[0])
    constant = torch.zeros(1, 1, 4, 4)
    constant[..., :2, 2:] = 5.0                       # tile (0, 1) is 5 everywhere
    assert torch.equal(multiformation.decode(constant, 2)[1], torch.full((1, 4, 4), 5.0))
    assert torch.equal(multiformation.decode(x, 1), x)


def test_idc_storage_matches_a_hand_count():
    s = multiformation.storage(100, (1, 28, 28), 2, 10)           # Fashion-MNIST, IPC 10, factor 2
    assert s == {"factor": 2, "stored_images": 100, "stored_floats": 78_400, "floats_per_image": 784,
                 "decoded_images": 400, "ipc_stored": 10, "ipc_decoded": 40}


def test_idc_set_records_storage_and_decoded_labels(tiny_train):
    synset = methods.distill("idc", tiny_train, ipc=2, params=tiny("idc"), seed=0)
    assert synset.images.shape == (80, 1, 28, 28)
    assert synset.provenance["storage"]["stored_floats"] == 20 * 784
    assert synset.labels.tolist() == [c for c in range(10) for _ in range(2)] * 4


def test_idc_factor_that_cannot_tile_fails_before_any_work(tiny_train, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(ValueError, match="factor=3 cannot tile.*divides the image side"):
        methods.distill("idc", tiny_train, ipc=1, params={**tiny("idc"), "factor": 3}, checkpoint=ckpt)
    assert not ckpt.exists()


def test_idc_step_moves_the_stored_images_by_second_order_gradients(tiny_train):
    cfg = methods.make_config("idc", tiny("idc"))
    state = _state(tiny_train)
    idc.setup(state, tiny_train, cfg)
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0)
    loss = idc.class_loss(net, idc.matched(net), state, tiny_train, cfg, 3)
    (grad,) = torch.autograd.grad(loss, state.x_syn)
    assert grad[3].abs().sum() > 0 and grad[:3].abs().sum() == 0      # class 3's image only
    before = state.x_syn.detach().clone()
    idc.step(state, tiny_train, cfg)
    assert not torch.allclose(before, state.x_syn.detach())


def test_cutmix_mixes_one_box_and_reports_its_area():
    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(4)])
    mixed, perm, lam = idc.cutmix(x, torch.Generator().manual_seed(3))
    for n in range(4):
        from_other = (mixed[n] == float(perm[n])).float().mean().item() if perm[n] != n else 1 - lam
        assert from_other == pytest.approx(1 - lam)


# ---------------------------------------------------------------- Acc-DD
def test_accdd_perturbation_is_filter_normalised_and_spares_biases():
    p = torch.randn(4, 3, 3, 3)
    d = accdd.filter_normalised(p, torch.Generator().manual_seed(0))
    assert torch.allclose(d.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1), rtol=1e-5)
    net = nets.make_net("convnet_w8", 1, 10, (28, 28), seed=0)
    before = {n: t.detach().clone() for n, t in net.named_parameters()}
    cfg = accdd.Config()
    accdd.perturb(net, cfg, torch.Generator().manual_seed(0))
    for name, t in net.named_parameters():
        moved = (t - before[name]).flatten(1).norm(dim=1) / before[name].flatten(1).norm(dim=1) if t.dim() > 1 else None
        if moved is None:
            assert torch.equal(t, before[name]), name                 # biases and norm parameters untouched
        else:   # |a d_x + b d_y| <= (|a| + |b|) |theta| per filter, with |a|, |b| <= vmax
            assert (moved > 0).all() and (moved <= 2 * cfg.vmax + 1e-6).all(), name


def test_accdd_pool_net_starts_from_the_expert_snapshot(tiny_train, tiny_buffers):
    cfg = methods.make_config("accdd", {**tiny("accdd"), "vmin": 0.0, "vmax": 0.0})   # no perturbation
    pool = accdd.load_pool(tiny_train, cfg, tiny_buffers)
    net = accdd.pool_net(pool, cfg)(_state(tiny_train), tiny_train, cfg)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert torch.equal(flat, pool.at(0, cfg.pt_from)[0])


def test_accdd_without_buffers_names_the_stage(tiny_train, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro buffers@plain-fashion_mnist"):
        methods.distill("accdd", tiny_train, ipc=1, params=tiny("accdd"), data_root=tmp_path)


# ---------------------------------------------------------------- CAFE
def test_cafe_alignment_and_discrimination_by_hand():
    # two classes, one real and one synthetic sample each, maps of 2 values; weights (1, 2): the last map
    # also counts as the embedding
    real = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 2.0], [0.0, 0.0]])]
    syn = [torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 2.0], [0.0, 1.0]])]
    # map 1: 1 + 1 = 2 (x1); map 2: 1 + 1 = 2 (x2) ; embedding (= map 2): 2
    assert cafe.alignment(real, syn, 2, (1.0, 2.0)).item() == pytest.approx(2 + 4 + 2)
    emb_real, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    emb_syn = torch.tensor([[2.0, 0.0], [0.0, 2.0]])         # centres (2, 0), (0, 2): logits [[2, 0], [0, 2]]
    expected = 2 * -math.log(math.exp(2) / (math.exp(2) + 1))
    assert cafe.discrimination(emb_real, y, emb_syn, 2).item() == pytest.approx(expected, rel=1e-6)


def test_cafe_stage_features_and_spread():
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0)
    x = torch.randn(2, 1, 28, 28)
    maps, logits = cafe.stage_features(net, x)
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 32, 32), (128, 16, 16), (128, 8, 8), (128, 4, 4)]
    assert torch.allclose(logits, net(x)) and torch.allclose(maps[-1].flatten(1), net.embed(x))
    assert cafe.spread([0.1, 0.5, 0.3], 3) == pytest.approx(0.4) and cafe.spread([0.1], 3) is None


def test_cafe_loss_reaches_the_images(tiny_train):
    cfg = methods.make_config("cafe_dsa", tiny("cafe_dsa"))
    state = _state(tiny_train, init="noise")
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0)
    loss, x_probe, y_probe = cafe.objective(net, state, tiny_train, cfg)
    (grad,) = torch.autograd.grad(loss, state.x_syn)
    assert all(g.abs().sum() > 0 for g in grad.view(10, -1)) and len(x_probe) == 10 * cfg.probe
