import pytest
import torch
import torch.nn.functional as F

from bench import reference
from ddlib import nets


@pytest.mark.parametrize("name", nets.available())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_network_builds_and_forwards(name, shape):
    net = nets.make_net(name, shape[0], 10, shape[1:], seed=0)
    x = torch.randn(4, *shape)
    out = net(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert net.embed(x).shape == (4, net.feature_dim)


def test_convnet_matches_reference_architecture():
    # 28x28 grey is padded to 32x32 by the first conv: 3 pools -> 128*4*4 features (methods.md §1.1)
    net = nets.make_net("convnet", 1, 10, (28, 28))
    assert net.feature_dim == 2048
    # conv 1*128*9+128, 2x conv 128*128*9+128, 3 norms 2*128, head 2048*10+10
    assert sum(p.numel() for p in net.parameters()) == 1280 + 2 * 147584 + 3 * 256 + 20490
    cifar = nets.make_net("convnet", 3, 10, (32, 32))
    assert sum(p.numel() for p in cifar.parameters()) == 3584 + 2 * 147584 + 3 * 256 + 20490  # ~320k
    assert isinstance(net.features[1], torch.nn.GroupNorm) and net.features[1].num_groups == 128  # instance norm


def test_names_compose():
    net = nets.make_net("convnet_d4_w64_bn_mp", 3, 200, (64, 64))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and convs[0].out_channels == 64
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert net.feature_dim == 64 * 4 * 4


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="available"):
        nets.make_net("resnet999", 3, 10, (32, 32))
    with pytest.raises(ValueError, match="unknown token 'zz'"):
        nets.make_net("convnet_zz", 3, 10, (32, 32))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = nets.make_net("convnet", 1, 10, (28, 28), seed=7)
    assert torch.equal(before, torch.get_rng_state())
    b = nets.make_net("convnet", 1, 10, (28, 28), seed=7)
    c = nets.make_net("convnet", 1, 10, (28, 28), seed=8)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_functional_forward_equals_module_forward():
    net = nets.make_net("convnet_w16", 1, 10, (28, 28), seed=0)
    x = torch.randn(3, 1, 28, 28)
    params = {k: v.clone() for k, v in net.named_parameters()}
    assert torch.allclose(nets.functional_forward(net, params, x), net(x), atol=1e-6)


# ---------------------------------------------------------------- the fast CPU layers (issue 7) are torch's layers
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


def test_prepadded_conv_is_the_padded_conv():
    ours = nets.PrePaddedConv2d(1, 8, 3, pad=3)
    theirs = torch.nn.Conv2d(1, 8, 3, padding=3)
    theirs.load_state_dict(ours.state_dict())              # the same parameter names and shapes
    x = torch.randn(2, 1, 28, 28)
    # equal up to float rounding: the CPU backend may pick another convolution algorithm for the two shapes
    # (bit-equal on earlier machines, 1-ulp apart on the 2026-12-02 CI clone)
    assert torch.allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
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
