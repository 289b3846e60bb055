"""Shared fixtures: a tiny Fashion-MNIST-shaped dataset written in the real IDX format."""

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    from tests.fixtures import prepared_fixture
    root = tmp_path_factory.mktemp("data")
    prepared_fixture(root, "fashion_mnist", n_train=12, n_test=4)
    return root


@pytest.fixture(scope="session")
def tiny_train(fixture_root):
    from ddlib import data
    return data.load("fashion_mnist", "train", root=fixture_root)


@pytest.fixture(scope="session")
def tiny_test(fixture_root):
    from ddlib import data
    return data.load("fashion_mnist", "test", root=fixture_root)
