"""kernels.py against Monte-Carlo estimates from wide random finite nets, KRR against hand solves, and the
kernel methods' bad-input paths (ill-conditioned supports, learned targets)."""

import math

import pytest
import torch
from torch import nn

from ddlib import kernels, loop, nets
from ddlib.methods import frepo, kip, rfad

W, B = kernels.W_VAR, kernels.B_VAR
TOL = 0.05   # relative Frobenius error of the kernel matrix vs its Monte-Carlo estimate (stated in the issue)


def _redraw(net: nn.Module, gen: torch.Generator) -> nn.Module:
    """NTK-parameterised init: weights N(0, W / fan_in), biases N(0, B)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(W / m.weight[0].numel()))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * math.sqrt(B))
    return net


def _monte_carlo(make, x: torch.Tensor, n_nets: int, embed) -> tuple[torch.Tensor, torch.Tensor]:
    """NNGP = E[W phi.phi'/d + B] over random nets (the readout integrated out exactly); NTK = E[sum over
    parameters of (W/fan_in or B) grad f(x) . grad f(x')] (the NTK parameterisation's gradients)."""
    gen, nngp, ntk = torch.Generator().manual_seed(1), 0.0, 0.0
    for _ in range(n_nets):
        net = _redraw(make(), gen)
        phi = embed(net, x)
        nngp = nngp + W * phi @ phi.T / phi.shape[1] + B
        rows = []
        for i in range(len(x)):
            net.zero_grad()
            net(x[i:i + 1]).sum().backward()
            rows.append(torch.cat([g for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                                   for g in (m.weight.grad.flatten() * math.sqrt(W / m.weight[0].numel()),
                                             m.bias.grad.flatten() * math.sqrt(B))]))
        g = torch.stack(rows)
        ntk = ntk + g @ g.T
    return (nngp / n_nets).detach(), ntk / n_nets


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _fc_net(d_in, width, depth):
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(d, 1))


@pytest.mark.parametrize("depth", [1, 2])
def test_fc_kernels_match_monte_carlo(depth):
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    mc_nngp, mc_ntk = _monte_carlo(lambda: _fc_net(36, 2048, depth), x, 8, lambda net, x: net[:-1](x))
    assert _rel(kernels.fc(x, x, depth=depth, ntk=False), mc_nngp) < TOL
    assert _rel(kernels.fc(x, x, depth=depth, ntk=True), mc_ntk) < TOL


@pytest.mark.parametrize("channels, size, depth, width, n_nets", [(3, 8, 2, 512, 6), (1, 28, 3, 1024, 4)])
def test_conv_kernels_match_monte_carlo_of_the_convnet(channels, size, depth, width, n_nets):
    """The kernels of nets.ConvNet itself (norm 'nn'), including the 28x28 input's first-conv padding 3."""
    x = torch.randn(4, channels, size, size, generator=torch.Generator().manual_seed(0))
    make = lambda: nets.ConvNet(channels, 1, (size, size), width=width, depth=depth, norm="nn")  # noqa: E731
    mc_nngp, mc_ntk = _monte_carlo(make, x, n_nets, lambda net, x: net.embed(x))
    assert _rel(kernels.conv(x, x, depth=depth, ntk=False), mc_nngp) < TOL
    assert _rel(kernels.conv(x, x, depth=depth, ntk=True), mc_ntk) < TOL


def test_random_features_approximate_the_conv_nngp():
    """RFAD's premise: a few random finite ConvNets' features estimate the ConvNet NNGP."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    models = kernels.random_convnets("convnet_w1024_nn", 1, (28, 28), seeds=[1, 2, 3, 4, 5, 6])
    with torch.no_grad():
        phi = kernels.random_features(models, x)
    assert _rel(kernels.feature_kernel(phi, phi), kernels.conv(x, x, ntk=False)) < TOL


@pytest.mark.parametrize("name", kernels.KERNELS)
def test_kernels_are_symmetric_psd_and_chunking_is_exact(name):
    x = torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k = kernels.kernel_fn(name)(x, x)
    assert torch.allclose(k, k.T, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(k).min() > -1e-10 * k.diagonal().max()
    if name.startswith("conv"):
        assert torch.allclose(kernels.conv(x, x, ntk=name.endswith("ntk"), chunk=2), k, rtol=1e-12)


def test_kernels_differentiate_through_both_inputs_without_nans():
    x1 = torch.randn(3, 1, 28, 28, requires_grad=True)
    x2 = torch.cat([x1.detach()[:1], torch.randn(2, 1, 28, 28)]).requires_grad_(True)  # an exact duplicate pair
    for name in kernels.KERNELS:
        g1, g2 = torch.autograd.grad(kernels.kernel_fn(name)(x1, x2).sum(), (x1, x2))
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all() and g1.abs().sum() > 0


def test_kernels_match_neural_tangents():
    """The official library's values (bench/neural_tangents_reference.py: neural-tangents 0.6.5, float64) for
    FC depth 1-2 and ConvNet depth 1-3, on a 3x8x8 and the 1x28x28 (first-conv padding 3) input."""
    import json
    from pathlib import Path
    ref = json.loads((Path(__file__).parent / "golden" / "neural_tangents.json").read_text())
    assert ref["W_std"] ** 2 == pytest.approx(W) and ref["b_std"] ** 2 == pytest.approx(B)
    for key, values in ref["kernels"].items():
        name, family, depth = key.split("/")
        spec = ref["inputs"][name]
        x = torch.randn(spec["shape"], generator=torch.Generator().manual_seed(spec["seed"]), dtype=torch.float64)
        fn = kernels.fc if family == "fc" else kernels.conv
        for kind in ("nngp", "ntk"):
            theirs = torch.tensor(values[kind], dtype=torch.float64)
            ours = fn(x, x, depth=int(depth), ntk=kind == "ntk")
            assert (ours - theirs).abs().max() / theirs.abs().max() < 1e-6, (key, kind)


def test_unknown_kernel_names_the_choices():
    with pytest.raises(ValueError, match="fc_ntk"):
        kernels.kernel_fn("rbf")


# ---------------------------------------------------------------- KRR
def test_krr_matches_a_hand_solve():
    k_ss = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    y = torch.tensor([[1.0], [0.0]])
    k_ts = torch.tensor([[1.0, 0.0]])
    # reg 0: K^-1 y = (2, -1)/3 -> 2/3
    assert kernels.krr(k_ts, k_ss, y, reg=0.0).item() == pytest.approx(2 / 3, rel=1e-6)
    # reg 0.5 relative to tr/n = 2: (K + I)^-1 = [[3, -1], [-1, 3]]/8 -> alpha = (3, -1)/8 -> 3/8
    assert kernels.krr(k_ts, k_ss, y, reg=0.5).item() == pytest.approx(3 / 8, rel=1e-6)


def test_krr_regularises_a_duplicated_support_and_refuses_nan():
    x = torch.randn(3, 5)
    x = torch.cat([x, x[:1]])                       # rank 3 of 4, and reg 0
    k = x @ x.T
    pred = kernels.krr(k, k, torch.eye(4), reg=0.0)
    assert torch.isfinite(pred).all()
    with pytest.raises(ValueError, match="duplicate"):
        kernels.krr(k, -torch.ones(4, 4), torch.eye(4), reg=0.0)   # never positive definite
    with pytest.raises(FloatingPointError, match="NaN"):
        kernels.krr(k, torch.full((4, 4), float("nan")), torch.eye(4))


def _tiny_real():
    """A 3-class split of 6x6 grey images: enough for one KIP/FRePo step."""
    from dataclasses import replace

    from ddlib.data import LabeledImages, get_spec
    spec = replace(get_spec("fashion_mnist"), num_classes=3, im_size=(6, 6), classes=("a", "b", "c"))
    gen = torch.Generator().manual_seed(0)
    return LabeledImages(torch.randn(30, 1, 6, 6, generator=gen), torch.arange(3).repeat(10), spec)


def test_kip_step_learns_images_and_targets_and_survives_duplicates():
    real = _tiny_real()
    cfg = kip.Config(iterations=1, target_batch=9, reg=0.0)
    x = real.x[:2].repeat(3, 1, 1, 1)                       # duplicated support points, reg 0
    state = loop.State(x_syn=x.clone().requires_grad_(True), y_syn=torch.arange(3).repeat_interleave(2),
                       opt=torch.optim.SGD([torch.zeros(1)], lr=1), gen=torch.Generator().manual_seed(0))
    kip.setup(state, cfg, 3)
    before_x, before_y = state.x_syn.detach().clone(), state.extra["targets"].detach().clone()
    value = kip.step(state, real, cfg)
    assert math.isfinite(value) and torch.isfinite(state.x_syn).all()
    assert not torch.equal(state.x_syn, before_x) and not torch.equal(state.extra["targets"], before_y)


def test_frepo_and_rfad_learn_their_targets_and_rfad_its_temperature():
    real = _tiny_real()
    x = real.x[::5].clone()                                  # 6 support images, 2 a class
    fr_cfg = frepo.Config(iterations=1, num_models=1, target_batch=9, model="convnet_d1_w8")
    fr = loop.State(x_syn=x.clone().requires_grad_(True), y_syn=real.y[::5], opt=None,
                    gen=torch.Generator().manual_seed(0))
    frepo.setup(fr, real, fr_cfg)
    rf_cfg = rfad.Config(iterations=1, num_models=2, target_batch=9, model="convnet_d1_w8_nn")
    rf = loop.State(x_syn=x.clone().requires_grad_(True), y_syn=real.y[::5], opt=None,
                    gen=torch.Generator().manual_seed(0))
    rfad.setup(rf, rf_cfg, 3)
    start = {"frepo": fr.extra["targets"].detach().clone(), "rfad": rf.extra["targets"].detach().clone()}
    assert torch.equal(start["frepo"], kernels.centred_onehot(real.y[::5], 3)) and rf.extra["log_tau"].item() == 0
    frepo.step(fr, real, fr_cfg)
    rfad.step(rf, real, rf_cfg)
    assert not torch.equal(fr.extra["targets"], start["frepo"]) and not torch.equal(rf.extra["targets"], start["rfad"])
    assert rf.extra["log_tau"].item() != 0                  # Platt's temperature is learned too
    fixed = rfad.Config(iterations=1, num_models=2, target_batch=9, model="convnet_d1_w8_nn", learn_labels=False,
                        loss="mse")
    still = loop.State(x_syn=x.clone().requires_grad_(True), y_syn=real.y[::5], opt=None,
                       gen=torch.Generator().manual_seed(0))
    rfad.setup(still, fixed, 3)
    rfad.step(still, real, fixed)
    assert torch.equal(still.extra["targets"], start["rfad"]) and not still.extra["log_tau"].requires_grad


def test_frepo_pool_takes_adam_steps_and_resets():
    real = _tiny_real()
    cfg = frepo.Config(iterations=3, num_models=1, max_online_updates=2, target_batch=9, model="convnet_d1_w8")
    x = real.x[::5].clone().requires_grad_(True)
    state = loop.State(x_syn=x, y_syn=real.y[::5], opt=torch.optim.SGD([x], lr=1),
                       gen=torch.Generator().manual_seed(0))
    frepo.setup(state, real, cfg)
    start = state.extra["pool"][0].clone()
    for _ in range(2):
        frepo.step(state, real, cfg)
    trained = state.extra["pool"][0].clone()
    assert not torch.equal(trained, start) and int(state.extra["pool_steps"][0]) == 2
    frepo.step(state, real, cfg)                            # the third use re-initialises the model
    assert int(state.extra["pool_steps"][0]) == 0 and not torch.equal(state.extra["pool"][0], trained)
    assert state.extra["pool_v"][0].abs().sum() == 0
