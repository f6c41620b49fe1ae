"""A workflow registered from Python (Client.register_workflow) on `runstream serve`, run by Python worker
processes (registered_worker.py).

Usage: python test_registered.py HOST:PORT

The workflow mixes every kind of node a user reaches for first: a step, a foreach of 8 items at concurrency 4, a
sleep, a parallel of two steps and a map. Checks:
  stream      every event in order, seq gapless from 1; a SUCCESS step_result per node after its step_start (the
              sleep: step_waiting SLEEP instead), a step_progress per foreach item, the worker's write as a
              step_output, nodes in order, the right final result
  foreach     never more than 4 `square` tasks at once in the worker (whose max_in_flight is 8), and more than 1
  versions    registering the id again gives version 2; a run started on version 1 before that ends with version
              1's result, a run started after with version 2's

Prints one PASS/FAIL line per check; exits non-zero if any failed.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

import runstream
from checks import check, exit_with_summary, stop

HERE = pathlib.Path(__file__).resolve().parent
WORKFLOW = "squares-py"


def definition(final_fields):
    # Proto JSON, as a user keeps it in a file: durations as strings, camelCase names.
    return {
        "id": WORKFLOW,
        "description": "Splits n into items, squares each (four at a time), then sums and counts the squares.",
        "steps": [
            {"step": {"id": "split", "task": "split", "retries": {"attempts": 1, "delay": "0.5s"}}},
            {"foreach": {"concurrency": 4, "node": {"step": {"id": "square", "task": "square"}}}},
            {"sleep": {"id": "settle", "ms": 50}},
            {"parallel": {"nodes": [{"step": {"id": "total", "task": "total"}},
                                    {"step": {"id": "count", "task": "count"}}]}},
            {"map": {"id": "summary", "fields": final_fields}},
        ],
    }


V1_FIELDS = {"sum": {"path": "total"}, "n": {"path": "count"}, "label": {"runInput": "label"}}
V2_FIELDS = {**V1_FIELDS, "version": {"value": 2}}


ENVELOPE = {"seq", "runId", "time", "source", "stepId"}


def kind(event):
    return next((k for k in event if k not in ENVELOPE), None)


def check_stream(name, events, result, expected_result):
    seqs = [int(e["seq"]) for e in events]
    check(f"{name}: seq gapless from 1", seqs == list(range(1, len(seqs) + 1)), seqs)
    kinds = [kind(e) for e in events]
    check(f"{name}: workflowStart first, workflowFinish last",
          kinds[:1] == ["workflowStart"] and kinds[-1:] == ["workflowFinish"], kinds)
    starts = [e["stepStart"]["stepId"] for e in events if "stepStart" in e]
    results = [(e["stepResult"]["stepId"], e["stepResult"].get("status")) for e in events if "stepResult" in e]
    # A foreach is one step (its items show as stepProgress); a sleep shows stepWaiting SLEEP, not stepStart.
    for step, started in [("split", 1), ("square", 1), ("settle", 0), ("total", 1), ("count", 1), ("summary", 1)]:
        check(f"{name}: {started} stepStart of {step}", starts.count(step) == started, starts)
        check(f"{name}: a SUCCESS stepResult of {step}", [r for r in results if r[0] == step]
              == [(step, "STEP_STATUS_SUCCESS")], results)
    progress = [e["stepProgress"] for e in events if "stepProgress" in e]
    check(f"{name}: a stepProgress per item of square, counting up to 8",
          [p.get("completedCount") for p in progress] == list(range(1, 9))
          and all(p.get("totalCount") == 8 and p["stepId"] == "square" for p in progress), progress)
    # Proto JSON leaves out a zero: index 0 has no currentIndex.
    check(f"{name}: the items' progress covers every index",
          sorted(p.get("currentIndex", 0) for p in progress) == list(range(8)), progress)
    waits = [e["stepWaiting"] for e in events if "stepWaiting" in e]
    check(f"{name}: the sleep's stepWaiting SLEEP",
          [(w["stepId"], w.get("reason")) for w in waits] == [("settle", "WAIT_REASON_SLEEP")], waits)
    outputs = [e["stepOutput"] for e in events if "stepOutput" in e]
    check(f"{name}: split's write is a stepOutput of split",
          [(o["stepId"], o.get("output")) for o in outputs] == [("split", {"items": 8})], outputs)
    # Nodes in order: each node's events come after the previous node's result (the parallel's two interleave).
    firsts = []
    for e in events:
        if e.get("stepId") and e["stepId"] not in firsts:
            firsts.append(e["stepId"])
    check(f"{name}: nodes run in order", firsts[:3] == ["split", "square", "settle"]
          and sorted(firsts[3:5]) == ["count", "total"] and firsts[5:] == ["summary"], firsts)
    last_result = {e["stepResult"]["stepId"]: int(e["seq"]) for e in events if "stepResult" in e}
    first_seen = {s: min(int(e["seq"]) for e in events if e.get("stepId") == s) for s in firsts}
    check(f"{name}: each node starts after the previous one's result",
          all(last_result.get(a, 1 << 30) < first_seen.get(b, 0) for a, b in
              [("split", "square"), ("square", "settle"), ("settle", "total"), ("settle", "count"),
               ("total", "summary"), ("count", "summary")]), (last_result, first_seen))
    finish = events[-1].get("workflowFinish", {}) if events else {}
    check(f"{name}: workflowFinish SUCCESS with the result",
          finish.get("status") == "RUN_STATUS_SUCCESS" and finish.get("result") == expected_result, finish)
    check(f"{name}: Client.result", result == expected_result, result)


def main():
    addr = sys.argv[1]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="runstream-sdk-registered-"))
    events_file = tmp / "worker-events.jsonl"
    client = runstream.Client(addr, timeout=30)
    stored = client.register_workflow(definition(V1_FIELDS))
    check("register: version 1", stored.get("version") == 1, stored)
    listed = [w for w in client.list_workflows() if w.get("id") == WORKFLOW]
    check("register: listed by ListWorkflows", len(listed) == 1, listed)

    worker = subprocess.Popen([sys.executable, str(HERE / "registered_worker.py"), addr,
                               "--events", str(events_file), "--max-in-flight", "8"])
    try:
        # The worker connected first, so that the only step_waiting is the sleep's (not NO_WORKER).
        deadline = time.monotonic() + 30
        while not client.list_workers("square") and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        check("worker connected", bool(client.list_workers("square")))
        run_input = {"n": 8, "ms": 300, "label": "first"}
        expected = {"sum": sum(i * i for i in range(8)), "n": 8, "label": "first"}
        events = list(client.stream(WORKFLOW, run_input))
        run_id = events[0].get("runId") if events else None
        result = client.result(run_id, wait=True) if run_id else None
        check_stream("stream", events, (result or {}).get("result"), expected)
        if not run_id:
            check("stream: run id in the first event", False, events[:1])

        lines = [json.loads(l) for l in events_file.read_text().splitlines()]
        squares = [l for l in lines if l["event"] == "start"]
        most = max((l["active"] for l in squares), default=0)
        check("foreach: 8 square tasks ran", sorted(l["i"] for l in squares) == list(range(8)), squares)
        check("foreach: at most 4 at once in the worker", most <= 4, most)
        check("foreach: more than 1 at once", most > 1, most)

        # Versions: a run caught in its first step on version 1 while the id is registered again.
        before = client.start(WORKFLOW, {"n": 3, "ms": 0, "hold_ms": 1500, "label": "before"})
        stored = client.register_workflow(definition(V2_FIELDS))
        check("register again: version 2", stored.get("version") == 2, stored)
        after = client.start(WORKFLOW, {"n": 3, "ms": 0, "label": "after"})
        old = client.result(before["runId"], wait=True, max_wait=60).get("result")
        new = client.result(after["runId"], wait=True, max_wait=60).get("result")
        check("versions: the run started before keeps version 1", old == {"sum": 5, "n": 3, "label": "before"}, old)
        check("versions: a run started after gets version 2",
              new == {"sum": 5, "n": 3, "label": "after", "version": 2}, new)
    finally:
        stop(worker)
    exit_with_summary()


if __name__ == "__main__":
    main()
