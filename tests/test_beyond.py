"""Methods after the survey (issue 12): DataDAM's attention maps and loss against hand computations."""

import pytest
import torch

from ddlib import grid, loop, methods, nets
from ddlib.methods import datadam, dm


def test_attention_is_the_unit_channel_sum_of_powers():
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])            # (1, C=2, H=1, W=2)
    # p = 1: |1| + |3| = 4, |-2| + |0| = 2 -> (4, 2) / sqrt(20)
    assert torch.allclose(datadam.attention(f, 1.0), torch.tensor([[4.0, 2.0]]) / 20 ** 0.5)
    # p = 2: 1 + 9 = 10, 4 + 0 = 4 -> (10, 4) / sqrt(116)
    assert torch.allclose(datadam.attention(f, 2.0), torch.tensor([[10.0, 4.0]]) / 116 ** 0.5)


def test_attention_layers_are_every_block_but_the_last():
    net = nets.make_net("convnet_w8", 1, 10, (28, 28), seed=0)
    x = torch.randn(3, 1, 28, 28)
    maps, emb = datadam.attention_and_embedding(net, x, 1.0)
    assert [m.shape for m in maps] == [(3, 32 * 32), (3, 16 * 16)]   # blocks 1 and 2 of 3, before their pooling
    assert torch.allclose(emb, net.embed(x))
    assert torch.allclose(maps[0].norm(dim=1), torch.ones(3))
    first = net.features[2](net.features[1](net.features[0](x)))       # conv -> norm -> ReLU of block 1
    assert torch.allclose(maps[0], datadam.attention(first, 1.0))


def test_matching_loss_by_hand():
    cfg = datadam.Config(task_balance=0.5, scale=10.0)
    k = 2
    real = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0], [4.0]])]      # (k, d): attention, embedding
    syn = [torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]),                # two per class
           torch.tensor([[1.0], [3.0], [4.0], [6.0]])]
    # attention: class 0 mean (1, 0) vs (1, 0) -> 0; class 1 mean (0, 1) vs (0, 1) -> 0
    # embedding: class 0 mean 2 vs 2 -> 0; class 1 mean 5 vs 4 -> 1; loss = 10 * (0 + 0.5 * 1) = 5
    assert datadam.matching_loss(real, syn, k, cfg).item() == pytest.approx(5.0)
    syn[0][0, 0] = 3.0                                  # class 0 attention mean (2, 0): + (1)^2
    assert datadam.matching_loss(real, syn, k, cfg).item() == pytest.approx(15.0)


def test_embedding_term_alone_is_dm(tiny_train):
    """With no attention layers counted (task_balance 1, scale 1, a one-block net) DataDAM's loss is DM's."""
    cfg = datadam.Config(model="convnet_d1_w8", task_balance=1.0, scale=1.0, batch_real=3)
    state = loop.init_state(tiny_train, 2, init="real", lr_img=1.0, momentum=0.5,
                            gen=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    ours = datadam.loss(state.x_syn, torch.Generator().manual_seed(5), tiny_train, cfg)
    theirs = dm.loss(state.x_syn, torch.Generator().manual_seed(5), tiny_train,
                     dm.Config(model="convnet_d1_w8", batch_real=3))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_datadam_moves_the_images_and_rejects_bad_config(tiny_train):
    syn = methods.distill("datadam", tiny_train, ipc=1, params={"iterations": 2, "batch_real": 3,
                                                               "model": "convnet_w8"}, seed=0)
    assert syn.images.shape == (10, 1, 28, 28) and syn.provenance["iterations"] == 2
    init = methods.distill("datadam", tiny_train, ipc=1, params={"iterations": 0, "model": "convnet_w8"}, seed=0)
    assert not torch.equal(syn.images, init.images)
    with pytest.raises(ValueError, match="invalid DataDAM config"):
        datadam.Config(power=0)


# ---------------------------------------------------------------- teachers, the soft-label track, RDED
import math  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from ddlib import kd, report, teachers  # noqa: E402
from ddlib.methods import rded  # noqa: E402


def _recipe(**kw):
    return teachers.Recipe(**{"model": "convnet_w8_bn", "epochs": 2, "lr": 0.01, "batch_size": 8, **kw})


def test_teacher_trains_resumes_and_loads(tiny_train, tiny_test, tmp_path):
    out, ckpt = tmp_path / "data" / "fashion_mnist" / "teachers" / "t", tmp_path / "ckpt"
    full = teachers.train(tiny_train, tiny_test, _recipe(), out, name="t", device=torch.device("cpu"), seed=0,
                          checkpoint_dir=ckpt)
    assert len(full["test_acc"]) == 2 and full["train_images"] == len(tiny_train)
    first = torch.load(out / "teacher.pt", weights_only=True)["state_dict"]
    # a run killed after epoch 1: the partial checkpoint of a one-epoch run, then the two-epoch recipe resumes it
    one = teachers.train(tiny_train, tiny_test, _recipe(epochs=1), tmp_path / "one", name="t",
                         device=torch.device("cpu"), seed=0, checkpoint_dir=ckpt)
    partial = ckpt / "teacher-t-fashion_mnist.partial"
    blob = torch.load(tmp_path / "one" / "teacher.pt", weights_only=True)
    torch.save({"state_dict": blob["state_dict"], "gen": torch.Generator().manual_seed(0).get_state(),
                "record": {"train_loss": [0.0], "test_acc": one["test_acc"]},
                "fingerprint": teachers.fingerprint(_recipe(), "fashion_mnist", 0)}, partial)
    resumed = teachers.train(tiny_train, tiny_test, _recipe(), tmp_path / "resumed", name="t",
                             device=torch.device("cpu"), seed=0, checkpoint_dir=ckpt)
    assert len(resumed["test_acc"]) == 2 and not partial.exists()
    net = teachers.load("t", data_root=tmp_path / "data", spec=tiny_train.spec, device=torch.device("cpu"))
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), first.values()))


def test_missing_or_foreign_teacher_names_the_fix(tiny_train, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro teachers@standard-fashion_mnist"):
        teachers.load("standard", data_root=tmp_path, spec=tiny_train.spec, device=torch.device("cpu"))
    path = teachers.path_of("standard", tmp_path, "fashion_mnist")
    path.parent.mkdir(parents=True)
    net = torch.nn.Linear(1, 1)
    torch.save({"state_dict": net.state_dict(), "arch": {"model": "mlp", "channels": 1, "num_classes": 10,
                                                          "im_size": [28, 28], "dataset": "mnist"}}, path)
    with pytest.raises(ValueError, match="trained on mnist, not fashion_mnist"):
        teachers.load("standard", data_root=tmp_path, spec=tiny_train.spec, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="invalid teacher recipe"):
        _recipe(epochs=0)


def test_kd_loss_is_t_squared_kl_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])       # teacher p = (3/4, 1/4) at T = 1
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd.kd_loss(s, t, 1.0).item() == pytest.approx(kl, rel=1e-6)
    t2 = t * 2                                                                     # at T = 2 the same p, times 4
    assert kd.kd_loss(s, t2, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    assert kd.kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_random_resized_crop_and_paste_box():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    gen = torch.Generator().manual_seed(0)
    assert torch.allclose(kd.random_resized_crop(x, gen, (1.0, 1.0), flip=False), x, atol=1e-4)   # scale 1: whole image
    flipped = [kd.random_resized_crop(x, torch.Generator().manual_seed(s), (1.0, 1.0)) for s in range(8)]
    mirrored = [[torch.allclose(f[i], x[i].flip(-1), atol=1e-4) for i in range(2)] for f in flipped]
    assert any(any(m) for m in mirrored) and not all(all(m) for m in mirrored)      # each image flips by its own coin
    assert all(m or torch.allclose(f[i], x[i], atol=1e-4) for f, ms in zip(flipped, mirrored) for i, m in enumerate(ms))
    crop = kd.random_resized_crop(x, gen, (0.25, 0.25), ratio=(1.0, 1.0), flip=False)   # a half-side box, upsampled
    assert crop.shape == x.shape and not torch.allclose(crop, x)
    mixed = kd.paste_box(x, torch.Generator().manual_seed(1))
    changed = (mixed != x).any(1)                                                  # (2, 16, 16) pasted pixels
    rows, cols = changed.any(0).nonzero(as_tuple=True)
    assert changed.sum() == 0 or (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) * 2 >= changed.sum()


def test_kd_protocol_batches_and_validation():
    p = kd.Protocol()
    assert (p.batch_for(1, 10), p.batch_for(10, 10), p.batch_for(50, 100), p.batch_for(20, 10)) == (10, 50, 200, 50)
    with pytest.raises(ValueError, match="rrc_min"):
        kd.Protocol(rrc_min=0)


def test_soft_label_evaluation_runs_and_is_seeded(tiny_train, tiny_test, tiny_buffers):
    teacher = teachers.load("standard", data_root=tiny_buffers, spec=tiny_train.spec, device=torch.device("cpu"))
    syn = methods.distill("random", tiny_train, ipc=1, seed=0)
    p = kd.Protocol(student="convnet_w8_bn", epochs=2, num_seeds=2, test_subset=2)
    a = kd.evaluate(syn, tiny_test, p, teacher, device="cpu", seed=0)
    assert a["track"] == "soft" and len(a["accs"]) == 2 and a["protocol"]["batch"] == 10
    assert kd.evaluate(syn, tiny_test, p, teacher, device="cpu", seed=0)["accs"] == a["accs"]


def test_relabelling_gives_the_teachers_outputs_on_the_students_own_views(tiny_train):
    """Each soft label is the teacher's output for exactly the augmented (crop, flip, CutMix) batch the student sees:
    every teacher call is recorded and matched against the student's own input of that step."""
    teacher = nets.make_net("convnet_w8", 1, 10, (28, 28), seed=3).eval()
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append((x.clone(), self.net(x).detach()))
            return self.net(x)

    x = tiny_train.x[:6]
    p = kd.Protocol(epochs=3, rrc_min=0.3, cutmix_p=0.5)
    other = nets.make_net("convnet_w8", 1, 10, (28, 28), seed=4)
    student_views = []
    other.register_forward_pre_hook(lambda m, a: student_views.append(a[0].clone()))
    kd.train_student(other, Spy(teacher), x, p, batch_size=4, flip=True, gen=torch.Generator().manual_seed(0))
    assert len(student_views) == len(seen) == 3 * 2                 # two batches an epoch, each augmented
    assert not any(torch.equal(v, x[:len(v)]) or torch.equal(v, x[4:]) for v in student_views)
    for (view, target), mine in zip(seen, student_views):
        assert torch.equal(view, mine) and torch.allclose(target, teacher(mine), atol=1e-6)
    student_views.clear()                                            # augment=False (ARS's "no aug"): the images as
    kd.train_student(other, Spy(teacher), x, kd.Protocol(epochs=2, augment=False), batch_size=4, flip=True,
                     gen=torch.Generator().manual_seed(0))              # they are, each epoch all of them once
    assert [len(v) for v in student_views] == [4, 2, 4, 2]
    for e in (0, 2):
        both = torch.cat(student_views[e:e + 2])
        assert sorted(any(torch.equal(img, xi) for img in both) for xi in x) == [True] * 6


def test_rded_selection_and_tiling_by_hand():
    scores = torch.tensor([[3.0, 1.0], [0.5, 2.0], [4.0, 5.0]])                    # (images, crops)
    assert rded.select(scores, 2).tolist() == [[1, 0], [0, 1]]                     # best crop of each, best images
    patches = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)               # constant 2x2 patches 0..3
    tiled = rded.tile(patches, 2)
    assert tiled.shape == (1, 1, 2, 2) and tiled[0, 0].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert torch.equal(rded.tile(patches, 1), patches)
    observer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    crops = torch.randn(5, 1, 2, 2)
    expected = F.cross_entropy(observer(crops), torch.full((5,), 2), reduction="none")
    assert torch.allclose(rded.crop_scores(observer, crops, 2, batch=2), expected, atol=1e-6)


def test_rded_picks_observer_typical_crops_and_needs_a_teacher(tiny_train, tiny_buffers, tmp_path):
    syn = methods.distill("rded", tiny_train, ipc=2, params={"candidates": 4, "num_crop": 2}, seed=0,
                          data_root=tiny_buffers)
    assert syn.images.shape == (20, 1, 28, 28) and syn.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert math.isfinite(syn.provenance["mean_selected_score"])
    with pytest.raises(FileNotFoundError, match="dvc repro teachers@standard-fashion_mnist"):
        methods.distill("rded", tiny_train, ipc=1, seed=0, data_root=tmp_path)


def test_label_robust_score_by_hand():
    s = report.label_robust_score(90.0, 60.0, 70.0, 50.0)
    alpha = (0.5 * 20 - 0.5 * 30) / 100
    assert (s["hlr"], s["ior"]) == (30.0, 20.0)
    assert s["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert report.label_robust_score(100.0, 100.0, 100.0, 0.0)["lrs"] == pytest.approx(
        (math.exp(0.5) - math.exp(-1)) / (math.e - math.exp(-1)))


def test_report_keeps_the_soft_track_apart_and_scores_label_robustness(tmp_path):
    import json
    from ddlib import results
    from tests.test_report import _distill, _eval, _synset, _table_rows
    root = tmp_path / "results"
    for m, a, b, bare in (("random", 50.0, 68.0, 60.0), ("rded", 52.0, 72.0, 66.0), ("dm", 68.0, None, None)):
        _distill(root, m, "fashion_mnist", 1, 1.0, 1.0)
        _eval(root, m, "fashion_mnist", 1, a, 1.0)
        if b is not None:   # the soft-label track, with its own "no aug" students (ARS under the soft labels)
            results.write_eval({"method": m, "dataset": "fashion_mnist", "ipc": 1, "track": "soft", "accs": [b - 1, b + 1],
                                "mean": b, "std": 1.0, "seeds": [0, 1], "protocol": {"student": "convnet_bn", "teacher": "standard"},
                                "synset_sha256": _synset(m, "fashion_mnist", 1).content_hash(),
                                "noaug": {"accs": [bare], "mean": bare, "std": 0.0}},
                               root / "kd" / results.key(m, "fashion_mnist", 1) / "kd.json", profile="quick")
    for m, acc in (("random", 40.0), ("dm", 60.0), ("rded", 10.0)):   # the classic protocol without augmentation
        f = root / "eval" / results.key(m, "fashion_mnist", 1) / "eval.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "noaug": {"accs": [acc], "mean": acc, "std": 0.0}}))
    (root / "teachers").mkdir()
    for name, accs in (("standard", [70.0, 80.0]), ("convnet_d1", [60.0, 90.0])):   # the second sorts first: not the
        (root / "teachers" / f"{name}-fashion_mnist.json").write_text(json.dumps({     # track's teacher, not its HLR
            "name": name, "dataset": "fashion_mnist", "test_acc": accs, "train_images": 100, "test_images": 20,
            "wall_time_s": 3.0, "profile": "quick", "recipe": {"model": "convnet_bn", "epochs": 2, "lr": 0.01,
                                                               "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
                                                               "augment": "crop_flip"}}))
    grid = {"datasets": ["fashion_mnist"], "methods": ["random", "dm", "rded"], "ipcs": [1],
            "teachers": ["standard", "convnet_d1"], "kd": ["random", "rded"], "xarch": ["dm"]}
    report.write_reports(root, tmp_path / "reports", grid=grid, stale={})
    page = (tmp_path / "reports" / "fashion_mnist.md").read_text()
    header, rows = _table_rows(page, "| method | IPC 1 | IPC 1 IOR")
    assert rows == {"random": ["68.0 ± 1.0", "-"], "rded": ["72.0 ± 1.0", "+4.0"]}
    header, rows = _table_rows(page, "| method | IPC 1 HLR")
    # dm: own = classic: HLR 80 - 68 = 12, IOR 68 - 50 = 18; rded: own = soft: HLR 80 - 52 = 28, IOR 72 - 68 = 4
    assert rows["dm"][:2] == ["12.0", "+18.0"] and rows["rded"][:2] == ["28.0", "+4.0"]
    assert rows["rded"][2] == f"{report.label_robust_score(80, 52, 72, 68)['lrs']:.3f}"
    # ARS: beta = (0.5 (68 - 50) + 0.5 (60 - 40)) / 100 = 0.19 -> (e^0.19 - e^-1) / (e - e^-1); random: beta 0
    assert rows["dm"][3:] == ["60.0", "0.358"] and rows["random"][3:] == ["40.0", "0.269"]
    # rded under its own (soft-label) track, as its IOR: beta = (0.5 (72 - 68) + 0.5 (66 - 60)) / 100 = 0.05; its
    # classic no-aug run (10.0) does not enter
    assert rows["rded"][3:] == ["66.0", f"{report.augmentation_robust_score(72, 68, 66, 60)['ars']:.3f}"]
    assert report.augmentation_robust_score(72, 68, 66, 60)["beta"] == pytest.approx(0.05)
    assert report.augmentation_robust_score(68, 50, 60, 40)["ars"] == pytest.approx(
        (math.exp(0.19) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert "`standard` (quick profile): convnet_bn, 2 epochs" in page and "70.0, 80.0" in page
    _, main = _table_rows(page, "| method | IPC 1 |")
    assert main["rded"][0].startswith("52.0") and "72.0" not in main["rded"][0]   # never in the classic table
    costs = (tmp_path / "reports" / "costs" / "fashion_mnist.md").read_text()    # track B beside its sets' cost
    _, soft = _table_rows(costs, "| method | IPC 1 distill (s) | IPC 1 kd eval (s)")
    assert soft["rded"][2] == "72.0 ± 1.0" and soft["random"][2] == "68.0 ± 1.0" and "dm" not in soft
    assert "`standard` 3 s" in costs and (tmp_path / "reports" / "costs" / "fashion_mnist_soft_acc_vs_cost.png").exists()


def test_check_grid_names_a_teacher_outside_the_grid():
    from ddlib import params
    import copy
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    bad = copy.deepcopy(params.load(root / "params.yaml"))
    bad["grid"]["teachers"] = ["other"]
    bad["teachers"]["other"] = bad["teachers"]["standard"]
    with pytest.raises(ValueError, match="kd.teacher: 'standard' is not in grid.teachers"):
        grid.check(bad, root)


# ---------------------------------------------------------------- SRe2L: recover by BN-statistic matching
from ddlib.methods import sre2l  # noqa: E402


def test_bn_statistics_loss_by_hand():
    bn = torch.nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0]))
    h = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]], [[[2.0, 4.0]], [[1.0, 1.0]]]])   # (N=2, C=2, 1, 2)
    # channel 0: values 0, 2, 2, 4 -> mean 2, biased var (4 + 0 + 0 + 4) / 4 = 2; channel 1: all 1 -> mean 1, var 0
    # ||(2, 0) - (1, 4)|| = sqrt(1 + 16), ||(2, 1) - (1, 0)|| = sqrt(2)
    assert sre2l.bn_statistics_loss(h, bn).item() == pytest.approx(17 ** 0.5 + 2 ** 0.5)


def test_recover_groups_are_one_image_per_class_per_ipc_index():
    assert [g.tolist() for g in sre2l.groups(3, 2, 2)] == [[0, 2], [4], [1, 3], [5]]   # class-major: c * ipc + i
    assert [g.tolist() for g in sre2l.groups(2, 1, 100)] == [[0, 1]]


def test_recover_loss_is_the_sum_of_each_groups_own_loss():
    """The groups share one eval-mode forward; the total must equal SRe2L's per-batch loss summed over batches."""
    torch.manual_seed(0)
    teacher = nets.make_net("convnet_w8_bn", 1, 3, (28, 28), seed=0)
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(16, 1, 28, 28) * 2 + 1)         # running statistics away from (0, 1)
    teacher.eval()
    x, y = torch.randn(6, 1, 28, 28), torch.arange(3).repeat_interleave(2)
    cfg = sre2l.Config(r_bn=0.5, first_bn_multiplier=3.0, group=2)
    batches = sre2l.groups(3, 2, 2)
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    expected = 0.0
    for idx in batches:
        inputs = []
        hooks = [m.register_forward_hook(lambda _m, a, _o: inputs.append(a[0])) for m in bns]
        logits = teacher(x[idx])
        for hk in hooks:
            hk.remove()
        stats = sum(w * sre2l.bn_statistics_loss(h, bn) for w, h, bn in zip([3.0, 1.0, 1.0], inputs, bns))
        expected += F.cross_entropy(logits, y[idx]).item() + 0.5 * stats.item()
    assert sre2l.recover_loss(teacher, x, y, batches, cfg).item() == pytest.approx(expected, rel=1e-5)
    assert not any(m._forward_hooks for m in bns)                 # the hooks are gone afterwards


def test_sre2l_recovers_lowers_its_loss_and_stays_in_pixel_range(tiny_train, tiny_buffers, tmp_path, monkeypatch):
    syn = methods.distill("sre2l", tiny_train, ipc=2, params={"iterations": 15}, seed=0, data_root=tiny_buffers)
    assert syn.images.shape == (20, 1, 28, 28) and syn.labels.tolist() == [c for c in range(10) for _ in range(2)]
    losses = [v for _, v in syn.provenance["loss_history"]]
    assert losses[-1] < losses[0]
    lo, hi = -tiny_train.spec.mean[0] / tiny_train.spec.std[0], (1 - tiny_train.spec.mean[0]) / tiny_train.spec.std[0]
    assert syn.images.min() >= lo - 1e-6 and syn.images.max() <= hi + 1e-6
    with pytest.raises(FileNotFoundError, match="dvc repro teachers@standard-fashion_mnist"):
        methods.distill("sre2l", tiny_train, ipc=1, seed=0, data_root=tmp_path)
    monkeypatch.setattr(sre2l.teachers, "load", lambda *a, **k: nets.make_net("convnet_w8", 1, 10, (28, 28), seed=0))
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        methods.distill("sre2l", tiny_train, ipc=1, params={"iterations": 1}, seed=0, data_root=tiny_buffers)
    with pytest.raises(ValueError, match="invalid SRe2L config"):
        sre2l.Config(group=0)


# ---------------------------------------------------------------- EDC: G-VBSM's statistics, category-aware and smoothed
from ddlib import feature_stats  # noqa: E402
from ddlib.data import LabeledImages  # noqa: E402
from ddlib.methods import edc  # noqa: E402


def test_cells_and_group_statistics_by_hand():
    h = torch.arange(64.0).view(1, 1, 8, 8)
    c = feature_stats.cells(h)                                   # four 4x4 cells, row-major
    assert c.shape == (1, 4, 16) and c[0, 0].tolist() == [r * 8 + k for r in range(4) for k in range(4)]
    st = feature_stats.batch_stats(h, patches=True)
    # a cell: columns 0..3 (var 1.25) plus rows 0, 8, 16, 24 (var 64 * 1.25) -> 81.25; means 13.5 + {0, 4, 32, 36}
    assert st["pmean"].tolist() == [13.5, 17.5, 45.5, 49.5] and st["pvar"].tolist() == [81.25] * 4
    assert st["mean"].item() == 31.5 and "pmean" not in feature_stats.batch_stats(h, patches=False)
    assert feature_stats.cells(torch.randn(2, 3, 6, 6)).shape == (2, 4, 48)      # resized up to 8 x 8 first


def test_collect_gives_global_and_class_statistics_by_hand(tiny_train):
    """Images a + b * checkerboard: each has mean a and variance b^2; the BN layer sees twice the image."""
    board = (torch.arange(4).view(4, 1) + torch.arange(4)) % 2 * 2 - 1.0
    ab = [(0.0, 1.0, 0), (2.0, 1.0, 0), (1.0, 2.0, 1), (3.0, 0.0, 1)]
    x = torch.stack([(a + b * board)[None] for a, b, _ in ab])
    real = LabeledImages(x, torch.tensor([c for *_, c in ab]), tiny_train.spec)
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    net = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(1)).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
    first, second = feature_stats.collect(net, real, batch=4)["layers"]
    assert (first["name"], first["kind"], second["kind"]) == ("0", "conv", "bn")
    # all four: mean 1.5, var = mean(a^2 + b^2) - 1.5^2 = 20 / 4 - 2.25; one 4x4 cell = the whole image here
    assert first["global"]["mean"].item() == pytest.approx(1.5) and first["global"]["var"].item() == pytest.approx(2.75)
    assert first["global"]["pmean"].tolist() == pytest.approx([1.5])
    assert first["class"]["mean"][:3, 0].tolist() == [1.0, 2.0, 0.0]             # class 2 has no image
    assert first["class"]["var"][:2, 0].tolist() == [1.0, 2.0]                   # (1 + 1) / 2, (4 + 0) / 2
    assert second["class"]["mean"][:2, 0].tolist() == [2.0, 4.0] and second["class"]["var"][:2, 0].tolist() == [4.0, 8.0]
    assert set(second["class"]) == {"mean", "var"}


def test_smoothed_statistic_has_the_running_value_and_the_current_gradient():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    s_hat, e = edc.smooth(3 * w, torch.tensor([10.0, 0.0]), 0.8)
    assert s_hat.tolist() == pytest.approx([8.6, 1.2]) and e.tolist() == pytest.approx([8.6, 1.2])   # 0.8 e + 0.2 (3, 6)
    s_hat.sum().backward()
    assert w.grad.tolist() == [3.0, 3.0]
    first, e0 = edc.smooth(3 * w, None, 0.8)
    assert first.tolist() == [3.0, 6.0] and e0.tolist() == [3.0, 6.0]


def test_edc_layer_loss_by_hand():
    s = [torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])]
    g = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])]
    c = [torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])]
    assert edc.layer_loss(s, g, c).item() == pytest.approx(0.5 * (5 + 0 + 0 + 1))


def test_edc_recovers_from_a_pool_resumes_and_names_missing_statistics(tiny_train, tiny_buffers, tmp_path, monkeypatch):
    from tests.test_generative import killed_at
    p = {"iterations": 5, "checkpoint_every": 1}
    whole = methods.distill("edc", tiny_train, ipc=2, params=p, seed=0, data_root=tiny_buffers)
    assert whole.images.shape == (20, 1, 28, 28) and whole.labels.tolist() == [c for c in range(10) for _ in range(2)]
    lo, hi = -tiny_train.spec.mean[0] / tiny_train.spec.std[0], (1 - tiny_train.spec.mean[0]) / tiny_train.spec.std[0]
    assert whole.images.min() >= lo - 1e-6 and whole.images.max() <= hi + 1e-6
    used = []
    real_loss = edc.recover_loss
    monkeypatch.setattr(edc, "recover_loss", lambda t, *a: used.append(t.net) or real_loss(t, *a))
    methods.distill("edc", tiny_train, ipc=2, params=p, seed=0, data_root=tiny_buffers)
    assert used[0] is not used[1] and used[0] is not used[2] and used[3] is used[0]   # three teachers in turn
    monkeypatch.setattr(edc, "recover_loss", real_loss)
    ck = tmp_path / "edc.pt"
    with killed_at(monkeypatch, edc, "recover_loss", 4):      # the smoothing states must travel in the checkpoint
        methods.distill("edc", tiny_train, ipc=2, params=p, seed=0, data_root=tiny_buffers, checkpoint=ck)
    resumed = methods.distill("edc", tiny_train, ipc=2, params=p, seed=0, data_root=tiny_buffers, checkpoint=ck)
    assert resumed.provenance["resumed_from"] == 3 and resumed.content_hash() == whole.content_hash()
    (tiny_buffers / "fashion_mnist" / "teachers" / "convnet_w32" / "statistics.pt").rename(tmp_path / "moved.pt")
    try:
        with pytest.raises(FileNotFoundError, match="dvc repro teachers@convnet_w32-fashion_mnist"):
            methods.distill("edc", tiny_train, ipc=1, params=p, seed=0, data_root=tiny_buffers)
    finally:
        (tmp_path / "moved.pt").rename(tiny_buffers / "fashion_mnist" / "teachers" / "convnet_w32" / "statistics.pt")
    with pytest.raises(ValueError, match="invalid EDC config"):
        edc.Config(teachers=())


# ---------------------------------------------------------------- M3D: kernel MMD in place of DM's means
from ddlib.methods import m3d  # noqa: E402


def test_gaussian_mmd_by_hand():
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]])
    # sigma^2 = 1: k(0,2) = e^-2, k(0,1) = k(2,1) = e^-0.5; MMD^2 = (2 + 2 e^-2) / 4 + 1 - 2 e^-0.5
    expected = (2 + 2 * math.exp(-2)) / 4 + 1 - 2 * math.exp(-0.5)
    assert m3d.gaussian_mmd2(a, b, 1.0).item() == pytest.approx(expected)
    assert m3d.gaussian_mmd2(a, a, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    # distances among [0, 2, 1]: squared 4, 1, 1 -> median 1, halved
    assert m3d.median_bandwidth(a, b).item() == pytest.approx(0.5)


def test_m3d_tends_to_dm_as_the_bandwidth_grows():
    torch.manual_seed(0)
    real, syn = torch.randn(2, 6, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    dm_loss = dm.mean_embedding_distance(real, syn).item()
    assert m3d.class_mmd(real, syn, 1e6).item() == pytest.approx(dm_loss, rel=1e-4)
    assert abs(m3d.class_mmd(real, syn, 1.0).item() - dm_loss) > 0.1 * dm_loss     # a real kernel differs


def test_m3d_moves_the_images_and_rejects_bad_config(tiny_train):
    syn = methods.distill("m3d", tiny_train, ipc=2, params={"iterations": 2, "batch_real": 3, "model": "convnet_w8"},
                          seed=0)
    init = methods.distill("m3d", tiny_train, ipc=2, params={"iterations": 0, "model": "convnet_w8"}, seed=0)
    assert syn.images.shape == (20, 1, 28, 28) and not torch.equal(syn.images, init.images)
    with pytest.raises(ValueError, match="invalid M3D config"):
        m3d.Config(bandwidth=0)


# ---------------------------------------------------------------- IDM: DM on decoded tiles, pool nets, CE term
from ddlib import multiformation, pools  # noqa: E402
from ddlib.methods import idm  # noqa: E402


def test_idm_objective_by_hand():
    emb_real = torch.tensor([[[1.0, 0.0], [3.0, 2.0]], [[0.0, 0.0], [0.0, 2.0]]])   # class means (2, 1), (0, 1)
    emb_syn = torch.tensor([[[2.0, 1.0]], [[1.0, 1.0]]])                               # distances 0 and 1
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]]])  # CE: log 2 (class 0), -log(3/4) (class 1)
    expected = 1.0 + 0.5 * 40.0 * (math.log(2.0) - math.log(0.75))
    assert idm.objective(emb_real, emb_syn, logits, 40.0, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert idm.objective(emb_real, emb_syn, logits, 0.0, 0.5).item() == pytest.approx(1.0)


def test_idm_decodes_each_class_into_its_own_tiles(tiny_train):
    x = torch.randn(6, 1, 28, 28)                                   # 3 classes x 2 stored images
    out = idm.class_major_decode(x, 3, 2)
    assert out.shape == (24, 1, 28, 28)
    for c in range(3):
        assert torch.equal(out[8 * c:8 * (c + 1)], multiformation.decode(x[2 * c:2 * (c + 1)], 2))
    # the real init puts 4 downsampled real images of the class in the 4 tiles
    x_syn = torch.zeros(20, 1, 28, 28)
    multiformation.real_tiles(x_syn, tiny_train, 2, torch.Generator().manual_seed(0))
    tiles = multiformation.decode(x_syn, 2)
    assert all((t != 0).any() for t in tiles) and not torch.equal(x_syn[0, :, :14, :14], x_syn[0, :, 14:, :14])


def test_idm_pool_net_is_an_expert_snapshot(tiny_train, tiny_buffers):
    cfg = idm.Config(max_epoch=2, batch_real=3)
    pool = pools.load(tiny_train, buffer="plain", model="convnet", data_root=tiny_buffers, epoch=2)
    gen = torch.Generator().manual_seed(0)
    net = idm.pool_net(pool, tiny_train, cfg, gen, torch.device("cpu"))
    flat = torch.nn.utils.parameters_to_vector(net.parameters())
    assert any(torch.equal(flat, pool.at(0, e)[0]) for e in range(3)) and not any(p.requires_grad for p in net.parameters())


def test_idm_distils_decoded_tiles_and_names_missing_experts(tiny_train, tiny_buffers, tmp_path):
    p = {"iterations": 3, "batch_real": 3, "max_epoch": 2}
    syn = methods.distill("idm", tiny_train, ipc=1, params=p, seed=0, data_root=tiny_buffers)
    init = methods.distill("idm", tiny_train, ipc=1, params={**p, "iterations": 0}, seed=0, data_root=tiny_buffers)
    assert syn.images.shape == (40, 1, 28, 28) and sorted(syn.labels.tolist()) == [c for c in range(10) for _ in range(4)]
    assert syn.provenance["storage"]["stored_images"] == 10 and syn.provenance["storage"]["decoded_images"] == 40
    assert not torch.equal(syn.images, init.images)
    assert all(math.isfinite(v) for _, v in syn.provenance["loss_history"])
    with pytest.raises(ValueError, match="train longer experts"):
        methods.distill("idm", tiny_train, ipc=1, params={**p, "max_epoch": 99}, seed=0, data_root=tiny_buffers)
    with pytest.raises(FileNotFoundError, match="dvc repro buffers@plain-fashion_mnist"):
        methods.distill("idm", tiny_train, ipc=1, params=p, seed=0, data_root=tmp_path)
    with pytest.raises(ValueError, match="invalid IDM config"):
        idm.Config(ce_weight=-1.0)


# ---------------------------------------------------------------- NCFM: characteristic-function matching
from ddlib.methods import ncfm  # noqa: E402


def test_cf_loss_by_hand():
    t = torch.tensor([[1.0], [2.0]])
    real, syn = torch.tensor([[0.0], [math.pi / 2]]), torch.tensor([[0.0]])
    # Phi_T(1) = (1 + i) / 2, Phi_T(2) = (1 - 1) / 2 = 0; Phi_S = 1 at both frequencies
    amp_r, amp_s = [math.sqrt(0.5), 0.0], [1.0, 1.0]
    phase = [2 * (amp_r[0] - 0.5), 1e-12]          # |T||S| - Re T Re S - Im T Im S; the second clamped
    expected = sum(math.sqrt(0.5 * (a - b) ** 2 + 0.5 * p) for a, b, p in zip(amp_r, amp_s, phase)) / 2
    assert ncfm.cf_loss(real, syn, t, 0.5, 0.5).item() == pytest.approx(expected, rel=1e-5)
    assert ncfm.cf_loss(real, real, t, 0.5, 0.5).item() == pytest.approx(math.sqrt(0.5e-12), abs=1e-6)
    re, im = ncfm.characteristic(t, real)
    assert re.tolist() == pytest.approx([0.5, 0.0], abs=1e-6) and im.tolist() == pytest.approx([0.5, 0.0], abs=1e-6)


def test_ncfm_feature_net_interpolates_one_experts_ends(tiny_train, tiny_buffers):
    cfg = ncfm.Config(batch_real=3)
    pool = pools.load(tiny_train, buffer="plain", model="convnet", data_root=tiny_buffers)
    net, trained = ncfm.feature_nets(pool, tiny_train, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    w0, w1 = pool.at(0, 0, -1)
    flat = torch.nn.utils.parameters_to_vector(net.parameters())
    assert torch.equal(torch.nn.utils.parameters_to_vector(trained.parameters()), w1)
    lam = ((flat - w1) @ (w0 - w1) / (w0 - w1).pow(2).sum()).item()       # flat = lam w0 + (1 - lam) w1
    assert 0.0 <= lam <= 1.0 and torch.allclose(flat, lam * w0 + (1 - lam) * w1, atol=1e-5)


def test_ncfm_distils_decoded_tiles_and_names_missing_experts(tiny_train, tiny_buffers, tmp_path):
    p = {"iterations": 3, "batch_real": 3, "num_freqs": 16}
    syn = methods.distill("ncfm", tiny_train, ipc=1, params=p, seed=0, data_root=tiny_buffers)
    init = methods.distill("ncfm", tiny_train, ipc=1, params={**p, "iterations": 0}, seed=0, data_root=tiny_buffers)
    assert syn.images.shape == (40, 1, 28, 28) and syn.provenance["storage"]["decoded_images"] == 40
    assert not torch.equal(syn.images, init.images)
    assert all(math.isfinite(v) for _, v in syn.provenance["loss_history"])
    with pytest.raises(FileNotFoundError, match="dvc repro buffers@plain-fashion_mnist"):
        methods.distill("ncfm", tiny_train, ipc=1, params=p, seed=0, data_root=tmp_path)
    with pytest.raises(ValueError, match="invalid NCFM config"):
        ncfm.Config(num_freqs=0)
