"""Published accuracies to compare against: Table 1 of Lei & Tao, "A Comprehensive Survey of Dataset
Distillation" (TPAMI 2024, arXiv 2301.05603).

Test accuracy (%) of the DC ConvNet (depth 3, width 128, instance norm) trained on each distilled set,
mean ± std, keyed by (method id, dataset id, images per class). Transcribed from
shared/reference/survey-tables.md; the whole-training-set row is stored as method "whole" with ipc None.
The survey is the primary source. Where the methods' own papers, repos or later reprints print another
number for the same cell (shared/reference/methods.md §3), the survey value stays and the other goes into
`note`. K-Center is not in the survey; its values come from the DC paper as recalled in methods.md (mark
[R], unverified). A missing cell means "not reported": `published` returns None, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    mean: float
    std: float | None
    source: str
    note: str = ""


METHODS = ("random", "herding", "kcenter", "dd", "ld", "dc", "dsa", "dcc", "mtt", "ftd", "tesla", "dm",
           "cafe", "kip", "frepo", "rfad", "idc", "rtp", "haba", "kfs")   # survey rows (+ cafe_dsa, an alias)
DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10", "cifar100", "tinyimagenet")
IPCS = (1, 10, 50)

# The order of the report's rows and figure legends: by family (selection, gradient matching, distribution and
# feature matching, trajectory matching, kernel ridge regression, backpropagation through training, factorized and
# generative), then any other method alphabetically.
FAMILY_ORDER = ("random", "herding", "kcenter", "dc", "dsa", "dcc", "idc", "accdd", "dm", "cafe", "cafe_dsa",
                "datadam", "m3d", "idm", "ncfm", "rded", "sre2l", "edc", "mtt", "ftd", "tesla", "datm", "kip", "frepo", "rfad", "dd",
                "ld", "sldd", "rtp", "haba", "kfs", "glad", "itgan", "dim", "gtn")


# Methods whose own (published) evaluation is the soft-label track: a teacher relabels every view (beyond-survey.md §1).
# DD-Ranking's improvement over random compares them with random real images under that protocol.
SOFT_TRACK = ("rded", "sre2l", "gvbsm", "edc", "d4m")


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: FAMILY_ORDER first, every other method after it alphabetically."""
    return (FAMILY_ORDER.index(method), "") if method in FAMILY_ORDER else (len(FAMILY_ORDER), method)


SURVEY = "Lei & Tao survey (TPAMI 2024), Table 1"
KCENTER = "DC paper via methods.md [R]"

# Survey Table 1, one row per method, cells in DATASETS x IPCS order (MNIST 1/10/50, FashionMNIST 1/10/50,
# SVHN, CIFAR-10, CIFAR-100, TinyImageNet); kept as the table's own text so a reader can diff it by eye.
_TABLE1 = {
    "random": "64.9 ± 3.5 | 95.1 ± 0.9 | 97.9 ± 0.2 | 51.4 ± 3.8 | 73.8 ± 0.7 | 82.5 ± 0.7 | 14.6 ± 1.6 | "
              "35.1 ± 4.1 | 70.9 ± 0.9 | 14.4 ± 2.0 | 26.0 ± 1.2 | 43.4 ± 1.0 | 4.2 ± 0.3 | 14.6 ± 0.5 | "
              "30.0 ± 0.4 | 1.4 ± 0.1 | 5.0 ± 0.2 | 15.0 ± 0.4",
    "herding": "89.2 ± 1.6 | 93.7 ± 0.3 | 94.8 ± 0.2 | 67.0 ± 1.9 | 71.1 ± 0.7 | 71.9 ± 0.8 | 20.9 ± 1.3 | "
               "50.5 ± 3.3 | 72.6 ± 0.8 | 21.5 ± 1.2 | 31.6 ± 0.7 | 40.4 ± 0.6 | 8.4 ± 0.3 | 17.3 ± 0.3 | "
               "33.7 ± 0.5 | 2.8 ± 0.2 | 6.3 ± 0.2 | 16.7 ± 0.3",
    "dd": "- | 79.5 ± 8.1 | - | - | - | - | - | - | - | - | 36.8 ± 1.2 | - | - | - | - | - | - | -",
    "ld": "60.9 ± 3.2 | 87.3 ± 0.7 | 93.3 ± 0.3 | - | - | - | - | - | - | 25.7 ± 0.7 | 38.3 ± 0.4 | "
          "42.5 ± 0.4 | 11.5 ± 0.4 | - | - | - | - | -",
    "dc": "91.7 ± 0.5 | 94.7 ± 0.2 | 98.8 ± 0.2 | 70.5 ± 0.6 | 82.3 ± 0.4 | 83.6 ± 0.4 | 31.2 ± 1.4 | "
          "76.1 ± 0.6 | 82.3 ± 0.3 | 28.3 ± 0.5 | 44.9 ± 0.5 | 53.9 ± 0.5 | 13.9 ± 0.4 | 32.3 ± 0.3 | "
          "42.8 ± 0.4 | - | - | -",
    "dsa": "88.7 ± 0.6 | 97.8 ± 0.1 | 99.2 ± 0.1 | 70.6 ± 0.6 | 86.6 ± 0.3 | 88.7 ± 0.2 | 27.5 ± 1.4 | "
           "79.2 ± 0.5 | 84.4 ± 0.4 | 28.8 ± 0.7 | 52.1 ± 0.5 | 60.6 ± 0.5 | 13.9 ± 0.4 | 32.3 ± 0.3 | "
           "42.8 ± 0.4 | - | - | -",
    "dcc": "- | - | - | - | - | - | 47.5 ± 2.6 | 80.5 ± 0.6 | 87.2 ± 0.3 | 34.0 ± 0.7 | 54.5 ± 0.5 | "
           "64.2 ± 0.4 | 14.6 ± 0.3 | 33.5 ± 0.3 | 39.3 ± 0.4 | - | - | -",
    "mtt": "91.4 ± 0.9 | 97.3 ± 0.1 | 98.5 ± 0.1 | 75.1 ± 0.9 | 87.2 ± 0.3 | 88.3 ± 0.1 | - | - | - | "
           "46.3 ± 0.8 | 65.3 ± 0.7 | 71.6 ± 0.2 | 24.3 ± 0.3 | 40.1 ± 0.4 | 47.7 ± 0.2 | 8.8 ± 0.3 | "
           "23.2 ± 0.2 | 28.0 ± 0.3",
    "ftd": "- | - | - | - | - | - | - | - | - | 46.8 ± 0.3 | 66.6 ± 0.3 | 73.8 ± 0.2 | 25.2 ± 0.2 | "
           "43.4 ± 0.3 | 50.7 ± 0.3 | 10.4 ± 0.3 | 24.5 ± 0.2 | -",
    "tesla": "- | - | - | - | - | - | - | - | - | 48.5 ± 0.8 | 66.4 ± 0.8 | 72.6 ± 0.7 | 24.8 ± 0.4 | "
             "41.7 ± 0.3 | 47.9 ± 0.3 | 7.7 ± 0.2 | 18.8 ± 1.3 | 27.9 ± 1.2",
    "dm": "89.2 ± 1.6 | 97.3 ± 0.3 | 94.8 ± 0.2 | - | - | - | - | - | - | 26.0 ± 0.8 | 48.9 ± 0.6 | "
          "63.0 ± 0.4 | 11.4 ± 0.3 | 29.7 ± 0.3 | 43.6 ± 0.4 | 3.9 ± 0.2 | 12.9 ± 0.4 | 24.1 ± 0.3",
    "cafe": "90.8 ± 0.5 | 97.5 ± 0.1 | 98.9 ± 0.2 | 73.7 ± 0.7 | 83.0 ± 0.3 | 88.2 ± 0.3 | 42.9 ± 3.0 | "
            "77.9 ± 0.6 | 82.3 ± 0.4 | 31.6 ± 0.8 | 50.9 ± 0.5 | 62.3 ± 0.4 | 14.0 ± 0.3 | 31.5 ± 0.2 | "
            "42.9 ± 0.2 | - | - | -",
    "kip": "90.1 ± 0.1 | 97.5 ± 0.0 | 98.3 ± 0.1 | 73.5 ± 0.5 | 86.8 ± 0.1 | 88.0 ± 0.1 | 57.3 ± 0.1 | "
           "75.0 ± 0.1 | 85.0 ± 0.1 | 49.9 ± 0.2 | 62.7 ± 0.3 | 68.6 ± 0.2 | 15.7 ± 0.2 | 28.3 ± 0.1 | "
           "- | - | - | -",
    "frepo": "93.0 ± 0.4 | 98.6 ± 0.1 | 99.2 ± 0.0 | 75.6 ± 0.3 | 86.2 ± 0.2 | 89.6 ± 0.1 | - | - | - | "
             "46.8 ± 0.7 | 65.5 ± 0.4 | 71.7 ± 0.2 | 28.7 ± 0.1 | 42.5 ± 0.2 | 44.3 ± 0.2 | 15.4 ± 0.3 | "
             "25.4 ± 0.2 | -",
    "rfad": "94.4 ± 1.5 | 98.5 ± 0.1 | 98.8 ± 0.1 | 78.6 ± 1.3 | 87.0 ± 0.5 | 88.8 ± 0.4 | 52.2 ± 2.2 | "
            "74.9 ± 0.4 | 80.9 ± 0.3 | 53.6 ± 1.2 | 66.3 ± 0.5 | 71.1 ± 0.4 | 26.3 ± 1.1 | 33.0 ± 0.3 | "
            "- | - | - | -",
    "idc": "- | - | - | - | - | - | 68.1 ± 0.1 | 87.3 ± 0.2 | 90.2 ± 0.1 | 50.0 ± 0.4 | 67.5 ± 0.5 | "
           "74.5 ± 0.1 | - | 44.8 ± 0.2 | - | - | - | -",
    "rtp": "98.7 ± 0.7 | 99.3 ± 0.5 | 99.4 ± 0.4 | 88.5 ± 0.1 | 90.0 ± 0.7 | 91.2 ± 0.3 | 87.3 ± 0.1 | "
           "89.1 ± 0.2 | 89.5 ± 0.2 | 66.4 ± 0.4 | 71.2 ± 0.4 | 73.6 ± 0.4 | 34.0 ± 0.4 | 42.9 ± 0.7 | "
           "- | 16.0 ± 0.7 | - | -",
    "haba": "- | - | - | - | - | - | 69.8 ± 1.3 | 83.2 ± 0.4 | 88.3 ± 0.1 | 48.3 ± 0.8 | 69.9 ± 0.4 | "
            "74.0 ± 0.2 | 33.4 ± 0.4 | 40.2 ± 0.2 | 47.0 ± 0.2 | - | - | -",
    "kfs": "- | - | - | - | - | - | 82.9 ± 0.4 | 91.4 ± 0.2 | 92.2 ± 0.1 | 59.8 ± 0.5 | 72.0 ± 0.3 | "
           "75.0 ± 0.2 | 40.0 ± 0.5 | 50.6 ± 0.2 | - | 22.7 ± 0.3 | 27.8 ± 0.2 | -",
}

# The survey's whole-training-set line (same ConvNet), one cell per dataset.
_WHOLE = "99.6 ± 0.0 | 93.5 ± 0.1 | 95.4 ± 0.1 | 84.8 ± 0.1 | 56.2 ± 0.3 | 37.6 ± 0.4"

# K-Center rows of methods.md §3.2 (FashionMNIST) and §3.1 (CIFAR-10), both from the DC paper as recalled.
_KCENTER = {
    ("fashion_mnist", 1): "66.9 ± 1.8", ("fashion_mnist", 10): "54.7 ± 1.5", ("fashion_mnist", 50): "68.3 ± 0.8",
    ("cifar10", 1): "21.5 ± 1.3", ("cifar10", 10): "14.7 ± 0.9", ("cifar10", 50): "27.0 ± 1.4",
}

# Where methods.md §3 prints another number for a cell, or the cell looks copied from another row.
_CAFE_PLAIN = "the survey's CAFE row equals CAFE+DSA in methods.md §3; plain CAFE prints "
_DC_C100 = "DC readme (methods.md §3.4 [C]) prints DC "
_NOTES = {
    ("dsa", "fashion_mnist", 10): "the DSA paper prints 84.6 ± 0.3 (methods.md §3.2 [C]/[P]); the survey 86.6",
    ("cafe", "fashion_mnist", 1): _CAFE_PLAIN + "77.1 ± 0.9 (methods.md §3.2 [R])",
    ("cafe", "fashion_mnist", 10): _CAFE_PLAIN + "83.0 ± 0.4 (methods.md §3.2 [R])",
    ("cafe", "fashion_mnist", 50): _CAFE_PLAIN + "84.8 ± 0.4 (methods.md §3.2 [R])",
    ("cafe", "cifar10", 1): _CAFE_PLAIN + "30.3 ± 1.1 (FTD result figure, methods.md §3.1 [C])",
    ("cafe", "cifar10", 10): _CAFE_PLAIN + "46.3 ± 0.6 (FTD result figure, methods.md §3.1 [C])",
    ("cafe", "cifar10", 50): _CAFE_PLAIN + "55.5 ± 0.6 (FTD result figure, methods.md §3.1 [C])",
    ("cafe", "cifar100", 1): _CAFE_PLAIN + "12.9 (FTD result figure, methods.md §3.4 [C])",
    ("cafe", "cifar100", 10): _CAFE_PLAIN + "27.8 (FTD result figure, methods.md §3.4 [C])",
    ("cafe", "cifar100", 50): _CAFE_PLAIN + "37.9 (FTD result figure, methods.md §3.4 [C])",
    ("kip", "fashion_mnist", 1): "KIP-ConvNet paper Tab. 2 (KIP -> NN) prints 73.8 (methods.md §3.2 [P])",
    ("kip", "fashion_mnist", 50): "KIP-ConvNet paper Tab. 2 (KIP -> NN) prints 87.8 (methods.md §3.2 [P])",
    ("kip", "mnist", 50): "KIP-ConvNet paper (KIP -> NN) prints 98.4 (methods.md §3.3 [P])",
    ("kip", "svhn", 1): "KIP-ConvNet paper (KIP -> NN) prints 57.4 (methods.md §3.3 [P])",
    ("kip", "svhn", 10): "KIP-ConvNet paper (KIP -> NN) prints 75.1 (methods.md §3.3 [P])",
    ("kip", "svhn", 50): "KIP-ConvNet paper (KIP -> NN) prints 80.4 (methods.md §3.3 [P])",
    ("kip", "cifar10", 1): "KIP paper Tab. 2 prints 50.0 (methods.md §3.1 [P])",
    ("kip", "cifar10", 50): "KIP paper Tab. 2 prints 68.4 (methods.md §3.1 [P])",
    ("dc", "mnist", 10): "KIP Tab. 1 reprints DC at 97.4 ± 0.2 (methods.md §3.3 [P]); the survey 94.7",
    ("dc", "mnist", 50): "KIP Tab. 1 reprints DC at 98.8 ± 0.1 (methods.md §3.3 [P])",
    ("dc", "cifar100", 1): _DC_C100 + "12.8 ± 0.3; the survey's DC cell equals its DSA cell",
    ("dc", "cifar100", 10): _DC_C100 + "25.2 ± 0.3; the survey's DC cell equals its DSA cell",
    ("dc", "cifar100", 50): "DC readme (methods.md §3.4 [C]) reports no IPC 50; the survey's DC cell equals "
                            "its DSA cell",
    ("dsa", "cifar100", 1): "DSA readme prints 13.9 ± 0.3 (methods.md §3.4 [C])",
    ("random", "cifar100", 50): "DATM result figure prints 33.4 ± 0.4 (methods.md §3.4 [C])",
    ("dm", "mnist", 1): "equals the survey's Herding cell; methods.md has no DM MNIST number to check it",
    ("dm", "mnist", 50): "equals the survey's Herding cell; methods.md has no DM MNIST number to check it",
    ("mtt", "cifar10", 1): "FTD/DATM reprint 46.2 ± 0.8 (methods.md §3.1 [C]); MTT reports the best "
                           "checkpoint by test accuracy",
    ("mtt", "cifar10", 10): "FTD/DATM reprint 65.4 ± 0.7 (methods.md §3.1 [C]); MTT reports the best "
                            "checkpoint by test accuracy",
    ("mtt", "cifar100", 10): "DATM result figure prints 39.7 ± 0.4 (methods.md §3.4 [C])",
    ("ftd", "cifar10", 1): "DATM's rerun: 46.0 ± 0.4 (methods.md §3.1 [C])",
    ("ftd", "cifar10", 10): "DATM's rerun: 65.3 ± 0.4 (methods.md §3.1 [C])",
    ("ftd", "cifar10", 50): "DATM's rerun: 73.2 ± 0.2 (methods.md §3.1 [C])",
    ("ftd", "cifar100", 1): "DATM's rerun: 24.4 ± 0.4 (methods.md §3.4 [C])",
    ("ftd", "cifar100", 10): "DATM's rerun: 42.5 ± 0.2 (methods.md §3.4 [C])",
    ("ftd", "cifar100", 50): "DATM's rerun: 48.5 ± 0.3 (methods.md §3.4 [C])",
    ("ftd", "tinyimagenet", 1): "DATM's rerun: 10.5 ± 0.2 (methods.md §3.4 [C])",
    ("ftd", "tinyimagenet", 10): "DATM's rerun: 23.4 ± 0.3 (methods.md §3.4 [C])",
    ("idc", "svhn", 1): "IDC README prints 68.5 (methods.md §3.3 [C])",
    ("idc", "svhn", 10): "IDC README prints 87.5 (methods.md §3.3 [C])",
    ("idc", "svhn", 50): "IDC README prints 90.1 (methods.md §3.3 [C])",
    ("idc", "cifar10", 1): "IDC README prints 50.6 (methods.md §3.1 [C])",
    ("idc", "cifar100", 10): "IDC README prints 45.1 (methods.md §3.4 [C])",
    **{("rtp", "fashion_mnist", i): "the survey's RTP is the addressing variant (shared bases x coefficient rows: "
                                     f"{n} decoded images per class at IPC {i}); the grid runs the no-basis command"
       for i, n in ((1, 29), (10, 470), (50, 2_430))},
    ("rtp", "cifar10", 50): "reprinted as 73.6 ± 0.5 (methods.md §3.1 [P])",
    ("rtp", "cifar100", 1): "another reprint prints 34.4 ± 0.4 (methods.md §3.4 [P])",
    ("kcenter", "cifar10", 1): "a later reprint prints 23.3 ± 0.9 (methods.md §3.1 [P])",
    ("kcenter", "cifar10", 10): "a later reprint prints 36.4 ± 0.6 (methods.md §3.1 [P])",
    ("kcenter", "cifar10", 50): "a later reprint prints 48.7 ± 0.3 (methods.md §3.1 [P])",
}


DATADAM = "DataDAM (ICCV 2023) via the G-VBSM paper's table, beyond-survey.md §A5 [P]"
_CAFE_DSA = "the survey's CAFE row, which equals CAFE+DSA where methods.md §3 prints both"
# Fashion-MNIST is not in the survey's IDC row; the IDC README prints it (methods.md §3.2 [C]).
IDC_README = "IDC README via methods.md §3.2 [C] (IDC-I, factor 1: 70.7 / 85.3 / 89.1)"
_IDC_README = {("fashion_mnist", 1): "81.0", ("fashion_mnist", 10): "86.0", ("fashion_mnist", 50): "86.2"}


def _parse(cell: str) -> tuple[float, float | None] | None:
    """'70.5 ± 0.6' -> (70.5, 0.6); '-' -> None (not reported)."""
    cell = cell.strip()
    if cell == "-":
        return None
    mean, _, std = cell.partition("±")
    return float(mean), (float(std) if std.strip() else None)


def _row(row: str, cols: list, where: str) -> list[tuple]:
    """A table row's reported cells as [(column, (mean, std))]; a row of the wrong length is a transcription slip."""
    cells = row.split("|")
    assert len(cells) == len(cols), f"{where}: {len(cells)} cells, expected {len(cols)}"
    return [(col, value) for col, cell in zip(cols, cells) if (value := _parse(cell)) is not None]


def _build() -> dict[tuple[str, str, int | None], Published]:
    table = {}
    cols = [(d, ipc) for d in DATASETS for ipc in IPCS]
    for method, row in _TABLE1.items():
        for (dataset, ipc), value in _row(row, cols, method):
            table[method, dataset, ipc] = Published(*value, SURVEY)
    for dataset, cell in zip(DATASETS, _WHOLE.split("|")):
        table["whole", dataset, None] = Published(*_parse(cell), SURVEY)
    for (dataset, ipc), cell in _KCENTER.items():
        table["kcenter", dataset, ipc] = Published(*_parse(cell), KCENTER)
    for key, note in _NOTES.items():
        p = table[key]  # a note without a value would be a transcription slip: fail at import
        table[key] = Published(p.mean, p.std, p.source, note)
    return table


TABLE: dict[tuple[str, str, int | None], Published] = _build()

# Beside the survey (used only where its cell is empty): the survey's CAFE row is CAFE+DSA (methods.md §3), so it
# is cafe_dsa's number too; the IDC README's Fashion-MNIST numbers.
OTHER: dict[tuple[str, str, int | None], Published] = {
    **{("cafe_dsa", d, i): Published(p.mean, p.std, p.source, _CAFE_DSA) for (m, d, i), p in TABLE.items()
       if m == "cafe"},
    **{("idc", d, i): Published(*_parse(cell), IDC_README) for (d, i), cell in _IDC_README.items()},
    ("dim", "cifar10", 10): Published(72.6, None, "DiM abstract / README (arXiv 2303.04707), ConvNet-3",
                                      "samples from a generator of ~IPC 116 of storage (families-2.md §A.3)"),
    # after the survey (beyond-survey.md §A5 [P]: the G-VBSM paper's table); DataDAM evaluates 1,800 epochs
    **{("datadam", d, i): Published(v, None, DATADAM) for (d, i), v in (
        (("cifar10", 10), 54.2), (("cifar10", 50), 67.0), (("cifar100", 1), 14.5), (("cifar100", 10), 34.8),
        (("cifar100", 50), 49.4), (("tinyimagenet", 50), 28.7))}}


def published(method: str, dataset: str, ipc: int | None) -> Published | None:
    """The published number for a cell, or None where none was reported. Whole dataset: method "whole"."""
    if method == "whole":
        ipc = None  # the whole-dataset row has no IPC; accept 0 as well
    return TABLE.get((method, dataset, ipc)) or OTHER.get((method, dataset, ipc))


# Kernel methods' own recipe (KRR prediction from the set, no network): the KIP-ConvNet paper's KRR rows
# (methods.md §3.1/§3.2 [P], id 61934210565), ConvNet kernel. The survey's Table 1 holds their network numbers.
KIP_KRR = "KIP-ConvNet paper (NeurIPS 2021), KRR with the ConvNet kernel, via methods.md [P]"
_OWN = {("kip", "fashion_mnist", 1): "76.7 ± 0.2", ("kip", "fashion_mnist", 10): "88.8 ± 0.1",
        ("kip", "fashion_mnist", 50): "91.0 ± 0.1", ("kip", "cifar10", 1): "63.4 ± 0.1",
        ("kip", "cifar10", 10): "75.5 ± 0.1", ("kip", "cifar10", 50): "79.7 ± 0.1"}
OWN: dict[tuple[str, str, int], Published] = {k: Published(*_parse(v), KIP_KRR) for k, v in _OWN.items()}


def published_own(method: str, dataset: str, ipc: int) -> Published | None:
    """The published number of a method's own evaluation recipe (KRR), or None."""
    return OWN.get((method, dataset, ipc))


# The survey's cross-architecture tables (CIFAR-10, sets distilled with the ConvNet): Table 3 trains ConvNet /
# ResNet-18 / ResNet-152, Table 4 ConvNet / ResNet-10 / DenseNet-121, each at IPC 1 / 10 / 50 (cells in that
# order). The survey does not say how its ResNets normalise: a number stands for the family (resnet18, resnet18_bn
# and resnet18_ap alike), and the report's column names say which variant we ran.
_TABLE3 = {   # (convnet, resnet18, resnet152) x (1, 10, 50)
    "dc": "28.3 ± 0.5 | 25.6 ± 0.6 | 15.3 ± 0.4 | 44.9 ± 0.5 | 42.1 ± 0.6 | 16.1 ± 1.0 | 53.9 ± 0.5 | 45.9 ± 1.4 | "
          "19.7 ± 1.2",
    "dsa": "28.8 ± 0.5 | 25.6 ± 0.6 | 15.1 ± 0.7 | 52.1 ± 0.5 | 42.1 ± 0.6 | 16.1 ± 1.0 | 60.6 ± 0.5 | 49.5 ± 0.7 | "
           "20.0 ± 1.2",
    "mtt": "46.3 ± 0.8 | 34.2 ± 1.4 | 13.4 ± 0.9 | 65.3 ± 0.7 | 38.8 ± 0.7 | 15.9 ± 0.2 | 71.6 ± 0.2 | 60.0 ± 0.7 | "
           "20.9 ± 1.6",
    "ftd": "- | - | - | - | - | - | 73.8 ± 0.2 | 65.7 ± 0.3 | -",
    "tesla": "- | - | - | 66.4 ± 0.8 | 48.9 ± 2.2 | - | - | - | -",
    "dm": "26.0 ± 0.8 | 20.6 ± 0.5 | 14.1 ± 0.6 | 48.9 ± 0.6 | 38.2 ± 1.1 | 15.6 ± 1.5 | 63.0 ± 0.4 | 52.8 ± 0.4 | "
          "21.7 ± 1.3",
    "cafe": "- | - | - | - | - | - | 55.5 ± 0.4 | 25.3 ± 0.9 | -",
    "kip": "49.9 ± 0.2 | 27.6 ± 1.1 | 14.2 ± 0.8 | 62.7 ± 0.3 | 45.2 ± 1.4 | 16.6 ± 1.4 | 68.6 ± 0.2 | 60.0 ± 0.7 | "
           "20.9 ± 1.6",
}
_TABLE4 = {   # (convnet, resnet10, densenet121) x (1, 10, 50)
    "dsa": "28.8 ± 0.7 | 25.1 ± 0.8 | 25.9 ± 1.8 | 52.1 ± 0.5 | 31.4 ± 0.9 | 32.9 ± 1.0 | 60.6 ± 0.5 | 49.0 ± 0.7 | "
           "53.4 ± 0.8",
    "dm": "26.0 ± 0.8 | 13.7 ± 1.6 | 12.9 ± 1.8 | 48.9 ± 0.6 | 31.7 ± 1.1 | 32.2 ± 0.8 | 63.0 ± 0.4 | 49.1 ± 0.7 | "
          "53.7 ± 0.7",
    "idc": "50.0 ± 0.4 | 41.9 ± 0.6 | 39.8 ± 1.2 | 67.5 ± 0.5 | 63.5 ± 0.1 | 61.6 ± 0.6 | 74.5 ± 0.1 | 72.4 ± 0.5 | "
           "71.8 ± 0.6",
    "kfs": "59.8 ± 0.5 | 47.0 ± 0.8 | 49.5 ± 1.3 | 72.0 ± 0.3 | 70.3 ± 0.3 | 71.4 ± 0.4 | 75.0 ± 0.2 | 75.1 ± 0.3 | "
           "76.3 ± 0.4",
}


def _build_xarch() -> dict[tuple[str, str, int, str], Published]:
    table = {}
    for rows, archs, name in ((_TABLE4, ("convnet", "resnet10", "densenet121"), "Table 4"),
                              (_TABLE3, ("convnet", "resnet18", "resnet152"), "Table 3")):   # Table 3's ConvNet wins
        cols = [(ipc, arch) for ipc in IPCS for arch in archs]
        for method, row in rows.items():
            for (ipc, arch), value in _row(row, cols, f"{name} {method}"):
                table[method, "cifar10", ipc, arch] = Published(*value, SURVEY.replace("Table 1", name))
    return table


XARCH: dict[tuple[str, str, int, str], Published] = _build_xarch()


def published_xarch(method: str, dataset: str, ipc: int, arch: str) -> Published | None:
    """The survey's cross-architecture number for a cell and an architecture (its family: `resnet18_bn` finds
    ResNet-18), or None."""
    return XARCH.get((method, dataset, ipc, arch.split("_")[0]))


def xarch_rows(dataset: str) -> tuple[list[str], list[str]]:
    """The methods and architectures (besides convnet) of the survey's cross-architecture tables for a dataset."""
    keys = [k for k in XARCH if k[1] == dataset]
    return (list(dict.fromkeys(k[0] for k in keys)),
            [a for a in ("resnet18", "resnet152", "resnet10", "densenet121") if any(k[3] == a for k in keys)])
