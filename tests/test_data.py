"""Tests for ddlib.data: each file format decoded from a generated fixture, prepare/load, checksums, errors,
stratified subsets, seeded sampling, and (when the Debian package is installed) the real Fashion-MNIST."""

import gzip
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddlib import data
from tests.fixtures import make_raw, prepared_fixture, write_idx

torch.set_num_threads(2)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def toy_split(counts, size=2):
    """LabeledImages whose image k is filled with the value k, so picks can be traced back to indices."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()
    spec = replace(data.get_spec("mnist"), num_classes=len(counts), classes=tuple("abcdefghij"[:len(counts)]))
    return data.LabeledImages(x, y, spec)


# ---- registry ----

def test_registry_matches_reference():
    assert data.available()[0] == "fashion_mnist"
    assert set(data.available()) == {"fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "tinyimagenet"}
    for name in data.available():
        spec = data.get_spec(name)
        assert len(spec.mean) == len(spec.std) == spec.channels
        assert len(spec.classes) in (0, spec.num_classes)  # Tiny ImageNet's wnids come from its files
        assert all(len(md5) == 32 for md5 in spec.files.values())
        assert ("flip" in spec.dsa_strategy) == (name not in ("mnist", "svhn"))  # flipped digits are no digits
    assert data.get_spec("fashion_mnist").mean == (0.2861,) and data.get_spec("cifar100").num_classes == 100
    assert data.get_spec("tinyimagenet").im_size == (64, 64)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="available: fashion_mnist, mnist, cifar10"):
        data.get_spec("imagenet")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.prepare("imagenet")


# ---- decoders ----

def test_idx_round_trip_and_magic_check(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "img.gz", images)
    raw_bytes = gzip.decompress((tmp_path / "img.gz").read_bytes())
    assert int.from_bytes(raw_bytes[:4], "big") == 2051 and int.from_bytes(raw_bytes[4:8], "big") == 7
    np.testing.assert_array_equal(data.read_idx(tmp_path / "img.gz", 3), images)
    write_idx(tmp_path / "lab.gz", np.arange(7, dtype=np.uint8))
    assert gzip.decompress((tmp_path / "lab.gz").read_bytes())[:4] == (2049).to_bytes(4, "big")
    with pytest.raises(ValueError, match="bad IDX magic"):  # a label file is not an image file
        data.read_idx(tmp_path / "lab.gz", 3)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "img.gz").read_bytes())[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "cut.gz", 3)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn", "tinyimagenet"])
def test_each_format_decodes_its_fixture(tmp_path, name):
    kwargs = {"num_classes": 4, "n_train": 2, "n_val": 2} if name == "tinyimagenet" else {}
    expected = make_raw(tmp_path, name, **kwargs)
    if name == "tinyimagenet":
        data._extract(tmp_path / name / "raw" / "tiny-imagenet-200.zip", tmp_path / name / "raw")
    spec = data.get_spec(name)
    for split in ("train", "test"):
        x, y = data.read_raw(name, tmp_path / name / "raw", split)
        x_ref, y_ref = expected[split]
        assert x.dtype == np.uint8 and x.shape == (len(y_ref), spec.channels, *spec.im_size)
        np.testing.assert_array_equal(y, y_ref)
        if name == "tinyimagenet":  # JPEG is lossy even for flat colours
            assert np.abs(x.astype(int) - x_ref.astype(int)).max() <= 3
        else:
            np.testing.assert_array_equal(x, x_ref)


def test_svhn_label_ten_is_digit_zero(tmp_path):
    expected = make_raw(tmp_path, "svhn")
    from scipy.io import loadmat
    stored = loadmat(tmp_path / "svhn" / "raw" / "train_32x32.mat")["y"].ravel()
    assert 10 in stored and 0 not in stored
    _, y = data.read_raw("svhn", tmp_path / "svhn" / "raw", "train")
    assert set(y[stored == 10]) == {0}
    np.testing.assert_array_equal(y, expected["train"][1])


# ---- prepare / load ----

def test_prepare_and_load_fixture(tmp_path):
    expected = make_raw(tmp_path, "fashion_mnist", n_train=6, n_test=2)
    path = data.prepare("fashion_mnist", tmp_path, verify=False, download=False)
    blob = torch.load(path, weights_only=True)
    assert blob["train_x"].dtype == torch.uint8 and blob["train_x"].shape == (60, 1, 28, 28)
    assert torch.equal(blob["train_y"], torch.arange(10).repeat_interleave(6))  # sorted by class
    assert set(blob["md5"]) == set(data.get_spec("fashion_mnist").files)
    # the class sort must carry each image with its label: compare as sorted multisets per class
    x_ref, y_ref = expected["train"]
    for c in range(10):
        ref = torch.from_numpy(x_ref[y_ref == c]).flatten(1).sum(1).sort().values
        assert torch.equal(blob["train_x"][blob["train_y"] == c].flatten(1).sum(1).sort().values, ref)

    train, test = data.load("fashion_mnist", "train", tmp_path), data.load("fashion_mnist", "test", tmp_path)
    assert len(train) == 60 and len(test) == 20 and train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    expected_x = (blob["train_x"].float() / 255 - 0.2861) / 0.3530  # methods.md §1.2 Fashion-MNIST mean/std
    torch.testing.assert_close(train.x, expected_x)
    torch.testing.assert_close(data.denormalize(train.x, train.spec) * 255, blob["train_x"].float(), atol=1e-3,
                               rtol=0)
    raw01 = data.load("fashion_mnist", "train", tmp_path, normalize=False).x
    torch.testing.assert_close(raw01, blob["train_x"].float() / 255)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load("fashion_mnist", "val", tmp_path)


def test_prepare_skips_when_fresh_and_force_rebuilds(tmp_path):
    path = prepared_fixture(tmp_path, "mnist")
    stamp = path.stat().st_mtime_ns
    assert data.prepare("mnist", tmp_path, verify=False, download=False).stat().st_mtime_ns == stamp
    data.prepare("mnist", tmp_path, verify=False, download=False, force=True)
    assert path.stat().st_mtime_ns != stamp


def test_cifar_archive_is_extracted(tmp_path):
    make_raw(tmp_path, "cifar10", archive=True)
    raw = tmp_path / "cifar10" / "raw"
    assert not (raw / "cifar-10-batches-py").exists()
    data.prepare("cifar10", tmp_path, verify=False, download=False)
    assert (raw / "cifar-10-batches-py" / "data_batch_5").exists()
    split = data.load("cifar10", "train", tmp_path)
    assert split.x.shape == (50, 3, 32, 32) and torch.bincount(split.y).tolist() == [5] * 10


def test_tinyimagenet_zip_and_wnid_classes(tmp_path):
    prepared_fixture(tmp_path, "tinyimagenet", n_train=1, n_val=1)
    test = data.load("tinyimagenet", "test", tmp_path)
    assert test.x.shape == (200, 3, 64, 64) and len(test.spec.classes) == 200
    assert list(test.spec.classes) == sorted(test.spec.classes) and test.spec.classes[0] == "n01440764"


def test_md5_mismatch_names_file_and_fix(tmp_path):
    make_raw(tmp_path, "mnist")  # made-up content: matches neither the .gz nor the gunzipped checksum
    bad = tmp_path / "mnist" / "raw" / "train-images-idx3-ubyte.gz"  # the first file checked
    with pytest.raises(ValueError) as err:
        data.prepare("mnist", tmp_path, download=False)  # verify=True is the default
    message = str(err.value)
    assert str(bad) in message and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message  # torchvision's md5
    assert data.file_md5(bad) in message and "Delete it" in message
    assert not (tmp_path / "mnist" / "prepared.pt").exists()


def test_file_md5_matches_hashlib(tmp_path):
    import hashlib
    blob = bytes(range(256)) * 9000  # 2.3 MB: spans three 1 MiB chunks
    (tmp_path / "f").write_bytes(blob)
    assert data.file_md5(tmp_path / "f") == hashlib.md5(blob).hexdigest()


def test_missing_dataset_error_names_place_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.prepare("cifar10", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar10" / "raw") in message and "cifar-10-python.tar.gz" in message
    assert "Fix:" in message
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        data.prepare("svhn", tmp_path, download=False)


# ---- LabeledImages ----

def test_class_indices_and_stratified_subset():
    split = toy_split([5, 3, 7])
    assert [len(i) for i in split.class_indices()] == [5, 3, 7]
    assert split.class_indices() is split.class_indices()  # cached
    sub = split.subset(4, gen())
    assert torch.bincount(sub.y).tolist() == [4, 3, 4]  # class 1 only has 3
    assert torch.equal(split.y[sub.x[:, 0, 0, 0].long()], sub.y)  # images still carry their own labels
    assert len(set(sub.x[:, 0, 0, 0].tolist())) == len(sub)  # no repeats
    assert split.subset(None, gen()) is split


def test_sample_class_is_seeded_and_in_class():
    split = toy_split([10, 10, 10])
    a, b = split.sample_class(1, 4, gen(3)), split.sample_class(1, 4, gen(3))
    assert torch.equal(a, b) and not torch.equal(a, split.sample_class(1, 4, gen(4)))
    picked = a[:, 0, 0, 0].long()
    assert set(picked.tolist()) <= set(range(10, 20)) and len(set(picked.tolist())) == 4  # without replacement
    many = split.sample_class(2, 25, gen())  # more than the class holds: with replacement
    assert len(many) == 25 and set(many[:, 0, 0, 0].long().tolist()) <= set(range(20, 30))


def test_to_keeps_data_and_cache():
    split = toy_split([2, 2])
    split.class_indices()
    moved = split.to("cpu")
    assert torch.equal(moved.x, split.x) and moved.class_indices() is split.class_indices()


# ---- the real Fashion-MNIST from the Debian package ----

@pytest.mark.skipif(not all((data.DEBIAN_FASHION_MNIST / f).exists() for f in data.get_spec("fashion_mnist").files),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(tmp_path):
    path = data.prepare("fashion_mnist", tmp_path, download=False)  # verify=True: must pass the md5 check
    md5 = torch.load(path, weights_only=True)["md5"]
    assert all(md5[f] == data.file_md5(data.DEBIAN_FASHION_MNIST / f) for f in md5)
    train, test = data.load("fashion_mnist", "train", tmp_path), data.load("fashion_mnist", "test", tmp_path)
    assert train.x.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert torch.bincount(train.y).tolist() == [6000] * 10 and torch.bincount(test.y).tolist() == [1000] * 10
    # the §1.2 constants are the training set's own statistics: normalised data has mean 0 and std 1
    assert abs(train.x.mean().item()) < 0.01 and abs(train.x.std().item() - 1) < 0.01
