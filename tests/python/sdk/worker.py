"""A runstream.Worker process for tests/python/sdk/test_workers.py: serves `list-images` (a plain function) and
`resize-image` (an async one) of examples/workers.rs's `thumbnails` workflow. What `list-images` does depends on
the run's input (`mode`); every step of interest is appended as a JSON line to the --events file.

Usage: python worker.py ADDR --id WORKER_ID --events FILE [--max-in-flight N]

SIGTERM drains it (Worker.stop(drain=True)): it finishes its tasks, takes no new ones, and exits 0.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import threading
import time

import runstream

parser = argparse.ArgumentParser()
parser.add_argument("addr")
parser.add_argument("--id", required=True)
parser.add_argument("--events", required=True)
parser.add_argument("--max-in-flight", type=int, default=1)
args = parser.parse_args()

logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.id} %(levelname)s %(message)s")
worker = runstream.Worker(args.addr, max_in_flight=args.max_in_flight, worker_id=args.id)
lock = threading.Lock()
active = 0


def record(ctx, event, **fields):
    line = {"event": event, "worker": args.id, "pid": os.getpid(), "task": ctx.task_type, "run": ctx.run_id,
            "attempt": ctx.attempt, "key": ctx.idempotency_key, **fields}
    with lock, open(args.events, "a") as f:
        f.write(json.dumps(line) + "\n")


def sleep_unless_cancelled(ctx, ms):
    # A plain time.sleep in slices: the heartbeats must go on meanwhile (their own thread).
    ctx.wait_cancelled(ms / 1000)


def made_by(ctx):
    return [{"name": "only", "ms": 0, "attempt": ctx.attempt, "worker": args.id, "key": ctx.idempotency_key}]


@worker.task("list-images")
def list_images(ctx, input):
    input = input or {}
    mode = input.get("mode", "images")
    record(ctx, "start", mode=mode, resume_data=ctx.resume_data, suspend_payload=ctx.suspend_payload)
    if mode == "images":
        count = input.get("images", 3)
        ctx.write({"listing": count})
        ctx.progress(1, 2, "listing")
        ctx.custom("note", {"images": count})
        return [{"name": f"img{i}", "ms": input.get("ms", 0), "ms_first": input.get("ms_first")} for i in range(count)]
    if mode in ("sleep", "late"):
        sleep_unless_cancelled(ctx, input["ms"] if ctx.attempt == 1 else input.get("ms_retry", 0))
        record(ctx, "end", cancelled=ctx.cancelled)
        return made_by(ctx)
    if mode == "cancel":
        cancelled = ctx.wait_cancelled(60)
        record(ctx, "cancelled" if cancelled else "not-cancelled", reason=ctx.cancel_reason)
        return []
    if mode == "suspend":
        if ctx.resume_data is None:
            ctx.suspend({"question": "approve?"})
        return made_by(ctx)
    if mode == "big":
        return [{"name": "huge", "blob": "x" * input.get("bytes", 5_000_000)}]
    if mode == "bigwrite":
        try:
            ctx.write("x" * input.get("bytes", 5_000_000))
        except runstream.OutputTooLarge as e:
            record(ctx, "too-large", message=str(e))
        ctx.write({"after": "the refused write"})
        return []
    if mode == "fail":
        raise runstream.NonRetryableError(f"no images in {input.get('bucket')}")
    raise ValueError(f"unknown mode {mode}")


seen_keys = set()


@worker.task("resize-image")
async def resize_image(ctx, image):
    global active
    with lock:
        active += 1
        now = active
        # `ms_first` the first time this worker sees the step execution (its idempotency key), `ms` after.
        first = ctx.idempotency_key not in seen_keys
        seen_keys.add(ctx.idempotency_key)
    record(ctx, "resize", active=now, index=ctx.for_each_index, first=first)
    ms = image["ms_first"] if first and image.get("ms_first") is not None else image.get("ms", 0)
    try:
        end = time.monotonic() + ms / 1000
        while not ctx.cancelled and time.monotonic() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))
        record(ctx, "resized", cancelled=ctx.cancelled, index=ctx.for_each_index)
    finally:
        with lock:
            active -= 1
    return {"name": image["name"], "width": 128, "attempt": image.get("attempt"), "worker": image.get("worker")}




def drain(*_):
    # SIGTERM: finish what runs, take nothing new, then exit (stop() waits, so not on the signal handler's thread).
    threading.Thread(target=worker.stop, kwargs={"drain": True, "timeout": 30}, daemon=True).start()


signal.signal(signal.SIGTERM, drain)
worker.run()
