"""Membership inference against networks trained on distilled data (families-2.md B.3: Dong et al. ICML'22; Carlini,
Feldman & Nasr 2022, "No free lunch"; LiRA: Carlini et al. S&P'22, "Membership inference from first principles").

A fixed population of `population` training images per class (train split, seed `seed`) and `models` stratified
random halves of it (floor(n_c / 2) of each class IN, seed `seed + 1`). Model j is the method's IPC set distilled
from its IN half alone (seed `seed + j`; `real` trains on the half itself, the ceiling of leakage; `random` is
Carlini et al.'s naive baseline) and `nets` networks trained on it by the evaluation protocol (evaluate.py). Its
statistic of a population point (x, y) is phi = log p_y - log(1 - p_y), averaged over its nets, without query
augmentation. Each model in turn is the target and the other M - 1 its shadows (the paper's leave-one-out
evaluation); the (score, IN?) pairs of all targets are pooled into one ROC per attack (higher score = member):
    loss:         -CE(f(x), y) = log p_y, one global threshold (Yeom et al. 2018);
    lira_online:  log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2), mu per example over the shadows where it
                  was IN (OUT; the global mean where it never was), s^2 ONE variance of the residuals pooled over
                  examples (the paper's fixed variance, advised for few shadows);
    lira_offline: log Phi((phi - mu_out) / s_out), the paper's one-sided test on OUT shadows (its code scores
                  -log N(phi; mu_out, s_out^2), two-sided).
Reported: AUC and TPR at 0.1 % and 1 % FPR; with N non-members pooled no FPR below 1/N is measured. The paper
trains 64-256 shadows, we train M models in all (a few in the quick profile): say so beside any number. A method
that reads shared inputs (expert buffers, generators, teachers made from the whole training split) has seen every
population point through them: the record lists them and the report flags its rows.

    results/privacy/<key>/privacy.json = {method, dataset, ipc, population, models, nets, members, non_members,
        attacks: {attack: {auc, tpr@0.001, tpr@0.01}}, roc: {attack: {fpr, tpr}}, test_acc: [per model],
        synset_sha256: [per model], shared_inputs, protocol, provenance}
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import evaluate, methods, params, provenance, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..train import accuracy
from . import shared

FPRS = (0.001, 0.01)


def settings(all_params: dict, profile: str | None = None) -> tuple[dict, evaluate.Protocol]:
    """(cfg, protocol) of params.yaml's `privacy` section: the evaluation protocol with `nets` nets per model."""
    profile = profile or all_params.get("profile", "quick")
    cfg = params.resolve(all_params["privacy"], profile)
    if int(cfg["models"]) < 2 or int(cfg["nets"]) < 1:
        raise ValueError(f"privacy.models must be >= 2 (a target needs shadows) and nets >= 1, got {cfg}")
    return cfg, replace(evaluate.protocol(all_params, profile), num_seeds=int(cfg["nets"]))


def check(all_params: dict, profile: str, grid: dict) -> list[str]:
    """Problems of the `privacy` section for the grid check (ddlib/grid.py): settings() raises on bad counts, and
    the population must give each model's half grid.privacy_ipcs' largest IPC."""
    try:
        cfg, _ = settings(all_params, profile)
    except (KeyError, ValueError, TypeError) as err:
        return [f"privacy section: {err}"]
    largest = max([i for i in grid.get("privacy_ipcs", []) if isinstance(i, int)] or [1])
    if int(cfg["population"]) < 2 * largest:
        return [f"privacy.population: {cfg['population']} images per class cannot give each model's half "
                f"grid.privacy_ipcs' largest IPC {largest} (it must be >= 2 x IPC)"]
    return []


def population(train: LabeledImages, per_class: int, seed: int) -> LabeledImages:
    """The fixed attack population: `per_class` training images of each class."""
    return shared.population(train, per_class, seed, "privacy.population")


def halves(labels: torch.Tensor, models: int, seed: int) -> torch.Tensor:
    """(models, n) bool: for each model a random floor(n_c / 2) of each class's examples are IN."""
    gen, labels = torch.Generator().manual_seed(seed), labels.cpu()
    member = torch.zeros(models, len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        picked = torch.rand(models, len(idx), generator=gen).argsort(1)[:, :len(idx) // 2]  # (models, n_c // 2)
        member[torch.arange(models)[:, None], idx[picked]] = True
    return member


@torch.no_grad()
def phi(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """log(p_y / (1 - p_y)) per example (CPU) = logit_y - logsumexp(other logits): no 1 - p_y cancellation."""
    was_training, out = net.training, []
    net.eval()
    for s in range(0, len(x), batch_size):
        z, yb = net(x[s:s + batch_size]), y[s:s + batch_size, None]
        out.append(z.gather(1, yb)[:, 0] - torch.logsumexp(z.scatter(1, yb, -math.inf), 1))
    net.train(was_training)
    return torch.cat(out).cpu()


def roc(scores: torch.Tensor, is_member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fpr, tpr) at every distinct score threshold, from (0, 0) to (1, 1); equal scores cross together."""
    s, m = torch.as_tensor(scores, dtype=torch.float64).flatten(), torch.as_tensor(is_member).bool().flatten()
    if len(s) != len(m) or torch.isnan(s).any() or m.all() or not m.any():
        raise ValueError("roc needs one score (not NaN) per example and both members and non-members")
    order = torch.argsort(s, descending=True)
    s, m = s[order], m[order]
    cut = torch.cat([s[1:] != s[:-1], torch.ones(1, dtype=torch.bool)])   # the last of each run of equal scores
    zero = torch.zeros(1, dtype=torch.float64)
    fp, tp = torch.cumsum(~m, 0, dtype=torch.float64)[cut], torch.cumsum(m, 0, dtype=torch.float64)[cut]
    return torch.cat([zero, fp / fp[-1]]), torch.cat([zero, tp / tp[-1]])


def auc(scores: torch.Tensor, is_member: torch.Tensor) -> float:
    """Area under the ROC = P(member scores higher than non-member) + P(tie) / 2, the Mann-Whitney statistic."""
    fpr, tpr = roc(scores, is_member)
    return float(torch.trapezoid(tpr, fpr))


def tpr_at_fpr(scores: torch.Tensor, is_member: torch.Tensor, fpr: float) -> float:
    """The largest TPR over thresholds whose FPR <= fpr (0 when only "nobody is a member" qualifies)."""
    f, t = roc(scores, is_member)
    return float(t[f <= fpr].max())


def _fit(phi_shadows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean of phi over the shadows in `mask` (the global mean where there is none) and one standard
    deviation of the residuals, pooled over examples (of all values while no example has two shadows)."""
    if not mask.any():
        raise ValueError("LiRA needs shadows where the examples are IN and where they are OUT")
    count = mask.sum(0)
    mu = torch.where(count > 0, (phi_shadows * mask).sum(0) / count.clamp_min(1), phi_shadows[mask].mean())
    dof = int(mask.sum() - (count > 0).sum())
    var = ((phi_shadows - mu)[mask] ** 2).sum() / dof if dof > 0 else phi_shadows[mask].var(unbiased=False)
    return mu, var.clamp_min(1e-12).sqrt()


def lira(phi_target: torch.Tensor, phi_shadows: torch.Tensor, in_shadows: torch.Tensor, *,
         online: bool) -> torch.Tensor:
    """LiRA scores of the target's examples (module docstring); phi_shadows and in_shadows are (shadows, n)."""
    phi_target, phi_shadows = phi_target.double(), phi_shadows.double()
    mu_out, sd_out = _fit(phi_shadows, ~in_shadows)
    if not online:
        return torch.special.log_ndtr((phi_target - mu_out) / sd_out)
    mu_in, sd_in = _fit(phi_shadows, in_shadows)
    normal = torch.distributions.Normal
    return normal(mu_in, sd_in).log_prob(phi_target) - normal(mu_out, sd_out).log_prob(phi_target)


def loss_attack(phi_target: torch.Tensor) -> torch.Tensor:
    """-cross-entropy = log p_y = -softplus(-phi) (Yeom et al.)."""
    return -F.softplus(-phi_target.double())


def _summary(s: torch.Tensor, is_member: torch.Tensor, points: int = 200) -> tuple[dict, dict]:
    """The attack's metrics and its ROC thinned to <= `points` points, log-spaced in FPR from 1/N up."""
    fpr, tpr = roc(s, is_member)
    if len(fpr) > points:
        grid = torch.logspace(math.log10(float(fpr[fpr > 0].min())), 0, points - 1, dtype=torch.float64)
        keep = torch.unique(torch.searchsorted(fpr, torch.cat([fpr[:1], grid]), right=True) - 1)
        fpr, tpr = fpr[keep], tpr[keep]
    metrics = {"auc": auc(s, is_member), **{f"tpr@{f}": tpr_at_fpr(s, is_member, f) for f in FPRS}}
    return metrics, {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def run(method: str, train: LabeledImages, test: LabeledImages, method_params: dict | None,
        protocol: evaluate.Protocol, cfg: dict, *, ipc: int, device: str | torch.device = "auto", seed: int = 0,
        data_root: str | Path = "data", progress=None) -> dict:
    """Every model, then every attack with leave-one-out shadows (module docstring): privacy.json's record.
    `train` and `test` are in the method's space (zca.load_split); `progress(j, test_acc)` after each model."""
    device, per_class, models = runtime.resolve_device(device), int(cfg["population"]), int(cfg["models"])
    if method != "real" and per_class < 2 * ipc:
        raise ValueError(f"privacy.population={per_class} images per class must be at least 2 × IPC = {2 * ipc}: "
                         "each model distils from half of the population")
    pop = population(train, per_class, seed)
    member, test = halves(pop.y, models, seed + 1), evaluate.test_split(test, protocol)
    x, y, x_test, y_test = pop.x.to(device), pop.y.to(device), test.x.to(device), test.y.to(device)
    phis, accs, hashes = [], [], []
    for j in range(models):
        half = LabeledImages(pop.x[member[j]], pop.y[member[j]], pop.spec, pop.zca)
        synset = (SyntheticSet(half.x, half.y, "real", pop.spec.name, per_class // 2, zca=pop.zca) if method == "real"
                  else methods.distill(method, half, ipc=ipc, params=method_params, device=device, seed=seed + j,
                                       data_root=data_root))
        trained = [net for _, net in evaluate.trained_nets(synset, pop.spec, protocol, device=device, seed=seed + j)]
        phis.append(torch.stack([phi(net, x, y) for net in trained]).mean(0))
        accs.append(statistics.fmean(accuracy(net, x_test, y_test) for net in trained))
        hashes.append(synset.content_hash())
        if progress:
            progress(j, accs[-1])
    phis, shadows = torch.stack(phis), [[k for k in range(models) if k != j] for j in range(models)]  # (models, n)
    scores = {"loss": torch.cat([loss_attack(p) for p in phis])}
    for name, online in (("lira_online", True), ("lira_offline", False)):
        scores[name] = torch.cat([lira(phis[j], phis[o], member[o], online=online) for j, o in enumerate(shadows)])
    summary = {name: _summary(s, member.flatten()) for name, s in scores.items()}   # target-major, as the scores
    shared = [] if method == "real" else methods.inputs(method, method_params, dataset=pop.spec.name, ipc=ipc,
                                                        data_root=data_root)
    return {"method": method, "dataset": pop.spec.name, "ipc": None if method == "real" else ipc,
            "population": per_class, "models": models,
            "nets": protocol.num_seeds, "members": int(member.sum()), "non_members": int((~member).sum()),
            "attacks": {k: v[0] for k, v in summary.items()}, "roc": {k: v[1] for k, v in summary.items()},
            "test_acc": accs, "synset_sha256": hashes, "shared_inputs": [str(p) for p in shared],
            "protocol": {**asdict(protocol), "epochs": protocol.train_epochs, "test_images": len(test)},
            **provenance.record(device)}


@torch.no_grad()
def nearest_real(synset: SyntheticSet, train: LabeledImages, feature_net: nn.Module | None = None, k: int = 1,
                 chunk: int = 4096) -> dict:
    """The k nearest training images of each synthetic one by L2 distance in the set's (normalised) pixel space and,
    given a net, in its `embed` space: {pixel_index, pixel_distance[, feature_...]}, (N, k) each, nearest first."""
    if synset.zca != train.zca:
        raise ValueError(f"the {synset.method!r} set and the training split are not in the same space (zca)")
    spaces = {"pixel": lambda x: x.flatten(1).double()}   # float64: |a|^2 + |b|^2 - 2ab cancels for near-copies
    if feature_net is not None:
        feature_net.eval()
        at = next(feature_net.parameters()).device
        spaces["feature"] = lambda x: feature_net.embed(x.to(at)).flatten(1).cpu().double()
    out = {}
    for space, f in spaces.items():
        query = f(synset.images)
        best_d = torch.full((len(query), k), math.inf, dtype=torch.float64)
        best_i = torch.zeros(len(query), k, dtype=torch.long)
        for s in range(0, len(train), chunk):   # a chunk of distances at a time: memory stays N x chunk
            d = torch.cat([best_d, torch.cdist(query, f(train.x[s:s + chunk].cpu()))], 1)
            i = torch.cat([best_i, torch.arange(s, s + d.shape[1] - k).expand(len(query), -1)], 1)
            best_d, pos = d.topk(k, largest=False)
            best_i = i.gather(1, pos)
        out[f"{space}_index"], out[f"{space}_distance"] = best_i, best_d
    return out


def _cells(records: dict, dataset: str, names: list[str], ipc: int, stale: dict | None) -> list[tuple]:
    """(method, record or None, why stale or None) per method, then `real` (the privacy_real stage's record,
    results/privacy/real-<dataset>, the same in every IPC's table) when it has one."""
    from .. import results
    cells = [(m, records.get(results.key(m, dataset, ipc)), (stale or {}).get(f"privacy@{results.key(m, dataset, ipc)}"))
             for m in names]
    if f"real-{dataset}" in records:
        cells.append(("real", records[f"real-{dataset}"], (stale or {}).get(f"privacy_real@{dataset}")))
    return cells


def markdown(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int],
             stale: dict[str, str] | None) -> list[str]:
    """The report's section: test accuracy and attack success per method, one table per IPC."""
    if not any(r["dataset"] == dataset for r in records.values()):
        return []
    out = ["## Privacy (membership inference)", "",
           "Leave-one-out LiRA (`privacy` stage, ddlib/apps/privacy.py; Carlini et al. 2022): each of M models "
           "distils the method's set from a random half of a fixed population of real training images and trains a "
           "ConvNet on it by the evaluation protocol; each model in turn is the target, the other M - 1 its shadows. "
           "`real` trains on the members themselves (the ceiling of leakage); `random` is Carlini et al.'s naive "
           "baseline. Dong et al.'s (ICML'22) numbers are not quoted: their settings are unverified. † = the method "
           "read files made from the whole training split (expert buffers, generators, teachers), so it saw the "
           "non-members too.", ""]
    for ipc in ipcs:
        cells = _cells(records, dataset, methods, ipc, stale)
        done = [r for _, r, why in cells if r and not why]
        if not any(r for m, r, _ in cells if m != "real"):
            continue
        out += [f"IPC {ipc}:", "", "| method | test acc | loss AUC | LiRA AUC | LiRA TPR@1% FPR | LiRA TPR@0.1% FPR |",
                "|---|---|---|---|---|---|"]
        for m, r, why in cells:
            if r is None or why:
                out.append(shared.missing_row(m, bool(why), 5))
                continue
            loss, lr = r["attacks"]["loss"], r["attacks"]["lira_online"]
            out.append(f"| {m}{' †' if r['shared_inputs'] else ''} | {statistics.fmean(r['test_acc']):.1f} | "
                       f"{loss['auc']:.3f} | {lr['auc']:.3f} | {100 * lr['tpr@0.01']:.2f} % | "
                       f"{100 * lr['tpr@0.001']:.2f} % |")
        if done:
            n = min(r["non_members"] for r in done)
            out += ["", f"{done[0]['models']} models, {done[0]['population']} population images per class: {n} "
                    f"non-members pooled, so the lowest measurable FPR is 1/{n} = {100 / n:.2g} %"
                    + (" (a TPR at a lower FPR is the TPR without any false positive)." if n < 1000 else "."), "",
                    f"![privacy IPC {ipc}](figures/{dataset}_privacy_{ipc}.png)"]
        out.append("")
    return out


def figures_of(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int], out_dir: Path,
               stale: dict[str, str] | None) -> list[Path]:
    """reports/figures/<dataset>_privacy_<ipc>.png: LiRA (online) ROC per method, log-log, stale cells left out."""
    from .. import figures
    written = []
    for ipc in ipcs:
        rows = [r for _, r, why in _cells(records, dataset, methods, ipc, stale) if r and not why]
        if any(r["method"] != "real" for r in rows):
            written.append(figures.plot_privacy_roc(rows, dataset, ipc, Path(out_dir) / f"{dataset}_privacy_{ipc}.png"))
    return written
