"""The fast code paths (issue 7) compute what the straightforward per-class reference computes.

bench/reference.py keeps ddlib's DM and DC/DSA steps as they were before the performance work (one class at
a time, torch's nn.AvgPool2d); on the same seed the fast steps must give the same loss, the same updated images
and leave the generator in the same state (the same random draws were taken)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench import reference
from ddlib import loop, methods, nets, params

PARAMS = params.load("params.yaml")


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (1, 2, 2, 2), (3, 1, 5, 4)])
def test_avgpool2_is_torch_avg_pool(shape):
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    assert torch.allclose(nets.AvgPool2()(x), F.avg_pool2d(x, 2), atol=1e-12)
    g = torch.randn_like(F.avg_pool2d(x, 2))
    ours, = torch.autograd.grad(nets.AvgPool2()(x), x, g)
    theirs, = torch.autograd.grad(F.avg_pool2d(x, 2), x, g)
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_avgpool2_differentiates_to_second_order():
    x = torch.randn(2, 3, 6, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(nets.AvgPool2(), (x,))
    assert torch.autograd.gradgradcheck(nets.AvgPool2(), (x,))


def test_the_network_matches_torch_pooling_forward_and_backward():
    x = torch.randn(4, 1, 28, 28)
    ours = nets.make_net("convnet", 1, 10, (28, 28), seed=3)
    theirs = reference.torch_pooling(nets.make_net("convnet", 1, 10, (28, 28), seed=3))
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in theirs.modules())
    out_ours, out_theirs = ours(x), theirs(x)
    assert torch.allclose(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5)   # conv biases before a norm: 0 + noise


def one_step(step, cfg, real, ipc):
    state = loop.init_state(real, ipc, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                            gen=torch.Generator().manual_seed(7), device=torch.device("cpu"))
    loss = step(state, real, cfg)
    return loss, state.x_syn.detach().clone(), state.gen.get_state()


@pytest.fixture
def float64():
    """Run in double precision: the comparison is of the computation, not of fp32 rounding. (In fp32 DSA's
    layer-wise cosine distance amplifies the last-bit differences of the pooling into ~0.3 % of an image
    update within one step; in float64 fast and reference agree to 1e-15.)"""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("method, ipc, overrides", [
    ("dm", 2, {"batch_real": 5}), ("dm", 1, {"batch_real": 3, "dsa": False}),
    ("dc", 2, {"batch_real": 4, "loops": {2: (2, 1)}}), ("dsa", 2, {"batch_real": 4, "loops": {2: (2, 1)}}),
    ("dc", 1, {"batch_real": 4, "distance": "mse"})])
def test_fast_step_equals_the_per_class_reference(tiny_train, float64, method, ipc, overrides):
    cfg = dataclasses.replace(methods.make_config(method, params.method_params(PARAMS, method, "tiny")),
                              **overrides)
    real = dataclasses.replace(tiny_train, x=tiny_train.x.double())
    fast = one_step(methods.get(method).step, cfg, real, ipc)
    ref = one_step(reference.dm_step if method == "dm" else reference.dc_step, cfg, real, ipc)
    assert fast[1].dtype == torch.float64
    assert fast[0] == pytest.approx(ref[0], rel=1e-12)
    assert torch.allclose(fast[1], ref[1], rtol=1e-10, atol=1e-12)
    assert torch.equal(fast[2], ref[2])               # the same random draws, in the same order
    assert not torch.equal(fast[1], one_step(lambda s, r, c: 0.0, cfg, real, ipc)[1])   # the images moved


def test_fast_dm_step_in_float32_is_the_reference_to_rounding(tiny_train):
    cfg = dataclasses.replace(methods.make_config("dm", params.method_params(PARAMS, "dm", "tiny")), batch_real=5)
    fast, ref = one_step(methods.get("dm").step, cfg, tiny_train, 2), one_step(reference.dm_step, cfg, tiny_train, 2)
    assert fast[0] == pytest.approx(ref[0], rel=1e-5)
    assert torch.allclose(fast[1], ref[1], rtol=1e-4, atol=1e-5)


def test_prepadded_conv_is_the_padded_conv():
    ours = nets.PrePaddedConv2d(1, 8, 3, pad=3)
    theirs = torch.nn.Conv2d(1, 8, 3, padding=3)
    theirs.load_state_dict(ours.state_dict())              # the same parameter names and shapes
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(ours(x), theirs(x))
    assert ours(x).shape == (2, 8, 32, 32)


def test_avgpool2_under_torch_func_transforms():
    """Per-class gradients by vmap(grad(...)) (what torch.func users do) go through the custom pooling."""
    from torch.func import functional_call, grad, vmap
    net = nets.make_net("convnet_d2_w8", 1, 10, (28, 28), seed=0)
    params = {k: v.detach() for k, v in net.named_parameters()}
    x, y = torch.randn(3, 2, 1, 28, 28), torch.randint(10, (3, 2))

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(net, p, (xb,)), yb)
    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for c in range(3):
        one = grad(loss)(params, x[c], y[c])
        assert all(torch.allclose(batched[k][c], one[k], atol=1e-6) for k in params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_fast_step_on_cuda_is_the_cpu_step(tiny_train, method):
    cfg = dataclasses.replace(methods.make_config(method, params.method_params(PARAMS, method, "tiny")),
                              batch_real=4, **({"loops": {2: (2, 1)}} if method == "dsa" else {}))
    step = methods.get(method).step

    def run(device):
        state = loop.init_state(tiny_train, 2, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                                gen=torch.Generator().manual_seed(7), device=torch.device(device))
        return step(state, tiny_train.to(device), cfg), state.x_syn.detach().cpu()
    (loss_cpu, x_cpu), (loss_gpu, x_gpu) = run("cpu"), run("cuda")
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-3)
    assert torch.allclose(x_gpu, x_cpu, atol=1e-2)
