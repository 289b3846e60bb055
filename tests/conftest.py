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


@pytest.fixture(scope="session")
def tiny_buffers(fixture_root, tiny_train, tiny_test):
    """Expert buffers, generators and teachers of every recipe in params.yaml (tiny profile) under fixture_root:
    the data_root that trajectory-matching, latent-space and observer-based methods get in tests."""
    from ddlib import experts, generators, params, teachers
    all_params = params.load("params.yaml")
    for name in all_params["buffers"]:
        recipe = experts.Recipe(**params.resolve(all_params["buffers"][name], "tiny"))
        experts.train(tiny_train, tiny_test, recipe, fixture_root / "fashion_mnist" / "buffers" / name, name=name,
                      device=torch.device("cpu"), seed=0, checkpoint_dir=fixture_root / "checkpoints" / name)
    for name in all_params["generators"]:
        recipe = generators.Recipe(**params.resolve(all_params["generators"][name], "tiny"))
        generators.train(tiny_train, recipe, fixture_root / "fashion_mnist" / "generators" / name, name=name,
                         device=torch.device("cpu"), seed=0, checkpoint_dir=fixture_root / "checkpoints" / f"g-{name}")
    for name in all_params["teachers"]:
        recipe = teachers.Recipe(**params.resolve(all_params["teachers"][name], "tiny"))
        teachers.train(tiny_train, tiny_test, recipe, fixture_root / "fashion_mnist" / "teachers" / name, name=name,
                       device=torch.device("cpu"), seed=0, checkpoint_dir=fixture_root / "checkpoints" / f"t-{name}")
    return fixture_root
