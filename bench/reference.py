"""Straightforward per-class reference implementations, kept as the baseline the fast code is measured against.

These are ddlib's DM and DC/DSA steps and the evaluation network as they were before the performance work
(issue 7): one class at a time through the network, the real side under `no_grad`, torch's own
`nn.AvgPool2d` and a padded first convolution. They draw from the generator in the same order as the fast
code, so on a fixed seed both give the same loss to float rounding; tests/test_methods.py checks exactly that (tests/test_nets.py the layers),
and bench/bench_units.py times both in one process.
"""

from __future__ import annotations

from unittest import mock

import torch
from torch import nn

from ddlib import augment, evaluate as evaluation, loop, nets
from ddlib.methods import dc


def torch_pooling(net: nn.Module) -> nn.Module:
    """The same network (same parameters) with torch's nn.AvgPool2d(2) in place of nets.AvgPool2 and a
    padded nn.Conv2d in place of nets.PrePaddedConv2d."""
    for name, child in net.named_children():
        if isinstance(child, nets.AvgPool2):
            setattr(net, name, nn.AvgPool2d(2))
        elif isinstance(child, nets.PrePaddedConv2d):
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, padding=child.pad)
            conv.load_state_dict(child.state_dict())
            setattr(net, name, conv)
        else:
            torch_pooling(child)
    return net


_make_net = nets.make_net   # the original, which dc_step's patch replaces


def make_net(name, channels, num_classes, im_size, *, seed=None):
    """nets.make_net with torch's pooling and padding (the network before issue 7)."""
    return torch_pooling(_make_net(name, channels, num_classes, im_size, seed=seed))


def dm_step(state: loop.State, real, cfg) -> float:
    """DM, one class at a time (ddlib's dm.step before issue 7)."""
    spec = real.spec
    net = make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=loop.new_seed(state.gen))
    net = net.to(state.x_syn.device).requires_grad_(False)
    ipc = len(state.x_syn) // spec.num_classes
    loss = 0.0
    for c in range(spec.num_classes):
        x_real = real.sample_class(c, cfg.batch_real, state.gen).to(state.x_syn.device)
        x_syn = state.x_syn[c * ipc:(c + 1) * ipc]
        if cfg.dsa:
            p = augment.sample_dsa(spec.dsa_strategy, state.gen)
            x_real, x_syn = augment.apply_dsa(x_real, p), augment.apply_dsa(x_syn, p)
        with torch.no_grad():
            emb_real = net.embed(x_real)
        loss = loss + ((emb_real.mean(0) - net.embed(x_syn).mean(0)) ** 2).sum()
    return loop.update(state, loss)


def dc_step(state: loop.State, real, cfg) -> float:
    """DC/DSA's outer iteration on the reference network. Issue 7 left dc.step and its per-class matching
    loss as they were (per-class gradients by torch.func.vmap run ~2x slower than the loop on the CPU: README,
    Performance); what changed under it is the network's layers, so the reference is dc.step on torch-pooling
    nets."""
    with mock.patch.object(dc.nets, "make_net", make_net):
        return dc.step(state, real, cfg)


def evaluate(synset, test, protocol, *, device):
    """The evaluation protocol (evaluate.evaluate, unchanged) training reference networks."""
    with mock.patch.object(evaluation.nets, "make_net", make_net):
        return evaluation.evaluate(synset, test, protocol, device=device)
