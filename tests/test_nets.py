import pytest
import torch

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
