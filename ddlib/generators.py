r"""Generators for the generative and latent-space methods (GLaD, IT-GAN, DiM): the `generators` stage.

Nothing is downloaded. A small class-conditional DCGAN is trained on the dataset itself (families-2.md §A.7):

    G(z, y) = tail(head(z, y)),   head: [z ; onehot(y)] -> Linear -> BN -> ReLU -> f  (2w x H/4 x W/4)
                                  tail: f -> ConvT(4, s2) -> BN -> ReLU -> ConvT(4, s2) -> tanh -> mean/std space
    D(x, y) = <v, h(x)> + <e_y, h(x)>   (h: two stride-2 convs; a projection discriminator, spectrally normalised)

with the non-saturating GAN loss, Adam (lr 2e-4, betas 0.5/0.999) and batch 128: the DCGAN recipe. `head`
and `tail` are the split GLaD distils at: a latent code z, or the intermediate feature map f. DiM's GAN stage
(families-2.md §A.3, `loss: wgan_gp_ac`) trains the same G against an auxiliary-classifier critic,

    L_G = -mean c(G(z, y)) + CE(q(G(z, y)), y)
    L_D = mean c(fake) - mean c(x) + CE(q(fake), y_fake) + CE(q(x), y) + gp * mean (||grad_u c(u)|| - 1)^2

(u on the segments between real and fake images: WGAN-GP), a G step then a D step per batch, as DiM's
gen_condense.py; its critic D(x) = (c(x), q(x)) is saved beside G, since DiM keeps both losses while matching.
G's output is
in the dataset's mean/std space, the space the methods distil in (a generator never works in ZCA space).
BatchNorm runs in eval mode once trained, so decoding a stored code is deterministic and per image.

On disk (data/<dataset>/generators/<recipe>/): generator.pt {"arch", "state_dict", "fingerprint"} and
index.json (recipe, dataset, parameter count, losses, time). The recipe's epochs are checkpointed, so a killed
stage resumes at the last finished epoch. A method names a recipe, or a path to a generator.pt of the same
format (a user's own pretrained generator).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import provenance, runtime
from .data import LabeledImages


@dataclass(frozen=True)
class Recipe:
    nz: int = 64                         # latent dimension
    width: int = 32                      # w: G's feature map f has 2w channels at H/4 x W/4
    epochs: int = 25                     # passes over the (subset of the) training split
    batch_size: int = 128                # DCGAN
    lr: float = 2e-4                     # Adam for G and D ...
    beta1: float = 0.5                   # ... with betas (0.5, 0.999)
    train_per_class: int | None = None   # a fixed class-balanced subset (None: the whole split)
    loss: str = "ns"                     # ns: non-saturating, projection D | wgan_gp_ac: WGAN-GP + aux. classifier
    beta2: float = 0.999
    gp: float = 10.0                     # gradient-penalty weight (wgan_gp_ac)

    def __post_init__(self):
        if min(self.nz, self.width, self.epochs, self.batch_size) < 1 or self.lr <= 0 or self.loss not in LOSSES:
            raise ValueError(f"invalid generator recipe (loss one of {LOSSES}): {self}")


LOSSES = ("ns", "wgan_gp_ac")


class Generator(nn.Module):
    def __init__(self, nz: int, num_classes: int, channels: int, im_size, width: int, mean, std):
        super().__init__()
        h, w = im_size
        if h % 4 or w % 4:
            raise ValueError(f"the DCGAN generator needs image sides divisible by 4, got {h}x{w}")
        self.arch = {"nz": nz, "num_classes": num_classes, "channels": channels, "im_size": [h, w], "width": width,
                     "mean": list(mean), "std": list(std)}
        self.nz, self.num_classes, self.f_shape = nz, num_classes, (2 * width, h // 4, w // 4)
        self.fc = nn.Linear(nz + num_classes, 2 * width * (h // 4) * (w // 4))
        self.bn0 = nn.BatchNorm2d(2 * width)
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def head(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The intermediate feature map f (N, 2w, H/4, W/4) of codes z (N, nz) and hard labels y (N,)."""
        h = self.fc(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1))
        return F.relu(self.bn0(h.view(len(z), *self.f_shape)))

    def tail(self, f: torch.Tensor) -> torch.Tensor:
        """Images in the dataset's mean/std space from feature maps f."""
        return ((self.up(f) + 1) / 2 - self.mean) / self.std

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(z, y))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, channels: int, im_size, width: int):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm   # keeps the projection term bounded (Miyato & Koyama 2018)
        self.body = nn.Sequential(sn(nn.Conv2d(channels, width, 4, 2, 1)), nn.LeakyReLU(0.2),
                                  sn(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten())
        features = 2 * width * (im_size[0] // 4) * (im_size[1] // 4)
        self.critic, self.embed = sn(nn.Linear(features, 1)), sn(nn.Embedding(num_classes, features))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.critic(h).squeeze(1) + (self.embed(y) * h).sum(1)


class ACDiscriminator(nn.Module):
    """The WGAN-GP critic with an auxiliary classifier: (critic (N,), class logits (N, K)). LayerNorm, never
    BatchNorm (the penalty is per image), as DiM's D; two stride-2 convolutions, as the DCGAN's."""

    def __init__(self, num_classes: int, channels: int, im_size, width: int):
        super().__init__()
        self.arch = {"num_classes": num_classes, "channels": channels, "im_size": list(im_size), "width": width}
        self.body = nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GroupNorm(1, 2 * width), nn.LeakyReLU(0.2),
                                  nn.Flatten())
        features = 2 * width * (im_size[0] // 4) * (im_size[1] // 4)
        self.critic, self.classify = nn.Linear(features, 1), nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.critic(h).squeeze(1), self.classify(h)


def ac_generator_loss(d, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_G of the auxiliary-classifier WGAN: -mean critic + CE of the classifier; `d(x) -> (critic, logits)`."""
    critic, logits = d(fake)
    return -critic.mean() + F.cross_entropy(logits, y)


def ac_discriminator_loss(d, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, y_fake: torch.Tensor, gp: float,
                          gen: torch.Generator) -> torch.Tensor:
    """L_D: Wasserstein critic terms, CE on real and fake, and the gradient penalty at random interpolates
    (one mixing weight per image, from `gen`). `fake` carries no graph to G."""
    (c_fake, q_fake), (c_real, q_real) = d(fake), d(x)
    a = torch.rand(len(x), 1, 1, 1, generator=gen).to(x.device)
    mix = (a * x + (1 - a) * fake).detach().requires_grad_(True)
    grad, = torch.autograd.grad(d(mix)[0].sum(), mix, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return c_fake.mean() - c_real.mean() + F.cross_entropy(q_fake, y_fake) + F.cross_entropy(q_real, y) + gp * penalty


def build(arch: dict) -> Generator:
    return Generator(arch["nz"], arch["num_classes"], arch["channels"], arch["im_size"], arch["width"], arch["mean"],
                     arch["std"])


def fingerprint(recipe: Recipe, dataset: str, seed: int) -> str:
    return hashlib.sha256(json.dumps({**asdict(recipe), "dataset": dataset, "seed": seed},
                                     sort_keys=True).encode()).hexdigest()[:16]


def num_params(g: nn.Module) -> int:
    """Stored floats of a generator: its parameters and BatchNorm running statistics (what decoding reads)."""
    return sum(t.numel() for t in g.state_dict().values() if t.is_floating_point())


def train(real: LabeledImages, recipe: Recipe, out_dir: str | Path, *, name: str, device: torch.device, seed: int,
          checkpoint_dir: str | Path) -> dict:
    """Train G and D on `real` (mean/std space); writes generator.pt + index.json into out_dir, returns the index."""
    if real.zca:
        raise ValueError("generators are trained on mean/std-normalised images; load the split with whiten=False")
    spec = real.spec
    gen = torch.Generator().manual_seed(seed)
    if recipe.train_per_class:
        real = real.subset(recipe.train_per_class, gen)
    real = real.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(recipe.nz, spec.num_classes, spec.channels, spec.im_size, recipe.width, spec.mean, spec.std)
        d = (Discriminator if recipe.loss == "ns" else ACDiscriminator)(spec.num_classes, spec.channels,
                                                                          spec.im_size, recipe.width)
    g, d = g.to(device), d.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=recipe.lr, betas=(recipe.beta1, recipe.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=recipe.lr, betas=(recipe.beta1, recipe.beta2))
    fp, ckpt = fingerprint(recipe, spec.name, seed), Path(checkpoint_dir) / "generator.partial"
    history, timer = [], runtime.Timer()
    if ckpt.exists() and (saved := torch.load(ckpt, map_location="cpu", weights_only=False))["fingerprint"] == fp:
        for module, key in ((g, "g"), (d, "d"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(saved[key])
        gen.set_state(saved["gen"])
        history, timer = saved["history"], runtime.Timer(saved["elapsed"])
        print(f"[generators] resumed after epoch {len(history)}", file=sys.stderr)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    runtime.reset_peak_memory(device)
    while len(history) < recipe.epochs:
        with timer:
            history.append(epoch(g, d, opt_g, opt_d, real, recipe, gen))
        runtime.atomic_save({"fingerprint": fp, "g": g.state_dict(), "d": d.state_dict(), "opt_g": opt_g.state_dict(),
               "opt_d": opt_d.state_dict(), "gen": gen.get_state(), "history": history, "elapsed": timer.now()}, ckpt)
        print(f"[generators] {name} epoch {len(history)}/{recipe.epochs}: loss D {history[-1]['d']:.3f}, "
              f"G {history[-1]['g']:.3f}", file=sys.stderr, flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g.eval()
    critic = {"discriminator": {"arch": d.arch, "state_dict": {k: v.cpu() for k, v in d.state_dict().items()}}
              } if recipe.loss == "wgan_gp_ac" else {}
    runtime.atomic_save({"arch": g.arch, "state_dict": {k: v.cpu() for k, v in g.state_dict().items()}, "fingerprint": fp,
                         **critic}, out / "generator.pt")
    index = {"recipe": asdict(recipe), "name": name, "dataset": spec.name, "arch": g.arch, "fingerprint": fp,
             "seed": seed, "num_params": num_params(g), "train_images": len(real), "history": history,
             "wall_time_s": timer.now(), "peak_mem_mb": runtime.peak_memory_mb(device), **provenance.record(device)}
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    ckpt.unlink(missing_ok=True)
    return index


def epoch(g: Generator, d: nn.Module, opt_g, opt_d, real: LabeledImages, recipe: Recipe,
          gen: torch.Generator) -> dict:
    """One pass over `real` in batches: the recipe's D and G steps per batch; the mean losses."""
    g.train(), d.train()
    device, totals, n = real.x.device, {"d": 0.0, "g": 0.0}, 0
    order = torch.randperm(len(real), generator=gen)
    batch = _ns_batch if recipe.loss == "ns" else _ac_batch
    for start in range(0, len(real), recipe.batch_size):
        idx = order[start:start + recipe.batch_size].to(device)
        loss_d, loss_g = batch(g, d, opt_g, opt_d, real.x[idx], real.y[idx], recipe, gen, real.spec.num_classes)
        totals["d"], totals["g"], n = totals["d"] + loss_d * len(idx), totals["g"] + loss_g * len(idx), n + len(idx)
    return {k: v / n for k, v in totals.items()}


def _step(opt, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _ns_batch(g, d, opt_g, opt_d, x, y, recipe: Recipe, gen: torch.Generator, k: int) -> tuple[float, float]:
    """A D step on real and fake, then a G step (non-saturating loss)."""
    fake = g(torch.randn(len(x), recipe.nz, generator=gen).to(x.device), y)
    loss_d = _step(opt_d, F.softplus(-d(x, y)).mean() + F.softplus(d(fake.detach(), y)).mean())
    return loss_d, _step(opt_g, F.softplus(-d(fake, y)).mean())


def _ac_batch(g, d, opt_g, opt_d, x, y, recipe: Recipe, gen: torch.Generator, k: int) -> tuple[float, float]:
    """A G step, then a D step on fresh fakes of random labels (DiM's order)."""
    loss_g = _step(opt_g, ac_generator_loss(d, g(torch.randn(len(x), recipe.nz, generator=gen).to(x.device), y), y))
    y_fake = torch.randint(k, (len(x),), generator=gen).to(x.device)
    with torch.no_grad():
        fake = g(torch.randn(len(x), recipe.nz, generator=gen).to(x.device), y_fake)
    return _step(opt_d, ac_discriminator_loss(d, x, y, fake, y_fake, recipe.gp, gen)), loss_g


def path_of(generator: str, data_root: str | Path, dataset: str) -> Path:
    """A recipe name -> data/<dataset>/generators/<name>/generator.pt; a path ending in .pt is taken as it is."""
    if generator.endswith(".pt"):
        return Path(generator)
    return Path(data_root) / dataset / "generators" / generator / "generator.pt"


def stage(generator: str, dataset: str) -> str:
    return f"generators@{generator}-{dataset}"


def load(generator: str, *, data_root: str | Path, spec, device: torch.device) -> Generator:
    """The frozen generator (eval mode, no gradients to its weights) for a dataset; every failure names the fix."""
    path = path_of(generator, data_root, spec.name)
    if not path.exists():
        fix = ("check the path" if generator.endswith(".pt") else
               f"train it with `dvc repro {stage(generator, spec.name)}` (params.yaml generators.{generator}, "
               "and the recipe in grid.generators)")
        raise FileNotFoundError(f"no generator at {path}; {fix}")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    arch = saved["arch"]
    want = {"num_classes": spec.num_classes, "channels": spec.channels, "im_size": list(spec.im_size)}
    wrong = {k: (arch.get(k), v) for k, v in want.items() if arch.get(k) != v}
    if wrong:
        raise ValueError(f"the generator at {path} does not fit {spec.name}: " +
                         ", ".join(f"{k} is {have!r}, needed {v!r}" for k, (have, v) in wrong.items()))
    g = build(arch)
    g.load_state_dict(saved["state_dict"])
    return g.to(device).eval().requires_grad_(False)


def load_critic(generator: str, *, data_root: str | Path, spec, device: torch.device) -> ACDiscriminator:
    """The auxiliary-classifier critic saved beside a `wgan_gp_ac` generator (call `load` first: it checks the file)."""
    path = path_of(generator, data_root, spec.name)
    saved = torch.load(path, map_location="cpu", weights_only=False).get("discriminator")
    if saved is None:
        raise ValueError(f"the generator at {path} has no auxiliary-classifier critic; DiM needs a recipe with "
                         "loss: wgan_gp_ac (params.yaml generators.acgan)")
    d = ACDiscriminator(**saved["arch"])
    d.load_state_dict(saved["state_dict"])
    return d.to(device)
