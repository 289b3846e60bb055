"""Backpropagation through training (bptt.gradient) and the performance-matching methods built on it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddlib import bptt, loop, methods, nets, params, unroll
from ddlib.methods import dd, ld, rtp

PARAMS = params.load("params.yaml")


@pytest.fixture
def f64():
    """float64 for exact comparisons of the unroll math (restored after the test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _plan(batches):
    return unroll.Plan([torch.tensor(b) for b in batches], [None] * len(batches))


def test_one_step_meta_gradient_matches_the_hand_derivation(f64):
    """Linear softmax model W (K x D): W1 = W0 - lr G0 with G0 = (P0 - Y)^T X / n, L = CE(X_r W1^T, y_r);
    dL/dlr = -<G_r(W1), G0> and dL/dX = the chain through G0 (checked by central differences)."""
    torch.manual_seed(0)
    k, d, n, m = 3, 4, 5, 7
    net = nn.Linear(d, k, bias=False)
    fnet = unroll.FlatNet(net)
    w0 = fnet.flatten()
    x = torch.randn(n, d, requires_grad=True)
    y = torch.randint(k, (n,))
    xr, yr = torch.randn(m, d), torch.randint(k, (m,))
    lr = torch.tensor(0.7, requires_grad=True)
    meta = lambda w: F.cross_entropy(fnet(w, xr), yr)   # noqa: E731
    value, (gx, glr) = bptt.gradient(fnet, w0, x, y, lr, _plan([range(n)]), meta, [x, lr])

    W0 = w0.view(k, d)
    G0 = (torch.softmax(x.detach() @ W0.T, 1) - F.one_hot(y, k)).T @ x.detach() / n
    W1 = W0 - 0.7 * G0
    Gr = (torch.softmax(xr @ W1.T, 1) - F.one_hot(yr, k)).T @ xr / m
    assert value == pytest.approx(float(F.cross_entropy(xr @ W1.T, yr)), rel=1e-12)
    assert float(glr) == pytest.approx(float(-(Gr * G0).sum()), rel=1e-10)

    def loss_at(xv):
        G = (torch.softmax(xv @ W0.T, 1) - F.one_hot(y, k)).T @ xv / n
        return float(F.cross_entropy(xr @ (W0 - 0.7 * G).T, yr))
    eps, fd = 1e-6, torch.zeros(n, d)
    for i in range(n):
        for j in range(d):
            e = torch.zeros(n, d)
            e[i, j] = eps
            fd[i, j] = (loss_at(x.detach() + e) - loss_at(x.detach() - e)) / (2 * eps)
    assert torch.allclose(gx, fd, atol=1e-8)


def _problem(momentum):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    fnet = unroll.FlatNet(net)
    x = torch.randn(9, 6, requires_grad=True)
    logits = torch.randn(9, 3, requires_grad=True)
    raw = torch.full((7,), -1.0, requires_grad=True)
    xr, yr = torch.randn(20, 6), torch.randint(3, (20,))
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8]] * 2 + [[0, 4, 8]]
    def run(**kw):
        return bptt.gradient(fnet, fnet.flatten(), x, torch.softmax(logits, 1), F.softplus(raw), _plan(batches),
                           lambda w: F.cross_entropy(fnet(w, xr), yr), [x, logits, raw], momentum=momentum, **kw)
    return run, fnet, x, logits, raw, xr, yr, batches


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_checkpointed_and_plain_unrolls_give_the_same_gradient(momentum, f64):
    run = _problem(momentum)[0]
    value, plain = run()
    for segment in (1, 2, 3, 7):
        v, grads = run(segment=segment)
        assert v == value
        for a, b in zip(grads, plain):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    assert all(g.abs().sum() > 0 for g in plain)   # images, labels and every step size get a gradient


def test_bptt_equals_autograd_through_the_whole_unroll_with_momentum(f64):
    run, fnet, x, logits, raw, xr, yr, batches = _problem(0.9)
    value, grads = run(segment=2)
    w, v, y, lrs = fnet.flatten().requires_grad_(True), 0.0, torch.softmax(logits, 1), F.softplus(raw)
    for i, b in enumerate(batches):
        (g,) = torch.autograd.grad(F.cross_entropy(fnet(w, x[b]), y[b]), w, create_graph=True)
        v = 0.9 * v + g
        w = w - lrs[i] * v
    loss = F.cross_entropy(fnet(w, xr), yr)
    ref = torch.autograd.grad(loss, [x, logits, raw])
    assert value == pytest.approx(float(loss.detach()), rel=1e-12)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_learned_per_step_momenta_get_the_autograd_gradient(f64):
    """GTN's unroll: step sizes and momenta per step, both computed from leaves (log space); every segment size
    gives plain autograd's gradient for the images and for each step's log-lr and log-momentum."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    fnet = unroll.FlatNet(net)
    x, y = torch.randn(6, 5, requires_grad=True), torch.arange(6) % 3
    log_lr = torch.log(torch.full((4,), 0.3)).requires_grad_(True)
    log_mu = torch.log(torch.tensor([0.5, 0.6, 0.7, 0.8])).requires_grad_(True)
    xr, yr = torch.randn(12, 5), torch.randint(3, (12,))
    batches = [[0, 1, 2], [3, 4, 5], [0, 2, 4], [1, 3, 5]]
    w, v = fnet.flatten().requires_grad_(True), 0.0
    for i, b in enumerate(batches):
        (g,) = torch.autograd.grad(F.cross_entropy(fnet(w, x[b]), y[b]), w, create_graph=True)
        v = log_mu.exp()[i] * v + g
        w = w - log_lr.exp()[i] * v
    ref = torch.autograd.grad(F.cross_entropy(fnet(w, xr), yr), [x, log_lr, log_mu])
    for segment in (None, 1, 3):
        _, grads = bptt.gradient(fnet, fnet.flatten(), x, y, log_lr.exp(), _plan(batches),
                                 lambda w: F.cross_entropy(fnet(w, xr), yr), [x, log_lr, log_mu],
                                 momentum=log_mu.exp(), segment=segment)
        for a, b in zip(grads, ref):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    assert torch.count_nonzero(ref[2][1:]) == 3 and ref[2][0] == 0   # mu_0 multiplies v_0 = 0


def test_truncation_backpropagates_through_the_last_steps_only(f64):
    run = _problem(0.0)[0]
    _, full = run()
    _, same = run(truncate=7)
    _, last2 = run(truncate=2, segment=1)
    assert all(torch.equal(a, b) for a, b in zip(full, same))
    raw_grad = last2[2]
    assert torch.count_nonzero(raw_grad[:5]) == 0 and torch.count_nonzero(raw_grad[5:]) == 2
    assert not torch.allclose(last2[0], full[0])


def test_bad_segment_is_refused(f64):
    run = _problem(0.0)[0]
    with pytest.raises(ValueError, match="segment"):
        run(segment=-1)


# ---------------------------------------------------------------- the methods on it
def tiny(method, **over):
    return {**params.method_params(PARAMS, method, "tiny"), **over}


def test_dd_schedule_and_step_size_parameterisation():
    steps = dd.schedule(ipc=4, num_classes=3, images_per_step=2, epochs=2)
    assert [b.tolist() for b in steps] == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]] * 2
    with pytest.raises(ValueError, match="multiple of images_per_step"):
        dd.schedule(ipc=3, num_classes=3, images_per_step=2, epochs=1)
    assert float(F.softplus(torch.tensor(dd.raw_lr(0.02)))) == pytest.approx(0.02, rel=1e-6)


def test_dd_learns_images_and_step_sizes_and_replays_its_schedule(tiny_train, tiny_test):
    synset = methods.distill("dd", tiny_train, ipc=2, params=tiny("dd", images_per_step=1), device="cpu", seed=0)
    lrs = synset.provenance["step_lrs"]
    assert len(lrs) == 2 * 3 and all(v > 0 for v in lrs) and any(abs(v - 0.02) > 1e-6 for v in lrs)
    assert not synset.soft and synset.images.shape == (20, 1, 28, 28)
    own = methods.own_evaluation("dd", synset, tiny_test, params=tiny("dd"), device="cpu")
    assert len(own["accs"]) == 1 and 0 <= own["mean"] <= 100 and "6-step schedule" in own["recipe"]
    rnd = methods.distill("random", tiny_train, ipc=1, params=None, device="cpu", seed=0)
    with pytest.raises(ValueError, match="no learned schedule"):
        dd.own_evaluation(rnd, tiny_test, methods.make_config("dd", tiny("dd")), device="cpu")


def test_sldd_keeps_its_raw_learned_labels(tiny_train):
    synset = methods.distill("sldd", tiny_train, ipc=1, params=tiny("sldd"), device="cpu", seed=0)
    onehot = F.one_hot(torch.arange(10), 10).float()
    assert synset.soft and not torch.allclose(synset.labels, onehot)
    assert torch.allclose(synset.labels, onehot, atol=0.1)   # two Adam steps of lr 0.01 from one-hot, not a softmax
    assert synset.hard_labels().tolist() == list(range(10))


def test_ld_labels_stay_distributions_and_images_stay_real(tiny_train):
    init = loop.init_state(tiny_train, 1, init="real", lr_img=1, momentum=0, gen=torch.Generator().manual_seed(0),
                           device=torch.device("cpu"))
    synset = methods.distill("ld", tiny_train, ipc=1, params=tiny("ld", iterations=4), device="cpu", seed=0)
    assert torch.equal(synset.images, init.x_syn.detach())
    assert (synset.labels >= 0).all() and torch.allclose(synset.labels.sum(1), torch.ones(10))
    assert not torch.allclose(synset.labels, torch.full((10, 10), 0.1))
    y = torch.tensor([[2.0, -1.0, 0.5], [-1.0, -2.0, -3.0]])
    ld.project(y)
    assert torch.allclose(y, torch.tensor([[2 / 3, 0.0, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]))


def test_ld_restarts_its_model_when_the_meta_loss_stalls(tiny_train, monkeypatch):
    resets = []
    real_fresh = ld.fresh_model
    monkeypatch.setattr(ld, "fresh_model", lambda *a: (resets.append(1), real_fresh(*a)))
    monkeypatch.setattr(bptt, "gradient", lambda *a, **k: (1.0, [torch.zeros_like(a[-1][0])]))   # a flat meta-loss
    methods.distill("ld", tiny_train, ipc=1, params=tiny("ld", iterations=6, stats_gap=2), device="cpu", seed=0)
    assert len(resets) == 1 + 1   # the initial model, then one restart: windows (1, 1) -> (1, 1) did not improve
    """windows end at iterations 2, 4, 6: the first sets the baseline, the second does not improve (reset), the
    third is the new baseline"""


def test_an_exploding_meta_gradient_stops_with_the_last_checkpoint_kept(tiny_train, tmp_path, monkeypatch):
    calls, real_bptt = [], bptt.gradient

    def exploding(*a, **k):
        calls.append(1)
        value, grads = real_bptt(*a, **k)
        return (value, [g * float("inf") for g in grads]) if len(calls) == 3 else (value, grads)
    monkeypatch.setattr(bptt, "gradient", exploding)
    ckpt = tmp_path / "dd.pt"
    with pytest.raises(loop.NonFiniteError, match="non-finite gradient at iteration 2"):
        methods.distill("dd", tiny_train, ipc=1, params=tiny("dd", iterations=5, checkpoint_every=1), device="cpu",
                        seed=0, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["state"]["iteration"] == 2


# ---------------------------------------------------------------- RTP: long momentum unroll, addressing, storage
def test_rtp_storage_budget_by_hand():
    """families-2.md §A.6: budget k C H W K floats; bases n_b C H W / d^2; the rest buys rows of n_b coefficients."""
    assert rtp.per_class(1, (3, 32, 32), 10, 16, 2) == (30_720 - 12_288) // 160 == 115   # CIFAR-10 IPC 1
    assert rtp.per_class(1, (1, 28, 28), 10, 16, 2) == (7_840 - 3_136) // 160 == 29     # Fashion-MNIST IPC 1
    cfg = rtp.Config(n_basis=16, downsample=2)
    st = rtp.storage(cfg, 10, (1, 28, 28), 10)
    assert st["ipc_decoded"] == (78_400 - 3_136) // 160 == 470 and st["decoded_images"] == 4_700
    assert st["stored_floats"] == 3_136 + 4_700 * 16 <= 78_400 and st["ipc_stored"] == pytest.approx(9.99, abs=0.01)
    plain = rtp.storage(rtp.Config(), 10, (1, 28, 28), 10)
    assert plain["stored_floats"] == 78_400 and plain["ipc_decoded"] == 10 and plain["ipc_stored"] == 10
    with pytest.raises(ValueError, match="fewer bases"):
        rtp.per_class(1, (1, 28, 28), 10, 100, 1)     # 100 full-size bases cost more than the whole budget
    with pytest.raises(ValueError, match="does not divide"):
        rtp.per_class(1, (1, 28, 28), 10, 4, 3)


def test_rtp_decodes_coefficients_times_bases_upsampled():
    cfg = rtp.Config(n_basis=2, downsample=2)
    bases = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)
    coeffs = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    state = loop.State(x_syn=bases, y_syn=torch.tensor([0, 1]), opt=None, gen=None, extra={"coeffs": coeffs})
    x = rtp.decode(state, cfg, (4, 4))
    expect = F.interpolate(torch.stack([bases[0], 0.5 * bases[0] + 2 * bases[1]]), size=(4, 4), mode="bilinear",
                           align_corners=False)
    assert x.shape == (2, 1, 4, 4) and torch.allclose(x, expect)


def test_rtp_minibatches_and_clipping_by_hand():
    batches = rtp.minibatches(4, 3, 2, 5, torch.Generator().manual_seed(0))
    assert len(batches) == 5
    for b in batches:   # two distinct images of every class, in class order
        assert [int(i) // 4 for i in b] == [0, 0, 1, 1, 2, 2] and len(set(b.tolist())) == 6
    assert rtp.minibatches(1, 3, 10, 1, torch.Generator())[0].tolist() == [0, 1, 2]   # m > n: the whole set
    big = rtp.clip_([torch.tensor([3.0, 0.0]), torch.tensor([4.0])], 2.0)   # total norm 5 -> 2
    assert torch.allclose(torch.cat(big), torch.tensor([1.2, 0.0, 1.6]), atol=1e-5)
    small = rtp.clip_([torch.tensor([0.3]), torch.tensor([0.4])], 2.0)
    assert torch.allclose(torch.cat(small), torch.tensor([0.3, 0.4]), atol=1e-5)


def test_rtp_with_addressing_learns_bases_and_coefficients(tiny_train):
    over = dict(n_basis=4, downsample=2, coeff_reg=1e-4, minibatch=2)
    synset = methods.distill("rtp", tiny_train, ipc=1, params=tiny("rtp", **over), device="cpu", seed=0)
    n = (7_840 - 4 * 196) // 40
    assert synset.images.shape == (10 * n, 1, 28, 28) and synset.provenance["storage"]["ipc_decoded"] == n
    assert synset.hard_labels().tolist() == [c for c in range(10) for _ in range(n)]
    assert synset.provenance["storage"]["stored_floats"] <= 7_840
    init = rtp.init(tiny_train, methods.make_config("rtp", tiny("rtp", **over)), 1, torch.Generator().manual_seed(0),
                    torch.device("cpu"))
    assert not torch.allclose(synset.images, rtp.decode(init, methods.make_config("rtp", tiny("rtp", **over)),
                                                         (28, 28)).detach())


def test_rtp_checkpointed_meta_gradient_equals_plain_bptt(tiny_train):
    """The same iteration with segment = ceil(sqrt(N)) (the default) and segment = N (one graph) moves the
    images identically (up to float rounding)."""
    def one(segment):
        cfg = methods.make_config("rtp", tiny("rtp", iterations=1, inner_steps=6, segment=segment))
        state = rtp.init(tiny_train, cfg, 1, torch.Generator().manual_seed(0), torch.device("cpu"))
        fnet = unroll.FlatNet(nets.make_net("convnet", 1, 10, (28, 28), seed=0))
        rtp.step(state, tiny_train, cfg, fnet)
        return state.x_syn.detach()
    assert torch.allclose(one(None), one(6), atol=1e-6)
