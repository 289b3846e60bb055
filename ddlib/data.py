"""Datasets: a registry of specs, decoders for each dataset's published file format, prepare and load.

The six benchmarks of the dataset-distillation literature (Fashion-MNIST, MNIST, CIFAR-10/100, SVHN,
Tiny ImageNet) are read from the files their authors publish, checked against torchvision's md5
checksums, decoded once into `root/<name>/prepared.pt` (uint8, NCHW, sorted by class) and then loaded in
well under a second, normalised with the per-channel mean/std of DatasetCondensation's `get_dataset`
(methods.md §1.2). Raw files are looked for in `root/<name>/raw/`, then (Fashion-MNIST only) in the
Debian package `dataset-fashion-mnist`, then downloaded with torchvision's helpers.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import runtime


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: image shape, classes, normalisation, raw files (name -> md5), DSA strategy."""

    name: str
    channels: int
    im_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]  # empty for Tiny ImageNet: its wnids are read from wnids.txt by prepare()
    files: dict[str, str] = field(hash=False)  # torchvision's md5s (Tiny ImageNet: the cs231n zip's)
    dsa_strategy: str


_FLIP = "color_crop_cutout_flip_scale_rotate"
_NO_FLIP = "color_crop_cutout_scale_rotate"  # digits: a mirrored 2 or 5 is no digit (DC readme, §1.4)
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz")
_CIFAR100 = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())
_DIGITS = tuple(str(d) for d in range(10))

_SPECS = {s.name: s for s in (
    DatasetSpec("fashion_mnist", 1, (28, 28), 10, (0.2861,), (0.3530,),
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
                dict(zip(_IDX, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))), _FLIP),
    DatasetSpec("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,), _DIGITS,
                dict(zip(_IDX, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))), _NO_FLIP),
    DatasetSpec("cifar10", 3, (32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
                {f"cifar-10-batches-py/{f}": md5 for f, md5 in (
                    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                    ("test_batch", "40351d587109b95175f43aff81a1287e"))}, _FLIP),
    DatasetSpec("cifar100", 3, (32, 32), 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR100,
                {"cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
                 "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}, _FLIP),
    DatasetSpec("svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _DIGITS,
                {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
                 "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}, _NO_FLIP),
    DatasetSpec("tinyimagenet", 3, (64, 64), 200, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (),
                {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"}, _FLIP),
)}

# Where missing raw files come from: a base URL per file, or one archive (url) that holds them all.
_URLS = {"fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
         "svhn": "http://ufldl.stanford.edu/housenumbers/", "tinyimagenet": "http://cs231n.stanford.edu/"}
_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Debian re-gzips the Fashion-MNIST files (new .gz md5, same bytes inside), so an IDX file also passes
# when its decompressed md5 is the upstream one.
_GUNZIPPED_MD5 = {
    "fashion_mnist": dict(zip(_IDX, ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                                     "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"))),
    "mnist": dict(zip(_IDX, ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                             "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"))),
}


def available() -> list[str]:
    """Registered dataset names, the default (fashion_mnist) first."""
    return list(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset; unknown names raise ValueError listing the choices."""
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _SPECS[name]


# ---- decoders: one per published format, each returns uint8 (N, C, H, W) images and int64 (N,) labels ----

def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Decode a gzipped IDX file (magic 0x0000 08 <ndim>: unsigned bytes, then big-endian int32 dims)."""
    data = gzip.decompress(Path(path).read_bytes())
    if data[:4] != bytes((0, 0, 8, ndim)):  # 2051 for image files, 2049 for label files
        raise ValueError(f"{path}: bad IDX magic {data[:4].hex()}, expected {0x800 + ndim} (uint8, {ndim}-d)")
    dims = np.frombuffer(data, ">i4", ndim, offset=4)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {body.size} bytes (truncated file?)")
    return body.reshape(tuple(int(d) for d in dims))


def _read_idx_split(raw: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(raw / f"{prefix}-images-idx3-ubyte.gz", 3)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
    return x, read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", 1).astype(np.int64)


def _read_cifar_batch(path: Path, label_key: str):
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")  # pickled by Python 2: its byte-string keys become str
    return np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[label_key], np.int64)


def _read_cifar10_split(raw: Path, split: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_read_cifar_batch(raw / "cifar-10-batches-py" / n, "labels") for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_cifar100_split(raw: Path, split: str):
    return _read_cifar_batch(raw / "cifar-100-python" / split, "fine_labels")  # 100 fine classes, not 20 coarse


def _read_svhn_split(raw: Path, split: str):
    from scipy.io import loadmat  # imported here: only SVHN needs scipy
    mat = loadmat(raw / f"{split}_32x32.mat")
    x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return x, mat["y"].ravel().astype(np.int64) % 10  # SVHN stores digit 0 as label 10


def _tiny_root(raw: Path) -> Path:
    root = raw / "tiny-imagenet-200"
    if not root.is_dir():
        _extract(raw / "tiny-imagenet-200.zip", raw)
    return root


def _tiny_wnids(raw: Path) -> list[str]:
    # sorted, as torchvision's ImageFolder orders the train folders (MTT/DATM label order)
    return sorted((_tiny_root(raw) / "wnids.txt").read_text().split())


def _read_tiny_split(raw: Path, split: str):
    from PIL import Image
    root, label = _tiny_root(raw), {w: i for i, w in enumerate(_tiny_wnids(raw))}
    if split == "train":
        items = [(p, label[w]) for w in label for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]
    else:  # the test split is the labelled val set; Tiny ImageNet's test labels were never published
        rows = [line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines()]
        items = [(root / "val" / "images" / f, label[w]) for f, w in rows if f]
    images = []
    for path, _ in items:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))  # a few Tiny ImageNet JPEGs are greyscale
    return np.stack(images).transpose(0, 3, 1, 2), np.array([c for _, c in items], np.int64)


_READERS = {"fashion_mnist": _read_idx_split, "mnist": _read_idx_split, "cifar10": _read_cifar10_split,
            "cifar100": _read_cifar100_split, "svhn": _read_svhn_split, "tinyimagenet": _read_tiny_split}


def read_raw(name: str, raw: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split ('train' or 'test') of dataset `name` from its raw folder, in file order."""
    return _READERS[get_spec(name).name](Path(raw), split)


# ---- finding and checking raw files ----

def _extract(archive: Path, dest: Path) -> None:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # refuses members that would land outside dest


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """md5 hex digest of a file, read in 1 MiB chunks so large archives never sit in memory."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fetch(spec: DatasetSpec, raw: Path, download: bool) -> None:
    """Make every raw file present: local archive, then the Debian package, then a download."""
    missing = [f for f in spec.files if not (raw / f).exists()]
    if not missing:
        return
    raw.mkdir(parents=True, exist_ok=True)
    url, archive_md5 = _ARCHIVES.get(spec.name, (None, None))
    if url and (raw / Path(url).name).exists():
        return _extract(raw / Path(url).name, raw)
    if spec.name == "fashion_mnist" and all((DEBIAN_FASHION_MNIST / f).exists() for f in missing):
        for f in missing:  # a link, not a copy: 30 MB saved and the package stays the single source
            (raw / f).symlink_to(DEBIAN_FASHION_MNIST / f)
        return
    reason = "download=False"
    if download:
        from torchvision.datasets.utils import download_and_extract_archive, download_url
        try:
            if url:
                return download_and_extract_archive(url, str(raw), md5=archive_md5)
            for f in missing:
                download_url(_URLS[spec.name] + f, str(raw), f, spec.files[f])
            return
        except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError on bad md5
            reason = f"download failed: {err}"
    wanted = Path(url).name if url else ", ".join(missing)
    fix = f"put {wanted} into {raw}/ (from {url or _URLS[spec.name]})"
    if spec.name == "fashion_mnist":
        fix = f"run `apt-get install dataset-fashion-mnist` (files in {DEBIAN_FASHION_MNIST}), or {fix}"
    looked = ", ".join(missing) + (f" or the archive {wanted}" if url else "")
    raise FileNotFoundError(f"{spec.name}: raw files not found; looked in {raw}/ for {looked} ({reason}). Fix: {fix}.")


def _gunzipped_md5(path: Path) -> str | None:
    try:
        return hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
    except (OSError, EOFError):  # not a gzip file at all
        return None


def _checksums(spec: DatasetSpec, raw: Path, verify: bool) -> dict[str, str]:
    """md5 of every raw file; with verify, one that matches no published checksum is an error."""
    sums = {}
    for f, expected in spec.files.items():
        sums[f] = actual = file_md5(raw / f)
        inner = _GUNZIPPED_MD5.get(spec.name, {}).get(f)
        if verify and actual != expected and not (inner and _gunzipped_md5(raw / f) == inner):
            raise ValueError(f"{raw / f}: md5 {actual} does not match the published {expected}: the file is corrupt "
                             f"or another version. Delete it and run prepare({spec.name!r}) again to re-fetch it "
                             f"(or pass verify=False for hand-made files).")
    return sums


def _check_decoded(spec: DatasetSpec, split: str, x: torch.Tensor, y: torch.Tensor, raw: Path) -> None:
    """Catch a wrong or damaged file here rather than as a shape error deep inside training."""
    shape_ok = x.shape[1:] == (spec.channels, *spec.im_size) and len(x) == len(y) > 0
    if not shape_ok or int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
        raise ValueError(f"{spec.name} {split}: decoded {tuple(x.shape)} images and {len(y)} labels do not fit "
                         f"{(spec.channels, *spec.im_size)} images with labels in [0, {spec.num_classes}); check {raw}")


# ---- prepare once, load fast ----

def prepare(name: str, root: str | Path = "data", *, force: bool = False, verify: bool = True,
            download: bool = True) -> Path:
    """Find, verify and decode the raw files into root/<name>/prepared.pt; skipped when it is up to date.

    Args:
        force: rebuild even if prepared.pt is newer than every raw file.
        verify: compare each raw file's md5 with the published checksum (off only for test fixtures).
        download: allow torchvision's download helpers as the last source.
    Returns: the path of prepared.pt = {train_x, train_y, test_x, test_y, name, classes, md5}.
    """
    spec = get_spec(name)
    raw, out = Path(root) / name / "raw", Path(root) / name / "prepared.pt"
    present = [raw / f for f in spec.files if (raw / f).exists()]
    if out.exists() and not force and all(out.stat().st_mtime >= p.stat().st_mtime for p in present):
        return out
    _fetch(spec, raw, download)
    blob = {"name": name, "md5": _checksums(spec, raw, verify),
            "classes": list(spec.classes) or _tiny_wnids(raw)}
    for split in ("train", "test"):
        x, y = (torch.from_numpy(np.require(a, requirements="CW")) for a in read_raw(name, raw, split))
        _check_decoded(spec, split, x, y, raw)
        order = torch.argsort(y, stable=True)  # class-sorted: each class is one contiguous block
        blob[f"{split}_x"], blob[f"{split}_y"] = x[order].contiguous(), y[order].contiguous()
    return runtime.atomic_save(blob, out)  # an interrupted prepare never leaves a half-written prepared.pt


@dataclass
class LabeledImages:
    """One split in memory: normalised float32 images (N, C, H, W) and int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    spec: DatasetSpec
    zca: bool = False    # True: [0, 1] pixels whitened by the training split's ZCA (zca.load_split), not mean/std
    _by_class: list[torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.y)

    def class_indices(self) -> list[torch.Tensor]:
        """CPU index tensor of each class's images, computed once."""
        if self._by_class is None:
            y = self.y.cpu()
            counts = torch.bincount(y, minlength=self.spec.num_classes).tolist()
            self._by_class = list(torch.split(torch.argsort(y, stable=True), counts))
        return self._by_class

    def sample_index(self, c: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """Indices (CPU) of n random images of class c: without replacement when the class has n, else with."""
        idx = self.class_indices()[c]
        if n <= len(idx):
            return idx[torch.randperm(len(idx), generator=gen)[:n]]
        return idx[torch.randint(len(idx), (n,), generator=gen)]

    def sample_class(self, c: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """n random images of class c (`sample_index`'s draw)."""
        return self.x[self.sample_index(c, n, gen).to(self.x.device)]

    def to(self, device: str | torch.device) -> LabeledImages:
        """The same split on another device (the cached class indices stay on the CPU)."""
        moved = LabeledImages(self.x.to(device), self.y.to(device), self.spec, self.zca)
        moved._by_class = self._by_class
        return moved

    def subset(self, n_per_class: int | None, gen: torch.Generator) -> LabeledImages:
        """Stratified random subset: n_per_class images of each class (all of a smaller class; None = all)."""
        if n_per_class is None:
            return self
        keep = torch.cat([idx[torch.randperm(len(idx), generator=gen)[:n_per_class]] for idx in self.class_indices()])
        keep = keep.to(self.x.device)
        return LabeledImages(self.x[keep], self.y[keep], self.spec, self.zca)


def _channel_stats(spec: DatasetSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (-1, 1, 1)  # broadcasts over (C, H, W) and (N, C, H, W)
    return (torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(shape),
            torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(shape))


def normalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """load()'s mean/std normalisation of pixels in [0, 1] (differentiable: attacks work in pixel units)."""
    mean, std = _channel_stats(spec, x)
    return (x - mean) / std


def denormalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Undo load()'s mean/std normalisation: back to pixels in [0, 1] (for figures)."""
    mean, std = _channel_stats(spec, x)
    return x * std + mean


def load(name: str, split: str = "train", root: str | Path = "data", *, normalize: bool = True) -> LabeledImages:
    """One split as LabeledImages, read from prepared.pt (prepared first if missing).

    normalize=False keeps pixels in [0, 1]: the ZCA pipelines (MTT, FRePo) fit on those, not on mean/std output.
    """
    spec = get_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    path = Path(root) / name / "prepared.pt"
    if not path.exists():
        prepare(name, root)
    blob = torch.load(path, mmap=True, weights_only=True)  # mmap: only the requested split is read
    x = blob[f"{split}_x"].to(torch.float32).div_(255)
    if normalize:
        mean, std = _channel_stats(spec, x)
        x = x.sub_(mean).div_(std)
    if not spec.classes:
        spec = replace(spec, classes=tuple(blob["classes"]))
    return LabeledImages(x, blob[f"{split}_y"].clone(), spec)
