"""avguide.reproduce: the pipeline's stages side by side, never before what they read, never more than `lanes`."""

import pytest
import yaml

from avguide.params import project_root
from avguide.reproduce import pipeline_graph, prune_lock, schedule


class Job:
    """A stage that runs for `polls` polls, then exits with `status`; it records what ran beside it."""

    def __init__(self, name, polls, status, log):
        self.name, self.left, self.status, self.log = name, polls, status, log
        log.append(("start", name))

    def poll(self):
        self.left -= 1
        if self.left > 0:
            return None
        self.log.append(("end", self.name))
        return self.status


def run(graph, lanes, polls=None, fail=()):
    log, live, most = [], set(), [0]

    def start(stage):
        live.add(stage)
        most[0] = max(most[0], len(live))
        job = Job(stage, (polls or {}).get(stage, 1), 1 if stage in fail else 0, log)
        poll = job.poll

        def tracked():
            status = poll()
            if status is not None:
                live.discard(stage)
            return status

        job.poll = tracked
        return job

    return schedule(graph, start, lanes, poll_s=0), log, most[0]


GRAPH = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"], "e": ["c", "d"]}


def test_each_stage_starts_after_all_it_reads_and_at_most_lanes_run_at_once():
    record, log, most = run(GRAPH, lanes=2, polls={"a": 3, "b": 1, "c": 2, "d": 2, "e": 1})
    order = [name for kind, name in log if kind == "start"]
    ends = [name for kind, name in log if kind == "end"]
    for stage, deps in GRAPH.items():
        for d in deps:
            assert log.index(("end", d)) < log.index(("start", stage)), (d, stage)
    assert most == 2 and set(order) == set(GRAPH) and set(ends) == set(GRAPH)
    assert order[:2] == ["a", "b"]  # the ready ones in the graph's order
    assert all(r["status"] == 0 and r["end_s"] >= r["start_s"] for r in record.values())


def test_one_lane_runs_the_stages_one_by_one_in_order():
    _, log, most = run(GRAPH, lanes=1)
    assert most == 1
    assert [name for kind, name in log if kind == "start"] == ["a", "b", "c", "d", "e"]


def test_a_failure_starts_nothing_new_and_lets_the_running_stage_finish():
    record, log, _ = run(GRAPH, lanes=2, polls={"a": 1, "b": 3}, fail={"a"})
    assert record["a"]["status"] == 1
    assert record["b"]["status"] == 0 and ("end", "b") in log  # it was running: it finished
    assert not {"c", "d", "e"} & set(record)


def test_unknown_dependencies_and_no_lanes_are_errors():
    with pytest.raises(ValueError, match=r"unknown stages: \['z'\]"):
        schedule({"a": ["z"]}, None, 2)
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        schedule(GRAPH, None, 0)


def test_the_graph_is_dvc_yaml_s():
    graph = pipeline_graph(project_root())
    assert list(graph)[:2] == ["prepare", "prepare_2d"]
    assert graph["pretrain_expert"] == ["prepare_2d"]
    assert graph["pretrain_judge@judge"] == graph["pretrain_judge@judge2"] == ["prepare", "prepare_2d"]
    assert {"pretrain_judge@judge", "pretrain_judge@judge2", "train@faceformer"} <= set(graph["evaluate"])
    assert "pretrain_audio" in graph["train@codetalker"]


def test_lock_entries_of_stages_no_longer_in_the_pipeline_are_removed(tmp_path):
    entries = {name: {"cmd": f"run {name}", "outs": [{"path": f"data/{name}", "md5": "abc"}]} for name in "abz"}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": entries}, sort_keys=False))
    assert prune_lock(tmp_path, ["a", "b", "c"]) == ["z"]
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert lock == {"schema": "2.0", "stages": {"a": entries["a"], "b": entries["b"]}}
    assert prune_lock(tmp_path, ["a", "b"]) == []
