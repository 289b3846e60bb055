import pytest

from ddlib import evaluate, methods, params

REPO = params.load("params.yaml")


def test_resolve_merges_profile_over_paper():
    section = {"paper": {"a": 1, "b": {"x": 1, "y": 2}}, "quick": {"b": {"y": 5}}}
    assert params.resolve(section, "quick") == {"a": 1, "b": {"x": 1, "y": 5}}
    assert params.resolve(section, "paper") == {"a": 1, "b": {"x": 1, "y": 2}}
    assert params.resolve(section, "tiny") == {"a": 1, "b": {"x": 1, "y": 2}}


def test_profile_may_not_invent_keys():
    with pytest.raises(ValueError, match=r"overrides \['lr_imgg'\]"):
        params.resolve({"paper": {"lr_img": 1}, "quick": {"lr_imgg": 2}}, "quick")
    with pytest.raises(ValueError, match="unknown profile"):
        params.resolve({"paper": {}}, "fast")


@pytest.mark.parametrize("profile", params.PROFILES)
def test_every_method_section_makes_a_valid_config(profile):
    assert set(REPO["grid"]["methods"]) <= set(methods.available())
    for method in REPO["methods"]:
        methods.make_config(method, params.method_params(REPO, method, profile))
    assert isinstance(evaluate.protocol(REPO, profile), evaluate.Protocol)


def test_paper_profile_holds_the_official_values():
    dm = params.method_params(REPO, "dm", "paper")
    assert (dm["iterations"], dm["lr_img"], dm["batch_real"], dm["init"]) == (20000, 1.0, 256, "real")
    dc = methods.make_config("dc", params.method_params(REPO, "dc", "paper"))
    assert dc.loops_for(10) == (10, 50) and dc.loops_for(1) == (1, 1) and dc.init == "noise"
    dsa = methods.make_config("dsa", params.method_params(REPO, "dsa", "paper"))
    assert dsa.dsa and dsa.init == "real" and dsa.lr_img == 0.1
    proto = evaluate.protocol(REPO, "paper")
    assert (proto.train_epochs, proto.lr, proto.batch_size, proto.num_seeds) == (1000, 0.01, 256, 5)
