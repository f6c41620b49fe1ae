"""A runstream.Worker process for tests/python/sdk/test_registered.py: serves the task types of the workflow that
script registers (`split`, `square`, `total`, `count`). `square` appends a JSON line per start and end to the
--events file, with how many `square` tasks this process runs at that moment (the foreach's concurrency bound is
checked from them).

Usage: python registered_worker.py ADDR --events FILE [--max-in-flight N]
"""

import argparse
import json
import os
import threading

import runstream

parser = argparse.ArgumentParser()
parser.add_argument("addr")
parser.add_argument("--events", required=True)
parser.add_argument("--max-in-flight", type=int, default=8)
args = parser.parse_args()

worker = runstream.Worker(args.addr, max_in_flight=args.max_in_flight, worker_id=f"registered-{os.getpid()}")
lock = threading.Lock()
active = 0


def record(event, **fields):
    with lock, open(args.events, "a") as f:
        f.write(json.dumps({"event": event, **fields}) + "\n")


@worker.task("split")
def split(ctx, input):
    # Waits `hold_ms` first, so that a run can be caught in this step (the version check).
    ctx.wait_cancelled(input.get("hold_ms", 0) / 1000)
    n = input["n"]
    ctx.write({"items": n})
    return [{"i": i, "ms": input.get("ms", 0)} for i in range(n)]


@worker.task("square")
def square(ctx, item):
    global active
    with lock:
        active += 1
        now = active
    record("start", run=ctx.run_id, i=item["i"], active=now)
    try:
        ctx.wait_cancelled(item["ms"] / 1000)
    finally:
        with lock:
            active -= 1
    record("end", run=ctx.run_id, i=item["i"])
    return {"i": item["i"], "sq": item["i"] * item["i"]}


@worker.task("total")
def total(ctx, squares):
    return sum(s["sq"] for s in squares)


@worker.task("count")
def count(ctx, squares):
    return len(squares)


worker.run()
