"""Tiny datasets written in the real on-disk formats, so the decoders and prepare()/load() run without data.

Each `make_<format>(raw, ...)` writes the files a dataset's authors publish (gzipped IDX, CIFAR Python
pickles, SVHN .mat, Tiny ImageNet JPEG folders) into a raw/ folder and returns the arrays the decoder
must give back, per split, in file order: {"train": (x uint8 (N, C, H, W), y int64 (N,)), "test": ...}.
`make_raw(root, name)` picks the writer for a registered dataset; `prepared_fixture(root, name)` also runs
prepare() (verify=False: made-up files cannot match the published md5 checksums).
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from ddlib import data


def write_idx(path: Path, array: np.ndarray) -> None:
    """Gzipped IDX: magic 0x0000 08 <ndim> (unsigned bytes), big-endian int32 dims, then the bytes."""
    header = bytes((0, 0, 8, array.ndim)) + np.asarray(array.shape, ">i4").tobytes()
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes()))


def _split(gen: torch.Generator, n_per_class: int, num_classes: int, shape: tuple[int, ...]):
    """Random uint8 images with balanced labels in shuffled order (files are not class-sorted)."""
    y = torch.arange(num_classes).repeat(n_per_class)[torch.randperm(n_per_class * num_classes, generator=gen)]
    x = torch.randint(0, 256, (len(y), *shape), generator=gen, dtype=torch.uint8)
    return x.numpy(), y.numpy().astype(np.int64)


def make_idx(raw: Path, *, n_train: int = 6, n_test: int = 2, num_classes: int = 10, seed: int = 0) -> dict:
    """MNIST / Fashion-MNIST: four gzipped IDX files (n_train / n_test images per class)."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = _split(gen, n, num_classes, (1, 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
        out[split] = (x, y)
    return out


def _pickle(path: Path, batch: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # protocol 2 with str keys, as the Python 2 originals read back under encoding="latin1"
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _tar_away(raw: Path, folder: str, archive: str) -> None:
    """Replace raw/<folder> by raw/<archive> (.tar.gz) holding it, as the CIFAR download is shipped."""
    with tarfile.open(raw / archive, "w:gz") as tar:
        tar.add(raw / folder, arcname=folder)
    for f in sorted((raw / folder).iterdir()):
        f.unlink()
    (raw / folder).rmdir()


def make_cifar10(raw: Path, *, n_train: int = 5, n_test: int = 2, seed: int = 0, archive: bool = False) -> dict:
    """CIFAR-10: cifar-10-batches-py/data_batch_1..5 + test_batch pickles (rows of 3072 = R, G, B planes)."""
    gen, folder = torch.Generator().manual_seed(seed), raw / "cifar-10-batches-py"
    out = {split: _split(gen, n, 10, (3, 32, 32)) for split, n in (("train", n_train), ("test", n_test))}
    x, y = out["train"]
    for i, rows in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                             "labels": y[rows].tolist(), "data": x[rows].reshape(len(rows), -1)})
    x, y = out["test"]
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y.tolist(),
                                    "data": x.reshape(len(y), -1)})
    _pickle(folder / "batches.meta", {"label_names": list(data.get_spec("cifar10").classes)})
    if archive:
        _tar_away(raw, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    return out


def make_cifar100(raw: Path, *, n_train: int = 2, n_test: int = 1, seed: int = 0, archive: bool = False) -> dict:
    """CIFAR-100: cifar-100-python/train and /test pickles with fine (100) and coarse (20) labels."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = out[split] = _split(gen, n, 100, (3, 32, 32))
        _pickle(raw / "cifar-100-python" / split, {"batch_label": split, "fine_labels": y.tolist(),
                                                   "coarse_labels": (y // 5).tolist(), "data": x.reshape(len(y), -1)})
    _pickle(raw / "cifar-100-python" / "meta", {"fine_label_names": list(data.get_spec("cifar100").classes)})
    if archive:
        _tar_away(raw, "cifar-100-python", "cifar-100-python.tar.gz")
    return out


def make_svhn(raw: Path, *, n_train: int = 3, n_test: int = 2, seed: int = 0) -> dict:
    """SVHN: train_32x32.mat / test_32x32.mat with X (32, 32, 3, N) and y (N, 1), digit 0 stored as 10."""
    from scipy.io import savemat
    gen, out = torch.Generator().manual_seed(seed), {}
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = out[split] = _split(gen, n, 10, (3, 32, 32))
        labels = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        savemat(raw / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels})
    return out


def make_tinyimagenet(raw: Path, *, num_classes: int = 200, n_train: int = 1, n_val: int = 1, seed: int = 0) -> dict:
    """Tiny ImageNet as tiny-imagenet-200.zip: wnids.txt, train/<wnid>/images/*.JPEG, val/images + annotations.

    Images are flat colours so that lossy JPEG still decodes to (almost) the written pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    wnids = [f"n{1440764 + 97 * i:08d}" for i in range(num_classes)]
    order = torch.randperm(num_classes, generator=gen).tolist()  # wnids.txt is not sorted in the original

    def jpeg(colour: np.ndarray) -> bytes:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.broadcast_to(colour, (64, 64, 3)).copy()).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    def colours(n: int) -> np.ndarray:
        return torch.randint(0, 256, (n, 3), generator=gen, dtype=torch.uint8).numpy()

    train, val, annotations = [], [], []
    raw.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(raw / "tiny-imagenet-200.zip", "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "".join(f"{wnids[i]}\n" for i in order))
        for c, wnid in enumerate(wnids):  # wnids are generated in sorted order, so c is the decoded label
            for k, colour in enumerate(colours(n_train)):
                z.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG", jpeg(colour))
                train.append((colour, c))
        for k, (colour, c) in enumerate(zip(colours(n_val * num_classes), order * n_val)):
            z.writestr(f"tiny-imagenet-200/val/images/val_{k}.JPEG", jpeg(colour))
            annotations.append(f"val_{k}.JPEG\t{wnids[c]}\t0\t0\t63\t63\n")
            val.append((colour, c))
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", "".join(annotations))

    def stack(items):
        x = np.stack([np.broadcast_to(col, (64, 64, 3)) for col, _ in items]).transpose(0, 3, 1, 2)
        return x, np.array([c for _, c in items], np.int64)
    return {"train": stack(train), "test": stack(val)}


MAKERS = {"fashion_mnist": make_idx, "mnist": make_idx, "cifar10": make_cifar10, "cifar100": make_cifar100,
          "svhn": make_svhn, "tinyimagenet": make_tinyimagenet}


def make_raw(root: Path, name: str = "fashion_mnist", **kwargs) -> dict:
    """Write a fixture of dataset `name` into root/<name>/raw/ and return the expected arrays."""
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    return MAKERS[name](raw, **kwargs)


def prepared_fixture(root: Path, name: str = "fashion_mnist", **kwargs) -> Path:
    """make_raw + prepare(verify=False, download=False): a dataset ready for load(name, root=root)."""
    make_raw(root, name, **kwargs)
    return data.prepare(name, root, verify=False, download=False)
