"""`make repro`'s preview: which stages will run and how long they took last time."""

from ddlib import plan

NODES = ["code", "prepare@f", "distill@dm-f-1", "distill@dc-f-1", "evaluate@dm-f-1", "evaluate@dc-f-1", "report"]
EDGES = [("code", "prepare@f"), ("code", "distill@dm-f-1"), ("code", "distill@dc-f-1"), ("prepare@f", "distill@dm-f-1"),
         ("prepare@f", "distill@dc-f-1"), ("distill@dm-f-1", "evaluate@dm-f-1"), ("distill@dc-f-1", "evaluate@dc-f-1"),
         ("evaluate@dm-f-1", "report"), ("evaluate@dc-f-1", "report")]


def test_changed_stages_and_everything_downstream_in_pipeline_order():
    assert plan.to_run({"distill@dm-f-1"}, NODES, EDGES) == ["distill@dm-f-1", "evaluate@dm-f-1", "report"]
    assert plan.to_run({"prepare@f"}, NODES, EDGES) == NODES[1:]
    assert plan.to_run(set(), NODES, EDGES) == []


def test_summary_sums_measured_durations_of_the_same_profile():
    times = {"profiles": ["quick"], "devices": ["cpu (x86_64, 2 threads)"],
             "stages": {"distill@dm-f-1": 120.0, "evaluate@dm-f-1": 60.0}}
    lines = plan.summary(["distill@dm-f-1", "evaluate@dm-f-1", "report"], times, "quick")
    assert lines[0] == "dvc repro will run up to 3 stages (profile quick): 1 distill, 1 evaluate, 1 report"
    assert lines[1].startswith("expected time: ~3 min for the 2 timed stages (last full run on cpu (x86_64, 2 threads)")
    assert "longest: distill@dm-f-1 2.0 min, evaluate@dm-f-1 1.0 min" in lines[1]
    assert lines[2] == "1 stage(s) without a recorded duration: report"


def test_summary_refuses_durations_of_another_profile_and_says_when_nothing_runs():
    times = {"profiles": ["quick"], "stages": {"distill@dm-f-1": 117.0}}
    lines = plan.summary(["distill@dm-f-1"], times, "paper")
    assert lines[1] == "expected time: unknown; the recorded durations are for profile(s) quick, not paper"
    assert plan.summary([], times, "quick") == ["dvc repro: every stage is up to date; nothing to run."]
    assert plan.summary(["report"], {}, "quick")[1] == "1 stage(s) without a recorded duration: report"
