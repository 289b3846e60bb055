import pytest
import torch
import torch.nn.functional as F

from bench import reference
from ddlib import nets


SHAPES = [(c, s) for c in (1, 3) for s in (28, 32, 64)]
CANNOT = {("lenet", 64)}   # LeNet's classifier is sized for a 5x5 map: 28 or 32 px only


@pytest.mark.parametrize("name", nets.available())
@pytest.mark.parametrize("channels,size", SHAPES)
def test_every_network_forwards_and_backwards(name, channels, size):
    if (name, size) in CANNOT:
        with pytest.raises(ValueError, match=f"{size}x{size}"):
            nets.make_net(name, channels, 10, (size, size), seed=0)
        return
    net = nets.make_net(name, channels, 10, (size, size), seed=0)
    x = torch.randn(2, channels, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert net.embed(x).shape == (2, net.feature_dim)
    out.square().sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name,count", [
    # hand counts (conv k*k*in*out + bias, norm 2 per channel, linear in*out + out), 3x32x32 inputs, 10 classes
    ("lenet", 456 + 2416 + 48120 + 10164 + 850),
    ("alexnet", 9728 + 614592 + 442624 + 442560 + 331968 + 30730),
    ("mlp", 3072 * 128 + 128 + 128 * 128 + 128 + 1290),
    # the CIFAR ResNet-18/50/152, VGG11-BN and DenseNet-121 every CIFAR codebase builds (affine norms count the same)
    ("resnet18", 11_173_962), ("resnet18_bn", 11_173_962), ("resnet50", 23_520_842), ("resnet152", 58_156_618),
    ("vgg11_bn", 9_231_114), ("vgg11", 9_231_114), ("densenet121", 6_956_298),
])
def test_parameter_counts_match_reference(name, count):
    assert sum(p.numel() for p in nets.make_net(name, 3, 10, (32, 32)).parameters()) == count


def test_reference_feature_maps():
    # methods.md §6: ResNet18_AP's classifier sees 512x4x4 at 32 px, 512x3x3 for 28x28 grey; VGG11 pools to 1x1
    assert nets.make_net("resnet18_ap", 3, 10, (32, 32)).feature_dim == 512 * 4 * 4
    assert nets.make_net("resnet18_bn_ap", 1, 10, (28, 28)).feature_dim == 512 * 3 * 3
    assert nets.make_net("vgg11", 1, 10, (28, 28)).feature_dim == 512
    assert nets.make_net("alexnet", 1, 10, (28, 28)).feature_dim == 192 * 4 * 4   # 28 padded to 32, as DC
    assert nets.make_net("resnet18", 3, 10, (64, 64)).feature_dim == 512           # global pooling at any size
    net = nets.make_net("resnet18_bn", 3, 10, (32, 32))
    assert nets.has_bn(net) and not nets.has_bn(nets.make_net("resnet18", 3, 10, (32, 32)))
    norms = [m for m in nets.make_net("resnet18", 3, 10, (32, 32)).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels for m in norms)   # instance norm by default


def test_input_size_errors_name_the_limit():
    with pytest.raises(ValueError, match="convnet of depth 6 cannot take 28x28"):
        nets.make_net("convnet_d6", 1, 10, (28, 28))
    with pytest.raises(ValueError, match="vgg11 cannot take 16x16"):
        nets.make_net("vgg11", 3, 10, (16, 16))
    with pytest.raises(ValueError, match="square"):
        nets.make_net("resnet18", 3, 10, (32, 64))


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
    with pytest.raises(ValueError, match="families: convnet, mlp, lenet, alexnet, vgg11, resnet10"):
        nets.make_net("resnet999", 3, 10, (32, 32))
    with pytest.raises(ValueError, match="unknown token 'zz'"):
        nets.make_net("convnet_zz", 3, 10, (32, 32))
    with pytest.raises(ValueError, match=r"resnet18 takes norm \('in', 'bn', 'nn'\), pool \('ap',\)"):
        nets.make_net("resnet18_mp", 3, 10, (32, 32))
    with pytest.raises(ValueError, match="lenet takes no tokens"):
        nets.make_net("lenet_bn", 3, 10, (32, 32))


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
