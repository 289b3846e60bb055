"""Methods after the survey (issue 12): DataDAM's attention maps and loss against hand computations."""

import pytest
import torch

from ddlib import loop, methods, nets
from ddlib.methods import datadam, dm


def test_attention_is_the_unit_channel_sum_of_powers():
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])            # (1, C=2, H=1, W=2)
    # p = 1: |1| + |3| = 4, |-2| + |0| = 2 -> (4, 2) / sqrt(20)
    assert torch.allclose(datadam.attention(f, 1.0), torch.tensor([[4.0, 2.0]]) / 20 ** 0.5)
    # p = 2: 1 + 9 = 10, 4 + 0 = 4 -> (10, 4) / sqrt(116)
    assert torch.allclose(datadam.attention(f, 2.0), torch.tensor([[10.0, 4.0]]) / 116 ** 0.5)


def test_attention_layers_are_every_block_but_the_last():
    net = nets.make_net("convnet_w8", 1, 10, (28, 28), seed=0)
    x = torch.randn(3, 1, 28, 28)
    maps, emb = datadam.attention_and_embedding(net, x, 1.0)
    assert [m.shape for m in maps] == [(3, 32 * 32), (3, 16 * 16)]   # blocks 1 and 2 of 3, before their pooling
    assert torch.allclose(emb, net.embed(x))
    assert torch.allclose(maps[0].norm(dim=1), torch.ones(3))
    first = net.features[2](net.features[1](net.features[0](x)))       # conv -> norm -> ReLU of block 1
    assert torch.allclose(maps[0], datadam.attention(first, 1.0))


def test_matching_loss_by_hand():
    cfg = datadam.Config(task_balance=0.5, scale=10.0)
    k = 2
    real = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0], [4.0]])]      # (k, d): attention, embedding
    syn = [torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]),                # two per class
           torch.tensor([[1.0], [3.0], [4.0], [6.0]])]
    # attention: class 0 mean (1, 0) vs (1, 0) -> 0; class 1 mean (0, 1) vs (0, 1) -> 0
    # embedding: class 0 mean 2 vs 2 -> 0; class 1 mean 5 vs 4 -> 1; loss = 10 * (0 + 0.5 * 1) = 5
    assert datadam.matching_loss(real, syn, k, cfg).item() == pytest.approx(5.0)
    syn[0][0, 0] = 3.0                                  # class 0 attention mean (2, 0): + (1)^2
    assert datadam.matching_loss(real, syn, k, cfg).item() == pytest.approx(15.0)


def test_embedding_term_alone_is_dm(tiny_train):
    """With no attention layers counted (task_balance 1, scale 1, a one-block net) DataDAM's loss is DM's."""
    cfg = datadam.Config(model="convnet_d1_w8", task_balance=1.0, scale=1.0, batch_real=3)
    state = loop.init_state(tiny_train, 2, init="real", lr_img=1.0, momentum=0.5,
                            gen=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    ours = datadam.loss(state.x_syn, torch.Generator().manual_seed(5), tiny_train, cfg)
    theirs = dm.loss(state.x_syn, torch.Generator().manual_seed(5), tiny_train,
                     dm.Config(model="convnet_d1_w8", batch_real=3))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_datadam_moves_the_images_and_rejects_bad_config(tiny_train):
    syn = methods.distill("datadam", tiny_train, ipc=1, params={"iterations": 2, "batch_real": 3,
                                                               "model": "convnet_w8"}, seed=0)
    assert syn.images.shape == (10, 1, 28, 28) and syn.provenance["iterations"] == 2
    init = methods.distill("datadam", tiny_train, ipc=1, params={"iterations": 0, "model": "convnet_w8"}, seed=0)
    assert not torch.equal(syn.images, init.images)
    with pytest.raises(ValueError, match="invalid DataDAM config"):
        datadam.Config(power=0)
