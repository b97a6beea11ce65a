"""`make reproduce`: the DVC pipeline with up to `--lanes` stages running at once.

`dvc repro` runs one stage at a time. Every stage computes with params' `threads` torch threads (one by default),
so on a two-core machine two independent stages side by side take about half the time of one after the other,
and each computes exactly what it computes alone. This runs `dvc repro --single-item <stage>` for every stage
of dvc.yaml as soon as the stages it depends on have finished, at most `lanes` at a time, in dvc.yaml's order
among those ready. DVC releases its repository lock while a stage's command runs and takes it back to record the
stage (`--wait-for-lock`), so the stages' dvc.lock entries are written one at a time; a stage that has not
changed is skipped by DVC as under `dvc repro`.

Each stage's output goes to data/logs/<stage>.log, and its start and end (seconds from the start) to
data/logs/reproduce.json. When a stage fails no new stage starts; those running finish, and the command exits
non-zero naming the failed stages and their logs. After a run in which every stage succeeded, dvc.lock entries of
stages that dvc.yaml no longer has (a loss setting taken out of guide.losses, say) are removed: DVC keeps them,
and they would describe runs that the pipeline no longer makes.

Usage: python -m avguide.reproduce [--lanes 2] [--dry]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from avguide.params import project_root

LOGS = "data/logs"


def pipeline_graph(root: Path) -> dict[str, list[str]]:
    """{stage: the stages it depends on}, in dvc.yaml's order (foreach and matrix stages as name@item)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge goes from a stage to a stage whose output it reads
        return {s.addressing: sorted(d.addressing for d in graph.successors(s)) for s in repo.index.stages}


def schedule(graph: dict[str, list[str]], start: Callable, lanes: int, poll_s: float = 1.0) -> dict[str, dict]:
    """Run every stage of `graph` once all it depends on has succeeded, at most `lanes` at a time, the ready ones in
    `graph`'s order. `start(stage)` launches it and returns a handle with `poll()` (None while it runs, then its
    exit status), as a subprocess.Popen. Returns {stage: {start_s, end_s, status}} of the stages that ran; after a
    failure no new stage starts."""
    unknown = {d for deps in graph.values() for d in deps} - set(graph)
    if unknown:
        raise ValueError(f"stages depend on unknown stages: {sorted(unknown)}")
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1; got {lanes}")
    t0, running, record = time.perf_counter(), {}, {}
    pending = list(graph)
    while pending or running:
        failed = any(r["status"] != 0 for r in record.values() if "status" in r)
        if not failed:
            for stage in [s for s in pending if all(record.get(d, {}).get("status") == 0 for d in graph[s])]:
                if len(running) >= lanes:
                    break
                pending.remove(stage)
                record[stage] = {"start_s": round(time.perf_counter() - t0, 1)}
                running[stage] = start(stage)
        if failed and not running:
            break
        if not running and pending:
            raise RuntimeError(f"stages that can never start (a cycle?): {pending}")
        time.sleep(poll_s)
        for stage, job in list(running.items()):
            status = job.poll()
            if status is not None:
                del running[stage]
                record[stage].update(end_s=round(time.perf_counter() - t0, 1), status=status)
    return record


def prune_lock(root: Path, stages) -> list[str]:
    """Remove from dvc.lock the entries of stages not in `stages`; returns their names."""
    import yaml

    path = root / "dvc.lock"
    if not path.is_file():
        return []
    lock = yaml.safe_load(path.read_text())
    stale = sorted(set(lock.get("stages", {})) - set(stages))
    if stale:
        lock["stages"] = {k: v for k, v in lock["stages"].items() if k not in stale}
        path.write_text(yaml.safe_dump(lock, sort_keys=False))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avguide.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--lanes", type=int, default=2, help="stages at once (default 2)")
    parser.add_argument("--dry", action="store_true", help="print the stages and what each depends on")
    args = parser.parse_args(argv)
    root = project_root()
    graph = pipeline_graph(root)
    if args.dry:
        for stage, deps in graph.items():
            print(f"{stage}: {', '.join(deps) or '-'}")
        return 0
    logs = root / LOGS
    logs.mkdir(parents=True, exist_ok=True)

    def start(stage: str):
        log = logs / f"{stage}.log"
        print(f"{time.strftime('%H:%M:%S')} start  {stage} (log: {log.relative_to(root)})", flush=True)
        with open(log, "w") as f:  # the child keeps its own copy of the file
            return subprocess.Popen(
                ["dvc", "--wait-for-lock", "repro", "--single-item", stage],
                cwd=root,
                stdout=f,
                stderr=subprocess.STDOUT,
            )

    record = schedule(graph, start, args.lanes)
    (logs / "reproduce.json").write_text(json.dumps({"lanes": args.lanes, "stages": record}, indent=1) + "\n")
    for stage, r in record.items():
        minutes = (r["end_s"] - r["start_s"]) / 60
        print(f"{stage:40} {minutes:6.1f} min  {'ok' if r['status'] == 0 else 'FAILED'}")
    failed = [s for s, r in record.items() if r["status"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}; see {', '.join(f'{LOGS}/{s}.log' for s in failed)}", file=sys.stderr)
        return 1
    stale = prune_lock(root, graph)
    if stale:
        print(f"dvc.lock: removed the entries of stages dvc.yaml no longer has: {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
