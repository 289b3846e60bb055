"""reports/: our accuracies beside the survey's (Lei & Tao 2024, Table 1), for exactly the cells of the grid.

Inputs: the result files (results.py), the grid (datasets x methods x IPCs of params.yaml) and `stale`
({stage: why}, from provenance.stale, which asks `dvc status`). Every grid cell gets a table cell: the number
when its distill and evaluate stages are current, "not run" when a result is missing, "stale" with the stage
to rerun when its code, params or data changed since (its number is refused, never shown silently).

Per dataset it writes
    reports/<dataset>.md                   accuracy table, cross-architecture table, the sets at equal storage,
                                           budgets, provenance, figures, image grids
    reports/figures/...                    accuracy vs IPC, one image grid per synthetic set
    reports/plots/accuracy.json, loss.json the data behind `dvc plots show` (dvc.yaml `plots:`)
    reports/costs/<dataset>.md + figure    measured wall time and memory; reports/costs/stage_times.json
and once: reports/table1.md (the survey's Table 1 layout, every dataset and IPC, "not run" where we have no
number) and reports/README.md (the index). `python -m ddlib.report [--profile P]` lists the grid's stages that
have no result of a profile yet. Everything outside reports/costs/ depends only on the results' content, so the same code version, params and
device type regenerate it byte for byte; reports/costs/ is what this particular run measured.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from . import figures, params, results
from .apps import continual, federated, nas, privacy, robustness
from .figures import DATASET_NAMES
from .published import DATASETS as PUBLISHED_DATASETS
from .published import IPCS as PUBLISHED_IPCS
from .published import METHODS as PUBLISHED_METHODS
from .published import SOFT_TRACK, method_rank, published, published_own, published_xarch, xarch_rows

MAX_LOSS_POINTS = 500   # per cell in reports/plots/loss.json (the paper profile logs 20,000 iterations)
APPLIED = params.APPLIED   # stage families over some methods' sets: grid.<kind> x datasets x IPCs
APPS = {"continual": continual, "robustness": robustness, "privacy": privacy, "nas": nas, "federated": federated}
# the per-dataset stage an application compares its cells with, and the name of that stage's record (<name>-<dataset>)
BASELINES = {"privacy": ("privacy_real", "real"), "nas": ("nas_real", "real"), "federated": ("federated_fedavg", "fedavg")}


def grid_cells(grid: dict) -> list[tuple[str, str, int]]:
    """params.yaml's grid as (method, dataset, ipc) cells, in the pipeline's order."""
    return [(m, d, int(i)) for m in grid["methods"] for d in grid["datasets"] for i in grid["ipcs"]]


def applied_cells(grid: dict, kind: str) -> list[tuple[str, str, int]]:
    """The cells of an APPLIED stage family: grid.<kind> x datasets x IPCs (grid.<kind>_ipcs where the grid has one:
    privacy_ipcs)."""
    return grid_cells({**grid, "methods": grid.get(kind, []), "ipcs": grid.get(f"{kind}_ipcs", grid["ipcs"])})


def app_axes(grid: dict | None, kind: str, records: dict[str, dict]) -> tuple[list[str], list[int]]:
    """(methods, IPCs) of an application's report section: the grid's (grid.<kind>, grid.<kind>_ipcs or ipcs), or
    without a grid those of its records, the per-dataset baseline's left out."""
    if grid:
        return list(grid.get(kind, [])), [int(i) for i in grid.get(f"{kind}_ipcs", grid["ipcs"])]
    base = {BASELINES[kind][1]} if kind in BASELINES else set()
    return (sorted({r["method"] for r in records.values()} - base),
            sorted({r["ipc"] for r in records.values() if r["method"] not in base}))


def stages(grid: dict) -> list[str]:
    """The DVC stages behind the report's numbers: each cell's distill and evaluate, the cross-architecture
    evaluations, the expert buffers and the generators."""
    cells = [f"{stage}@{results.key(*cell)}" for cell in grid_cells(grid) for stage in ("distill", "evaluate")]
    cells += [f"{kind}@{results.key(m, d, i)}" for kind in APPLIED for m, d, i in applied_cells(grid, kind)]
    cells += [f"{BASELINES[kind][0]}@{d}" for kind in BASELINES if grid.get(kind) for d in grid["datasets"]]
    return cells + [f"{kind}@{r}-{d}" for kind in ("buffers", "generators", "teachers") for r in grid.get(kind, [])
                    for d in grid["datasets"]]


def generators_markdown(summaries: list[dict], dataset: str, stale: dict[str, str] | None) -> list[str]:
    """What each generator the latent-space methods decode with is, and how long it was trained."""
    out = ["## Generators", "", "Trained here on the training split by the `generators` stage (nothing is downloaded); "
           "their weights count in the storage of the sets decoded with them.", ""]
    for s in summaries:
        stage = f"generators@{s['name']}-{dataset}"
        r = s["recipe"]
        what = (f"conditional DCGAN, z {r['nz']}, width {r['width']}: {s['num_params']:,} floats; {r['epochs']} epochs "
                f"on {s['train_images']:,} training images, batch {r['batch_size']}, Adam {r['lr']:g}, "
                f"{s['wall_time_s']:.0f} s; last epoch's losses D {s['history'][-1]['d']:.3f}, G {s['history'][-1]['g']:.3f}")
        out.append(f"- `{s['name']}` ({s.get('profile', '-')} profile): " +
                   (f"stale: rerun `dvc repro {stage}` ({stale[stage]})" if stale and stage in stale else what))
    return out + [""] + [f"![generator {s['name']}](figures/{dataset}_generator_{s['name']}.png)" for s in summaries
                         if not (stale and f"generators@{s['name']}-{dataset}" in stale)] + [""]


def experts_markdown(summaries: list[dict], dataset: str, stale: dict[str, str] | None) -> list[str]:
    """The experts' test accuracy after their last epoch: our whole-dataset figure under our own recipe."""
    whole = published("whole", dataset, None)
    out = ["## Whole training set: the experts", "",
           "Test accuracy (%) of the trajectory-matching experts (the `buffers` stage) after their last epoch, mean ± "
           f"std over experts: the whole-dataset figure for this ConvNet under our recipe (published whole set: "
           f"{_pm(whole.mean, whole.std) if whole else '-'}).", ""]
    for s in summaries:
        stage = f"buffers@{s['name']}-{dataset}"
        final = [accs[-1] for accs in s["test_acc"]]
        mean, std = sum(final) / len(final), (sum((a - sum(final) / len(final)) ** 2 for a in final) / len(final)) ** .5
        how = ("GSAM " + ", ".join(f"{k} {v}" for k, v in sorted(s["recipe"]["sam"].items())) if s["recipe"]["sam"]
               else "SGD") + f", lr {s['recipe']['lr_teacher']}"
        number = f"stale: rerun `dvc repro {stage}` ({stale[stage]})" if stale and stage in stale else _pm(mean, std)
        out.append(f"- `{s['name']}` ({s.get('profile', '-')} profile; {len(final)} experts x {s['epochs']} epochs on "
                   f"{s['train_images']} training images, {how}; {s['test_images']} test images): {number}")
    return out + [""] + [f"![experts {s['name']}](figures/{dataset}_experts_{s['name']}.png)" for s in summaries
                         if not (stale and f"buffers@{s['name']}-{dataset}" in stale)] + [""]


def rows_for(collected: dict[str, dict], cells, stale: dict[str, str] | None) -> list[dict]:
    """One row per cell with `status` ok / not run / stale and `why` (the stage to rerun and the reason)."""
    rows = []
    for method, dataset, ipc in cells:
        k = results.key(method, dataset, ipc)
        row = dict(collected.get(k) or results.row(k, {}, {}, method=method, dataset=dataset, ipc=ipc))
        reasons = [f"`dvc repro {s}`: {stale[s]}" for s in (f"distill@{k}", f"evaluate@{k}") if s in (stale or {})]
        if row.get("acc_mean") is None or row.get("synset_sha256") is None:
            row["status"] = "not run"
        elif reasons:
            row["status"], row["why"] = "stale", "; ".join(reasons)
        elif row["eval_synset_sha256"] not in (None, row["synset_sha256"]):
            row["status"], row["why"] = "stale", f"`dvc repro evaluate@{k}`: eval.json evaluated another synthetic set"
        else:
            row["status"] = "ok"
        if row["status"] != "ok":   # a refused number must not reach any table, figure or data file
            row.update(acc_mean=None, acc_std=None, accs=None, own_mean=None, own_std=None)
        rows.append(row)
    return rows


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _ours(r: dict) -> str:
    """A result row's accuracy: mean ± std over its seeds, a single seed's value alone (a row without its
    accuracies: ± where it has a std)."""
    return _acc(r["acc_mean"], r["acc_std"], 2 if r.get("accs") is None else len(r["accs"]))


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _value(v) -> str:
    """Stable text for a JSON value; None -> 'default' (the protocol's own rule applies)."""
    return "default" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _profiles(row: dict) -> str:
    return "/".join(dict.fromkeys(p for p in (row.get("distill_profile"), row.get("eval_profile")) if p))


def _ordered(rows: list[dict], dataset: str):
    rows = [r for r in rows if r["dataset"] == dataset]
    ipcs = sorted({r["ipc"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=method_rank)
    return rows, ipcs, methods, {(r["method"], r["ipc"]): r for r in rows}


def table_markdown(rows: list[dict], dataset: str, *, checked: bool | None = None) -> str:
    """Accuracy table (ours (published)), budgets, provenance and footnotes. Deterministic for given rows."""
    rows, ipcs, methods, cell = _ordered(rows, dataset)
    profiles = sorted({_profiles(r) for r in rows if r.get("status") == "ok"})
    notes: list[str] = []

    def note(text: str) -> str:
        notes.append(f"[^{len(notes) + 1}]: {text}")
        return f"[^{len(notes)}]"

    body = []
    for m in methods:
        line = [m]
        for ipc in ipcs:
            r = cell.get((m, ipc), {"status": "not run"})
            pub = published(m, dataset, ipc)
            theirs = _pm(pub.mean, pub.std) if pub else "-"
            if pub and pub.note:
                theirs += note(f"{m} IPC {ipc}: {pub.note}.")
            if r["status"] == "ok":
                ours = _ours(r)
                if len(profiles) > 1:
                    ours += f" [{_profiles(r)}]"
                factor = (r.get("params") or {}).get("factor") or 1
                if factor > 1:
                    ours += note(f"{m} IPC {ipc}: stores {ipc} image(s) per class, the pixel budget of IPC {ipc}, "
                                 f"and trains on the {ipc * factor ** 2} tiles per class they decode to (factor "
                                 f"{factor}).")
                if r.get("stopped_by") == "time_budget":
                    ours += note(f"{m} IPC {ipc}: cut by the wall-clock cap after {r['iterations']} of "
                                 f"{r.get('iterations_planned', '?')} iterations; not reproducible bit for bit.")
            elif r["status"] == "stale":
                ours = "stale" + note(f"{m} IPC {ipc}: not shown, made by other code, params or data than now; "
                                      f"rerun {r['why']}.")
            else:
                ours = "not run"
            line.append(f"{ours} ({theirs})")
        body.append(line)
    whole = published("whole", dataset, None)
    soft = [m for m in SOFT_TRACK if m in methods]
    out = [f"Classic track (A): accuracy (%) of a ConvNet trained on each synthetic set with its hard labels (or the "
           f"labels and learning rates the method learned) under the DC-family protocol: ours, mean ± std over seeds "
           f"(published mean ± std, Lei & Tao 2024 Table 1). Whole training set (published): "
           f"{_pm(whole.mean, whole.std) if whole else '-'}. Profile: {', '.join(profiles) or '-'}."
           + (f" {', '.join(soft)} are made for a teacher's soft labels: here with hard labels, their soft-label "
              f"results in the soft-label track (B) below." if soft else ""), ""]
    out += _md_table(["method"] + [f"IPC {i}" for i in ipcs], body)
    out += below_random(cell, methods, ipcs)
    out += own_markdown(cell, methods, ipcs, dataset)
    if checked is not None:
        out += ["", "Every number above was checked against `dvc.lock` when this page was made (`dvc status` of its "
                    "distill and evaluate stages): its code, params and data are the current ones." if checked else
                "These results were not checked against `dvc.lock` (made outside `dvc repro`)."]
    out += ["", *_provenance([r for r in rows if r["status"] == "ok"])]
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out) + "\n"


def _acc(mean: float | None, std: float | None, n: int) -> str:
    """mean ± std over n seeds; a single seed shows its value alone."""
    return "-" if mean is None else f"{mean:.1f}" if n < 2 or std is None else f"{mean:.1f} ± {std:.1f}"


def xarch_markdown(rows: list[dict], records: dict[str, dict], dataset: str, methods: list[str],
                   stale: dict[str, str] | None) -> list[str]:
    """Cross-architecture accuracy for one dataset (xarch.py): per IPC the ConvNet (the main table's number) and
    every architecture the sets were trained on, published numbers in brackets. Where the survey has Tables 3/4
    for the dataset (CIFAR-10), their rows and architectures are listed too, "not run" where we have no number."""
    cell = {(r["method"], r["ipc"]): r for r in rows if r["dataset"] == dataset}
    ipcs = sorted({ipc for _, ipc in cell})
    survey_methods, survey_archs = xarch_rows(dataset)
    mine = [records[k] for m in methods for i in ipcs if (k := results.key(m, dataset, i)) in records]
    archs = list(dict.fromkeys([a for r in mine for a in r["archs"]] + survey_archs))
    methods = sorted(set(methods) | set(survey_methods), key=method_rank)
    if not methods or not ipcs or not archs:
        return []
    body, profiles, refused = [], set(), []
    for m in methods:
        line = [m]
        for ipc in ipcs:
            k, main = results.key(m, dataset, ipc), cell.get((m, ipc), {"status": "not run"})
            pub = published_xarch(m, dataset, ipc, "convnet")
            ours = _acc(main["acc_mean"], main["acc_std"], len(main["accs"] or [])) if main["status"] == "ok" \
                else main["status"]
            line.append(f"{ours} ({_acc(pub.mean, pub.std, 2) if pub else '-'})")
            record, why = records.get(k), (stale or {}).get(f"xarch@{k}")
            if why:
                refused.append(f"`dvc repro xarch@{k}`: {why}")
            for arch in archs:
                pub, got = published_xarch(m, dataset, ipc, arch), (record or {}).get("archs", {}).get(arch)
                if got is None or main["status"] == "not run":
                    ours = "not run"
                elif why or main["status"] != "ok" or record.get("synset_sha256") != main.get("synset_sha256"):
                    ours = "stale"
                else:
                    ours = _acc(got["mean"], got["std"], len(got["accs"]))
                    profiles.add(record.get("profile") or "-")
                line.append(f"{ours} ({_acc(pub.mean, pub.std, 2) if pub else '-'})")
        body.append(line)
    source = ("published: the survey's Table 3 (ResNet-18, ResNet-152) and Table 4 (ResNet-10, DenseNet-121), which "
              "do not say how their ResNets normalise" if survey_methods else
              "the survey publishes cross-architecture numbers for CIFAR-10 only")
    seeds = sorted({len(got["accs"]) for r in mine for got in r["archs"].values()})
    out = ["## Cross-architecture", "",
           "Accuracy (%) of other networks trained on the sets distilled with the ConvNet, under the same classic-track "
           "(A) evaluation protocol, only the network changed (`xarch` stage; the convnet column is the table's above): "
           "ours, "
           f"{'/'.join(map(str, seeds)) or '-'} seed(s) per network, mean ± std where several ({source}). "
           f"Profile: {', '.join(sorted(profiles)) or '-'}.", "",
           *_md_table(["method"] + [f"IPC {i} {a}" for i in ipcs for a in ["convnet", *archs]], body)]
    if refused:
        out += ["", "Stale, not shown: " + "; ".join(refused) + "."]
    return out + [""]


def teachers_markdown(summaries: list[dict], dataset: str, stale: dict[str, str] | None) -> list[str]:
    """The teachers trained here (`teachers` stage): what each is and its test accuracy after each epoch."""
    out = ["## Teachers", "", "Trained here on the training split by the `teachers` stage (nothing is downloaded): the "
           "soft-label track's teacher and RDED's observer, EDC's pool; the last accuracy of the track's teacher is "
           "the label-robust score's \"real data, hard labels\".", ""]
    for s in summaries:
        stage, r = f"teachers@{s['name']}-{dataset}", s["recipe"]
        what = (f"{r['model']}, {r['epochs']} epochs on {s['train_images']:,} training images, SGD {r['lr']:g} "
                f"(momentum {r['momentum']}, weight decay {r['weight_decay']:g}), batch {r['batch_size']}, augmentation "
                f"{r['augment'] or 'none'}, {s['wall_time_s']:.0f} s; test accuracy per epoch "
                f"({s['test_images']:,} images): {', '.join(f'{a:.1f}' for a in s['test_acc'])}")
        out.append(f"- `{s['name']}` ({s.get('profile', '-')} profile): " +
                   (f"stale: rerun `dvc repro {stage}` ({stale[stage]})" if stale and stage in stale else what))
    return out + [""]


def soft_markdown(rows: list[dict], records: dict[str, dict], dataset: str, methods: list[str],
                  stale: dict[str, str] | None) -> list[str]:
    """Track B: students trained on the teacher's live soft labels (kd.py), one table of its own, with the
    improvement over random real images under the same protocol (DD-Ranking's IOR)."""
    cell = {(r["method"], r["ipc"]): r for r in rows if r["dataset"] == dataset}
    ipcs = sorted({ipc for _, ipc in cell})
    mine = {(m, i): records.get(results.key(m, dataset, i)) for m in methods for i in ipcs}
    if not any(mine.values()):
        return []
    ok, refused = {}, []
    for (m, i), rec in mine.items():
        k, main = results.key(m, dataset, i), cell.get((m, i), {"status": "not run"})
        why = (stale or {}).get(f"kd@{k}")
        if rec and not why and main["status"] == "ok" and rec.get("synset_sha256") == main.get("synset_sha256"):
            ok[m, i] = rec
        elif rec:
            refused.append(f"`dvc repro kd@{k}`: {why or 'made from another synthetic set'}")
    body = []
    for m in sorted(methods, key=method_rank):
        line = [m]
        for i in ipcs:
            rec, base = ok.get((m, i)), ok.get(("random", i))
            line.append(_acc(rec["mean"], rec["std"], len(rec["accs"])) if rec else "not run")
            line.append(f"{rec['mean'] - base['mean']:+.1f}" if rec and base and m != "random" else "-")
        body.append(line)
    proto = next(iter(ok.values()))["protocol"] if ok else {}
    out = ["## Soft-label track (B)", "",
           "A separate protocol, never mixed with the tables above: students trained on each set with the teacher's "
           "soft labels, the teacher relabelling every augmented view (`kd` stage, ddlib/kd.py; RDED's evaluation: "
           f"student {proto.get('student', '-')}, teacher `{proto.get('teacher', '-')}`, {proto.get('epochs', '-')} "
           f"epochs, AdamW {proto.get('lr', '-')}, KL at T {proto.get('temperature', '-')}, CutMix). Accuracy (%) of "
           "the final epoch, mean ± std over seeds; IOR: the improvement over random real images under this same "
           "protocol (DD-Ranking). These numbers measure the teacher as much as the set.", "",
           *_md_table(["method"] + [h for i in ipcs for h in (f"IPC {i}", f"IPC {i} IOR")], body)]
    if refused:
        out += ["", "Stale, not shown: " + "; ".join(refused) + "."]
    return out + [""]


def label_robust_score(real: float, hard: float, own: float, random_own: float, w: float = 0.5) -> dict:
    """DD-Ranking's label-robust score on accuracies in percent: HLR = real - hard (hard-label recovery, lower is
    better), IOR = own - random_own (improvement over random under the method's own protocol), alpha = w IOR -
    (1 - w) HLR on fractions, LRS = (e^alpha - e^-1) / (e - e^-1), in [0, 1] (beyond-survey.md §B1: the v0.2.0 code
    mixes in percentages; we do not)."""
    hlr, ior = real - hard, own - random_own
    alpha = (w * ior - (1 - w) * hlr) / 100
    return {"hlr": hlr, "ior": ior, "lrs": (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))}


def augmentation_robust_score(aug: float, random_aug: float, noaug: float, random_noaug: float,
                              w: float = 0.5) -> dict:
    """DD-Ranking's augmentation-robust score on accuracies in percent: beta = w (aug - random_aug) + (1 - w)
    (noaug - random_noaug) on fractions, ARS = (e^beta - e^-1) / (e - e^-1) (beyond-survey.md §B1)."""
    beta = (w * (aug - random_aug) + (1 - w) * (noaug - random_noaug)) / 100
    return {"beta": beta, "ars": (math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1))}


def lrs_markdown(rows: list[dict], records: dict[str, dict], dataset: str, real_acc: float | None,
                 teacher: str | None, evals: dict[str, dict] | None = None) -> list[str]:
    """HLR, IOR and LRS for every set of the dataset: hard = the classic table's accuracy, own = the method's own
    track (the soft-label track for SOFT_TRACK methods, else the classic one), real = the teacher's accuracy; and
    where the evaluation also trained without augmentation (evals' `noaug`), that accuracy and ARS."""
    cell = {(r["method"], r["ipc"]): r for r in rows if r["dataset"] == dataset and r["status"] == "ok"}
    soft = {(r["method"], r["ipc"]): r for r in records.values() if r["dataset"] == dataset}
    # the classic track in the soft records' shape: mean accuracy and the evaluation's no-aug run
    classic = {k: {"mean": r["acc_mean"], "noaug": (evals or {}).get(r["key"], {}).get("noaug")} for k, r in cell.items()}
    ipcs = sorted({i for _, i in cell})
    ars_ipcs = sorted({i for (_, i), r in [*classic.items(), *soft.items()] if r.get("noaug")})
    if real_acc is None or not ipcs:
        return []
    body = []
    for m in sorted({m for m, _ in cell}, key=method_rank):
        track = soft if m in SOFT_TRACK else classic     # the method's own protocol, for IOR and ARS alike
        line = [m]
        for i in ipcs:
            hard, own, base = cell.get((m, i)), track.get((m, i)), track.get(("random", i))
            if hard and own and base:
                s = label_robust_score(real_acc, hard["acc_mean"], own["mean"], base["mean"])
                line += [f"{s['hlr']:.1f}", f"{s['ior']:+.1f}", f"{s['lrs']:.3f}"]
            else:
                line += ["-"] * 3
        for i in ars_ipcs:
            mine, rnd = track.get((m, i)) or {}, track.get(("random", i)) or {}
            own, base = mine.get("noaug"), rnd.get("noaug")
            if own and base:
                a = augmentation_robust_score(mine["mean"], rnd["mean"], own["mean"], base["mean"])
                line += [_acc(own["mean"], own["std"], len(own["accs"])), f"{a['ars']:.3f}"]
            else:
                line += ["-"] * 2
        body.append(line)
    return ["## Label and augmentation robustness (DD-Ranking's LRS and ARS)", "",
            f"Per set: HLR = accuracy of the real data with hard labels (the teacher `{teacher}`: {real_acc:.1f} %) - the "
            "set's accuracy with hard labels (the classic table); IOR = the set's accuracy under its own protocol - "
            "random real images' under the same (the soft-label track for "
            f"{', '.join(m for m in SOFT_TRACK if any(k[0] == m for k in cell)) or 'no method here'}, the classic one "
            "for the rest); LRS = (e^α - e^-1) / (e - e^-1), α = (IOR - HLR) / 2 on fractions (higher is better). "
            "ARS (augmentation-robust score; IPCs of grid.ars_ipcs): the set's own protocol once more with the "
            "augmentation off (\"no aug\": the classic protocol without DSA; for the soft-label methods, as DD-Ranking "
            "scores them, the soft-label track without crop, flip and CutMix, the teacher still labelling every image); "
            "β = ½ (the set's accuracy - random real images' under the same protocol, with augmentation) + ½ (the "
            "same without) on fractions, ARS = (e^β - e^-1) / (e - e^-1) (higher is better).", "",
            *_md_table(["method"] + [h for i in ipcs for h in (f"IPC {i} HLR", f"IPC {i} IOR", f"IPC {i} LRS")]
                       + [h for i in ars_ipcs for h in (f"IPC {i} no aug", f"IPC {i} ARS")], body),
            ""]


def _with_profile(section: list[str], records: dict[str, dict], dataset: str) -> list[str]:
    """An application's section with the profile(s) behind its records under its heading."""
    profiles = sorted({r.get("profile") or "?" for r in records.values() if r.get("dataset") == dataset})
    return [section[0], "", f"Profile: {', '.join(profiles) or '-'}.", *section[1:]] if section else section


def survey_table_markdown(rows: list[dict], grid: dict | None) -> str:
    """reports/table1.md: the survey's Table 1 layout, every dataset as a column group, every survey row plus our
    other methods. A cell shows our number (its profiles when a column mixes them) or why there is none ("not
    run", "stale"), and the published number in brackets; a published value never fills one of our cells."""
    ok = {(r["method"], r["dataset"], r["ipc"]): r for r in rows}
    in_grid = set(grid["methods"]) if grid else {r["method"] for r in rows}
    methods = sorted(set(PUBLISHED_METHODS) | in_grid, key=method_rank)
    columns = [(d, i) for d in PUBLISHED_DATASETS for i in PUBLISHED_IPCS]
    extra = sorted({(r["dataset"], r["ipc"]) for r in rows} - set(columns))
    columns += extra
    header, profiles = ["method"], {}
    for d, i in columns:
        mixed = sorted({_profiles(r) for (m, dd, ii), r in ok.items() if (dd, ii) == (d, i) and r["status"] == "ok"})
        profiles[d, i] = mixed
        header.append(f"{DATASET_NAMES.get(d, d)} {i}" + (f" [{mixed[0]}]" if len(mixed) == 1 else ""))
    body = []
    for m in methods:
        line = [m]
        for d, i in columns:
            r, pub = ok.get((m, d, i)), published(m, d, i)
            ours = "not run" if r is None or r["status"] == "not run" else r["status"] if r["status"] != "ok" else \
                _ours(r) + (f" [{_profiles(r)}]" if len(profiles[d, i]) > 1 else "")
            line.append(f"{ours} ({_pm(pub.mean, pub.std) if pub else '-'})")
        body.append(line)
    whole = " · ".join(f"{DATASET_NAMES.get(d, d)} {_pm(p.mean, p.std)}" for d in PUBLISHED_DATASETS
                       if (p := published("whole", d, None)))
    return "\n".join(["# Table 1: every dataset and IPC", "",
                      "The survey's Table 1 layout (Lei & Tao 2024), classic track (A): accuracy (%) of the ConvNet "
                      "trained on each synthetic set with hard (or the method's learned) labels, ours mean ± std over "
                      "seeds (published mean ± std). The profile behind our numbers "
                      "is in the column header ([quick] = small budgets on a 2-core CPU, [paper] = official "
                      "hyper-parameters), or in the cell where a column mixes profiles. \"not run\": the grid of "
                      "params.yaml has no such cell or it has no result yet; \"stale\": a result exists but was made "
                      "by other code, params or data than now (the per-dataset pages name the stage to rerun). "
                      f"Whole training set (published): {whole}.", "", *_md_table(header, body), "",
                      *_code_versions(rows)])


def _code_versions(rows: list[dict]) -> list[str]:
    """Per dataset, the code versions behind its shown cells and how many each (the full list, torch and the
    device on the dataset's own page)."""
    lines = []
    for d in sorted({r["dataset"] for r in rows if r["status"] == "ok"}, key=lambda d: (d not in DATASET_NAMES, d)):
        count: dict[str, int] = {}
        for r in rows:
            if r["dataset"] == d and r["status"] == "ok":
                key = ", ".join(r["code_versions"]) or "-"
                count[key] = count.get(key, 0) + 1
        lines.append(f"- {DATASET_NAMES.get(d, d)}: " + "; ".join(f"{c} ({n} cell{'s' * (n > 1)})"
                                                                 for c, n in sorted(count.items()))
                     + f" (per cell, with torch and the device: [{d}.md]({d}.md#provenance))")
    return ["## Provenance", "", "Code versions of the cells shown (`+dirty`: uncommitted code):", "", *lines, ""] \
        if lines else []


def below_random(cell: dict, methods: list[str], ipcs: list[int]) -> list[str]:
    """One line naming the optimised sets that train worse than random real images at the same IPC (at a
    shrunken budget such a row says what the budget did, not what the method can do)."""
    below = []
    for ipc in ipcs:
        base = cell.get(("random", ipc), {})
        if base.get("status") != "ok":
            continue
        below += [f"{m} IPC {ipc} ({cell[m, ipc]['acc_mean']:.1f} vs {base['acc_mean']:.1f})" for m in methods
                  if m not in ("random", "herding", "kcenter") and cell.get((m, ipc), {}).get("status") == "ok"
                  and cell[m, ipc]["acc_mean"] < base["acc_mean"]]
    if not below:
        return []
    profiles = sorted({_profiles(cell[k]) for k in cell if cell[k].get("status") == "ok"})
    return ["", f"Below random real images at the same IPC within this budget ({', '.join(profiles)} profile): "
                f"{', '.join(below)}; these methods need more iterations than the profile gives them on this CPU."]


def own_markdown(cell: dict, methods: list[str], ipcs: list[int], dataset: str) -> list[str]:
    """The second, labelled table: each method's own evaluation recipe (kernel methods: KRR from the set with its
    learned targets, no network; DD, SLDD: networks trained by the learned step schedule), for the methods that
    have one. Never merged into the table above."""
    own = [m for m in methods if any(cell.get((m, i), {}).get("own_mean") is not None for i in ipcs)]
    if not own:
        return []
    body, recipes = [], []
    for m in own:
        line = [m]
        for ipc in ipcs:
            r, pub = cell.get((m, ipc), {}), published_own(m, dataset, ipc)
            ours = _pm(r["own_mean"], r.get("own_std") or None) if r.get("own_mean") is not None else "-"
            line.append(f"{ours} ({_pm(pub.mean, pub.std) if pub else '-'})")
            if r.get("own_recipe"):
                recipes.append(f"- {m} IPC {ipc}: {r['own_recipe']}")
        body.append(line)
    sources = sorted({p.source for m in own for i in ipcs if (p := published_own(m, dataset, i))})
    return ["", "Own evaluation recipe (%), a separate protocol: the method's published evaluation, on the same "
                "test images, each row's recipe listed below the table (kernel methods: KRR from the synthetic set "
                "with its learned targets, no network trained; DD and SLDD: fresh networks trained by the learned "
                "step schedule): ours, mean ± std where several networks are trained "
                f"(published: {'; '.join(sources) or '-'}).", "",
            *_md_table(["method"] + [f"IPC {i}" for i in ipcs], body), "", *dict.fromkeys(recipes)]


def _provenance(rows: list[dict]) -> list[str]:
    """Code versions, torch, platform, evaluation protocol per profile and each set's distillation budget."""
    by_code: dict[str, list[str]] = {}
    for r in rows:
        by_code.setdefault(", ".join(r["code_versions"]) or "-", []).append(f"{r['method']}@{r['ipc']}")
    codes = ([f"- code version: {next(iter(by_code))} (every cell)"] if len(by_code) == 1 else
             [f"- code version {c}: {', '.join(cells)}" for c, cells in sorted(by_code.items())])
    out = ["## Provenance", "", *codes,
           f"- torch: {', '.join(sorted({t for r in rows for t in r['torch_versions']})) or '-'}",
           f"- device: {', '.join(sorted({p for r in rows for p in r['platforms']})) or '-'}", ""]
    known = ("epochs", "lr", "batch_size", "dsa", "test_subset")
    protocols: dict[tuple, list[str]] = {}
    for r in rows:
        p = r["protocol"]
        cells = [r["eval_profile"] or "-", *(_value(p.get(k)) for k in known[:-1]),
                 "full" if p.get("test_subset") is None else f"{p['test_subset']} per class",
                 str(len(r["seeds"] or [])),
                 ", ".join(f"{k}={_value(v)}" for k, v in sorted(p.items()) if k not in known) or "-"]
        protocols.setdefault(tuple(cells), []).append(f"{r['method']}@{r['ipc']}")
    if protocols:
        header = ["eval profile", "epochs", "lr", "batch", "dsa", "test subset", "seeds", "other", "used by"]
        out += _md_table(header, [[*k, ", ".join(v)] for k, v in sorted(protocols.items())]) + [""]
    out += ["Distillation parameters:", ""]
    for r in rows:
        ran = _value(r["iterations"])
        if r.get("iterations_planned") not in (None, r["iterations"]):
            ran += f" of {r['iterations_planned']}"
        params = ", ".join(f"{k}={_value(v)}" for k, v in sorted((r["params"] or {}).items()))
        out.append(f"- {r['method']} IPC {r['ipc']} (profile {r['distill_profile'] or '-'}, {ran} iterations, "
                   f"seed {_value(r['seed'])}): {params or '-'}")
    return out


def storage(syn, ipc: int, num_classes: int) -> dict:
    """What a set stores, in floats, against the images training sees. Pixels: the set's own record (provenance
    "storage": IDC tiles, RTP bases x coefficients) or its images; plus learned soft labels or targets and a
    learned step size or schedule (hard labels are free). `budget` is the total over the plain pixel budget of
    its IPC (IPC x C x H x W x K): 1.0 stores exactly as much as IPC real images per class."""
    prov = getattr(syn, "provenance", None) or {}
    per_image = int(torch.tensor(syn.images.shape[1:]).prod())
    pixels = (prov.get("storage") or {}).get("stored_floats", len(syn.images) * per_image)
    labels = syn.labels.numel() if syn.labels.dim() == 2 else 0
    labels += syn.targets.numel() if getattr(syn, "targets", None) is not None else 0
    schedule = len(prov.get("step_lrs") or []) or (1 if getattr(syn, "lr", None) is not None else 0)
    total = pixels + labels + schedule
    return {"pixels": pixels, "labels": labels, "schedule": schedule, "total": total,
            "generator": (prov.get("storage") or {}).get("generator_floats", 0),
            "budget": total / (ipc * per_image * num_classes), "trains_on": len(syn.images) / num_classes}


def _bytes(n: int) -> str:
    """A byte count in binary units: 31,360 -> '30.6 KiB'."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def storage_markdown(rows: list[dict], dataset: str, stored: dict[tuple[str, int], dict]) -> list[str]:
    """Methods side by side at equal storage: per IPC, what each set stores against the plain pixel budget and
    how many images per class training sees, with its accuracy (rows by accuracy)."""
    rows = [r for r in rows if r["dataset"] == dataset and r["status"] == "ok" and (r["method"], r["ipc"]) in stored]
    if not rows:
        return []
    out = ["## At equal storage", "",
           "Every set of a column is held to the pixel budget of its IPC (IPC real images per class). Stored "
           "floats count pixels (or what decodes to them: IDC's tiles, RTP's bases and coefficients, a generator's "
           "codes and the generator itself, which was trained here on the same data), learned soft labels or "
           "targets, and a learned step size or schedule; hard labels are free. A set that decodes into more "
           "training images than it stores trains on them at no extra storage; one that stores more than the "
           "budget is marked *over*. Bytes: 4 per stored float (float32; the `*.pt` files hold float32); IPC-equivalent: "
           "stored floats / floats per image / classes, the IPC of real images that the same bytes would hold.", ""]
    for ipc in sorted({r["ipc"] for r in rows}):
        body = []
        for r in sorted((r for r in rows if r["ipc"] == ipc), key=lambda r: (-r["acc_mean"], method_rank(r["method"]))):
            st = stored[(r["method"], ipc)]
            parts = "+".join(str(v) for v in (st["pixels"], st["labels"], st["schedule"]) if v) if (
                st["labels"] or st["schedule"]) else str(st["pixels"])
            held = f" (generator {st['generator']:,})" if st.get("generator") else ""
            body.append([r["method"], f"{st['total']:,}" + ("" if parts == str(st["total"]) else f" ({parts})") + held,
                         _bytes(4 * st["total"]), f"{st['budget']:.3f}" + (" *over*" if st["budget"] > 1.0005 else ""),
                         f"{st['budget'] * ipc:.3g}", f"{st['trains_on']:g}", _ours(r)])
        out += [f"IPC {ipc}:", "", *_md_table(["method", "stored floats (pixels+labels+schedule)", "bytes (float32)",
                                               "x the pixel budget", "IPC-equivalent", "images per class trained on",
                                               "accuracy (%)"], body), ""]
    return out


def soft_cost_rows(rows: list[dict], records: dict[str, dict], dataset: str, methods: list[str],
                   stale: dict[str, str] | None) -> list[dict]:
    """The soft-label track's sets with their track-B accuracy (acc_mean/acc_std) beside their own distillation
    cost: only a kd record made from the very set of the fresh cell."""
    out = []
    for r in rows:
        k = results.key(r["method"], dataset, r["ipc"])
        rec = records.get(k)
        if (r["dataset"] == dataset and r["status"] == "ok" and r["method"] in methods and rec
                and f"kd@{k}" not in (stale or {}) and rec.get("synset_sha256") == r.get("synset_sha256")):
            out.append({**r, "acc_mean": rec["mean"], "acc_std": rec["std"], "kd_wall_time_s": rec.get("wall_time_s"),
                        "kd_seeds": len(rec["accs"])})
    return out


def soft_cost_markdown(soft: list[dict], teachers: list[dict], dataset: str) -> list[str]:
    """Track B beside cost: distillation and soft-label evaluation time, accuracy; the teachers' shared cost."""
    if not soft:
        return []
    _, ipcs, methods, cell = _ordered(soft, dataset)
    def three(r: dict | None) -> list[str]:
        return ([_num(r["wall_time_s"]), _num(r["kd_wall_time_s"]), _acc(r["acc_mean"], r["acc_std"], r["kd_seeds"])]
                if r else ["-", "-", "not run"])
    body = [[m] + [v for i in ipcs for v in three(cell.get((m, i)))] for m in methods]
    shared = ", ".join(f"`{t['name']}` {t['wall_time_s']:.0f} s" for t in teachers) or "-"
    return ["## Soft-label track (B): accuracy vs cost", "",
            "The same sets under the soft-label track (a separate protocol, `kd` stage) beside what they cost: "
            "distillation, and the students' training with the teacher relabelling every view. The teachers are "
            f"trained once per dataset and shared by every method of the track (teachers stage: {shared}).", "",
            *_md_table(["method"] + [f"IPC {i} {w}" for i in ipcs for w in ("distill (s)", "kd eval (s)", "accuracy (%)")],
                       body), "",
            f"![soft-label accuracy vs distillation time]({dataset}_soft_acc_vs_cost.png)", ""]


def cost_markdown(rows: list[dict], dataset: str, soft: list[str] = ()) -> str:
    """Measured distillation and evaluation cost per cell (varies with the machine and its load); `soft`: the
    soft-label track's section (soft_cost_markdown)."""
    rows, ipcs, methods, cell = _ordered([r for r in rows if r["status"] == "ok"], dataset)
    body = []
    for m in methods:
        line = [m]
        for ipc in ipcs:
            r = cell.get((m, ipc))
            line += ([_num(r["wall_time_s"]), _num(r["peak_mem_mb"]), _num(r["eval_wall_time_s"]), r["device"] or "-"]
                     if r else ["-"] * 4)
        body.append(line)
    header = ["method"] + [f"IPC {i} {w}" for i in ipcs for w in ("distill (s)", "peak mem (MB)", "eval (s)", "device")]
    return "\n".join([f"# {DATASET_NAMES.get(dataset, dataset)}: cost", "",
                      "Measured by the run that made the numbers in the main report; wall time and memory vary with "
                      "the machine and its load, so these pages are not part of the reproducibility guarantee.", "",
                      *_md_table(header, body), "",
                      f"![accuracy vs distillation time]({dataset}_acc_vs_cost.png)", "", *soft])


def plot_time_to_accuracy(rows: list[dict], path: Path) -> Path:
    """bench/bench_tta.py's measurements: accuracy of each method's set against its distillation seconds."""
    from matplotlib.figure import Figure   # noqa: PLC0415 (drawn only when the bench file exists)
    fig = Figure(figsize=(5.5, 3.8), dpi=100)
    ax = fig.subplots()
    for method in sorted({r["method"] for r in rows}, key=method_rank):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["distill_s"])
        ax.plot([r["distill_s"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=method)
    ipc = rows[0]["ipc"] if rows else "-"
    ax.set(xscale="log", xlabel="distillation wall time (s)", ylabel="test accuracy (%), 1 seed",
           title=f"time to accuracy, IPC {ipc} ({rows[0]['device'] if rows else '-'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path


def plot_bptt(rows: list[dict], path: Path) -> Path:
    """bench/bench_bptt.py's measurements: memory and time of a BPTT iteration, plain and checkpointed."""
    from matplotlib.figure import Figure   # noqa: PLC0415 (drawn only when the bench file exists)
    fig = Figure(figsize=(9.0, 3.6), dpi=100)
    memory, seconds = fig.subplots(1, 2)
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["steps"])
        steps = [r["steps"] for r in mine]
        memory.plot(steps, [r["peak_mem_mb"] for r in mine], marker="o", label=variant)
        seconds.plot(steps, [r["iteration_s"] for r in mine], marker="o", label=variant)
    memory.set(xlabel="unrolled steps N", ylabel="peak memory of an iteration (MB)",
               title=f"BPTT memory ({rows[0]['device'] if rows else '-'})")
    seconds.set(xlabel="unrolled steps N", ylabel="seconds per iteration", title="time")
    for ax in (memory, seconds):
        ax.grid(alpha=0.3)
    memory.legend(fontsize="small")
    fig.tight_layout()
    return figures._save(fig, path)


def stage_times(runs_dir: str | Path) -> dict[str, float]:
    """Seconds each stage's notebook ran (papermill's record in runs/): runs/<stage>/<item>.ipynb -> stage@item; an
    application's per-dataset baseline (runs/privacy/real-<dataset>.ipynb) -> its own stage (privacy_real@<dataset>)."""
    root, out = Path(runs_dir), {}
    for nb in sorted(root.glob("*/*.ipynb")) + sorted(root.glob("*.ipynb")):
        duration = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("duration")
        if duration is not None:
            parts = nb.relative_to(root).with_suffix("").parts
            if len(parts) == 2 and parts[0] in BASELINES and parts[1].startswith(BASELINES[parts[0]][1] + "-"):
                parts = (BASELINES[parts[0]][0], parts[1][len(BASELINES[parts[0]][1]) + 1:])
            out["@".join(parts)] = round(float(duration), 1)
    return out


def plot_data(rows: list[dict], out: Path) -> list[Path]:
    """JSON records for `dvc plots show`: accuracy per (method, dataset, ipc), loss per iteration per cell."""
    ok = [r for r in rows if r["status"] == "ok"]
    acc = [{"method": r["method"], "dataset": r["dataset"], "ipc": r["ipc"], "accuracy": round(r["acc_mean"], 2),
            "std": round(r["acc_std"] or 0, 2)} for r in ok]
    loss = []
    for r in ok:
        history = r["loss_history"]
        stride = max(1, -(-len(history) // MAX_LOSS_POINTS))
        loss += [{"cell": r["key"], "iteration": int(i), "loss": float(v)} for i, v in history[::stride]]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in (("accuracy.json", acc), ("loss.json", loss)):
        written.append(out / name)
        written[-1].write_text(json.dumps(records, indent=0, sort_keys=True) + "\n")
    return written


def _load_synset(path: Path):
    """Default loader: a SyntheticSet file as a plain record (images, labels, zca, ...)."""
    return SimpleNamespace(**torch.load(path, map_location="cpu", weights_only=True))


def _spec(dataset: str):
    """The dataset's spec (class names, mean/std) when ddlib.data knows it, else None: grids still draw."""
    try:
        from .data import get_spec
        return get_spec(dataset)
    except (ImportError, ValueError):
        return None


def write_reports(results_dir: str | Path = "results", out_dir: str | Path = "reports", *, grid: dict | None = None,
                  stale: dict[str, str] | None = None, runs_dir: str | Path | None = None,
                  bench_dir: str | Path | None = None, synset_loader=None) -> list[Path]:
    """Write every page, figure and data file of reports/ (module docstring); returns the paths written.

    Args:
        grid: params.yaml's grid; None shows the cells that have results (tests, smoke runs).
        stale: {stage: why} from provenance.stale; None means the results were not checked against dvc.lock.
        runs_dir: the executed notebooks, for reports/costs/stage_times.json (None: not written).
        bench_dir: bench/ with results-{unroll,bptt,tta}-<device>.json, drawn under reports/costs/.
    """
    collected, out, load = results.collect(results_dir), Path(out_dir), synset_loader or _load_synset
    cells = grid_cells(grid) if grid else [(r["method"], r["dataset"], r["ipc"]) for r in collected.values()]
    rows = rows_for(collected, cells, stale)
    xrecords = results.read_all(Path(results_dir) / "xarch", "xarch.json")
    if grid:   # a cell the grid no longer runs (grid.xarch_ipcs) keeps its old file under results/: not shown
        xrecords = {k: r for k, r in xrecords.items() if k in {results.key(*c) for c in applied_cells(grid, "xarch")}}
    kd_records = results.read_all(Path(results_dir) / "kd", "kd.json")
    evals = results.read_all(Path(results_dir) / "eval", "eval.json")   # for their `noaug` part (ARS)
    app_records = {kind: results.read_all(Path(results_dir) / kind, f"{kind}.json") for kind in APPS}
    written = plot_data(rows, out / "plots")
    index = ["# Reports", ""]
    for dataset in sorted({r["dataset"] for r in rows}, key=lambda d: list(DATASET_NAMES).index(d)
                          if d in DATASET_NAMES else len(DATASET_NAMES)):
        name, spec = DATASET_NAMES.get(dataset, dataset), _spec(dataset)
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: method_rank(r["method"]))
        written.append(figures.plot_acc_vs_ipc(mine, dataset, out / "figures" / f"{dataset}_acc_vs_ipc.png", published))
        written.append(figures.plot_acc_vs_cost([r for r in mine if r["status"] == "ok"], dataset,
                                                out / "costs" / f"{dataset}_acc_vs_cost.png"))
        sets = {(r["method"], r["ipc"]): load(Path(r["synset_path"])) for r in mine
                if r["status"] == "ok" and r["synset_path"] and Path(r["synset_path"]).exists()}
        stored = {k: storage(syn, k[1], spec.num_classes if spec else (syn.labels.shape[1] if syn.labels.dim() == 2
                                                                 else int(syn.labels.max()) + 1))
                  for k, syn in sets.items()}
        xmethods = grid.get("xarch", []) if grid else sorted({r["method"] for r in xrecords.values()})
        kd_methods = grid.get("kd", []) if grid else sorted({r["method"] for r in kd_records.values()})
        taught = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob(f"teachers/*-{dataset}.json"))]
        taught = [t for t in taught if t["dataset"] == dataset and (grid is None or t["name"] in grid.get("teachers", []))]
        fresh = [t for t in taught if not (stale and f"teachers@{t['name']}-{dataset}" in stale)]
        track = next((r["protocol"].get("teacher") for r in kd_records.values() if r.get("protocol")), "standard")
        fresh = [t for t in fresh if t["name"] == track]   # the label-robust score's real data: the track's teacher
        md = [f"# {name}", "", table_markdown(rows, dataset, checked=stale is not None),
              *xarch_markdown(rows, xrecords, dataset, xmethods, stale),
              *soft_markdown(rows, kd_records, dataset, kd_methods, stale),
              *lrs_markdown(rows, kd_records, dataset, fresh[0]["test_acc"][-1] if fresh else None,
                            fresh[0]["name"] if fresh else None, evals),
              *storage_markdown(rows, dataset, stored),
              *(line for kind, module in APPS.items()
                for line in _with_profile(module.markdown(app_records[kind], dataset,
                                                          *app_axes(grid, kind, app_records[kind]), stale),
                                          app_records[kind], dataset)),
              "## Figures",
              "", f"![accuracy vs IPC](figures/{dataset}_acc_vs_ipc.png)", "",
              f"Distillation and evaluation cost: [costs/{dataset}.md](costs/{dataset}.md).", ""]
        for kind, module in APPS.items():
            written += module.figures_of(app_records[kind], dataset, *app_axes(grid, kind, app_records[kind]),
                                         out / "figures", stale)
        summaries = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob(f"buffers/*-{dataset}.json"))]
        recipes = grid.get("buffers", []) if grid else None
        summaries = [s for s in summaries if s["dataset"] == dataset and (recipes is None or s["name"] in recipes)]
        if summaries:
            md += experts_markdown(summaries, dataset, stale)
            written += [figures.plot_expert_curves(s, out / "figures" / f"{dataset}_experts_{s['name']}.png")
                        for s in summaries if not (stale and f"buffers@{s['name']}-{dataset}" in stale)]
        if taught:
            md += teachers_markdown(taught, dataset, stale)
        summaries = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob(f"generators/*-{dataset}.json"))]
        recipes = grid.get("generators", []) if grid else None
        summaries = [s for s in summaries if s["dataset"] == dataset and (recipes is None or s["name"] in recipes)]
        if summaries:
            md += generators_markdown(summaries, dataset, stale)
            for s in summaries:
                sample = Path(results_dir) / "generators" / f"{s['name']}-{dataset}.png"
                if sample.exists() and not (stale and f"generators@{s['name']}-{dataset}" in stale):
                    target = out / "figures" / f"{dataset}_generator_{s['name']}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(sample, target)
                    written.append(target)
        md += ["## Synthetic images", ""]
        for r in mine:
            if (r["method"], r["ipc"]) not in sets:
                continue
            syn = sets[(r["method"], r["ipc"])]
            # mean/std only undo plain normalisation; ZCA-space images fall back to per-image scaling
            plain = spec is not None and not getattr(syn, "zca", False)
            written.append(figures.image_grid(syn.images, syn.labels, out / "figures" / "grids" / f"{r['key']}.png",
                                              class_names=spec.classes if spec else None,
                                              mean=spec.mean if plain else None, std=spec.std if plain else None))
            md += [f"{r['method']} IPC {r['ipc']}:", "", f"![{r['key']}](figures/grids/{r['key']}.png)", ""]
        written.append(out / f"{dataset}.md")
        written[-1].write_text("\n".join(md))
        soft = soft_cost_rows(mine, kd_records, dataset, kd_methods, stale)
        if soft:
            written.append(figures.plot_acc_vs_cost(soft, dataset, out / "costs" / f"{dataset}_soft_acc_vs_cost.png"))
        written.append(out / "costs" / f"{dataset}.md")
        written[-1].write_text(cost_markdown(rows, dataset, soft_cost_markdown(soft, taught, dataset)))
        counts = {s: sum(r["status"] == s for r in mine) for s in ("ok", "stale", "not run")}
        index.append(f"- [{name}]({dataset}.md): {len(mine)} cells: " +
                     ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if runs_dir is not None:
        written.append(out / "costs" / "stage_times.json")
        ok = [r for r in rows if r["status"] == "ok"]
        context = {"profiles": sorted({_profiles(r) for r in ok}), "devices": sorted({r["device"] for r in ok
                                                                                      if r.get("device")})}
        written[-1].write_text(json.dumps({**context, "stages": stage_times(runs_dir)}, indent=1, sort_keys=True)
                               + "\n")
    for bench in sorted(Path(bench_dir).glob("results-unroll-*.json")) if bench_dir else []:
        kind = bench.stem.removeprefix("results-unroll-")
        written.append(figures.plot_unroll(json.loads(bench.read_text()), out / "costs" / f"unroll-{kind}.png"))
        index.append(f"- Trajectory matching, memory and time against the unroll length ({kind}, "
                     f"bench/bench_unroll.py): [costs/unroll-{kind}.png](costs/unroll-{kind}.png)")
    for bench in sorted(Path(bench_dir).glob("results-bptt-*.json")) if bench_dir else []:
        kind = bench.stem.removeprefix("results-bptt-")
        written.append(plot_bptt(json.loads(bench.read_text()), out / "costs" / f"bptt-{kind}.png"))
        index.append(f"- Backpropagation through training (DD, SLDD; RTP's momentum unroll), memory and time against the unroll length, "
                     f"plain and checkpointed ({kind}, bench/bench_bptt.py): [costs/bptt-{kind}.png](costs/bptt-{kind}.png)")
    for bench in sorted(Path(bench_dir).glob("results-tta-*.json")) if bench_dir else []:
        kind = bench.stem.removeprefix("results-tta-")
        written.append(plot_time_to_accuracy(json.loads(bench.read_text()), out / "costs" / f"tta-{kind}.png"))
        index.append(f"- Time to accuracy, kernel methods against DM, Fashion-MNIST IPC 10 ({kind}, bench/bench_tta.py): "
                     f"[costs/tta-{kind}.png](costs/tta-{kind}.png)")
    written.append(out / "table1.md")
    written[-1].write_text(survey_table_markdown(rows, grid))
    index.insert(2, "- [Table 1](table1.md): every dataset and IPC of the survey's Table 1, ours beside the published")
    written.append(out / "README.md")
    written[-1].write_text("\n".join(index) + "\n")
    return written


def missing(results_dir: str | Path, grid: dict, profile: str) -> list[str]:
    """The stages of the grid whose result is absent or of another profile: `distill@<key>`, `evaluate@<key>`,
    `<kind>@<key>` for each kind of APPLIED, each with the profile it has when it has one."""
    collected = results.collect(results_dir)
    out = []
    for method, dataset, ipc in grid_cells(grid):
        k, r = results.key(method, dataset, ipc), collected.get(results.key(method, dataset, ipc)) or {}
        for stage, has in (("distill", r.get("distill_profile")), ("evaluate", r.get("eval_profile"))):
            if has != profile:
                out.append(f"{stage}@{k}" + (f" (has {has})" if has else ""))
    for kind in APPLIED:
        records = results.read_all(Path(results_dir) / kind, f"{kind}.json")
        for method, dataset, ipc in applied_cells(grid, kind):
            k = results.key(method, dataset, ipc)
            if (has := (records.get(k) or {}).get("profile")) != profile:
                out.append(f"{kind}@{k}" + (f" (has {has})" if has else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m ddlib.report [--profile P]`: which cells of params.yaml's grid have no result of profile P yet
    (the report itself is the `report` stage: `dvc repro report`)."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--profile", help="default: params.yaml's")
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    all_params = params.load(args.params)
    profile = params.check_profile(args.profile or all_params.get("profile", "quick"))
    grid = all_params["grid"]
    gone = missing(args.results, grid, profile)
    total = len(grid_cells(grid)) * 2 + sum(len(applied_cells(grid, k)) for k in APPLIED)
    print(f"{total - len(gone)} of {total} grid stages have a {profile}-profile result in {args.results}/"
          + (":" if not gone else f"; missing {len(gone)} (`dvc repro` makes them):"))
    print(*(f"  {s}" for s in gone), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
