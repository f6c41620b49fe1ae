"""A runstream.Worker process for tests/python/sdk/test_agents.py: serves the registered agent's tool
(`weather-lookup`) and two tasks whose output holds an integer too large for a double (`huge-number`, a plain
function, and `huge-number-async`). Appends a JSON line per task it gets to the --events file.

Usage: python agent_worker.py ADDR --events FILE
"""

import argparse
import json
import threading

import runstream

parser = argparse.ArgumentParser()
parser.add_argument("addr")
parser.add_argument("--events", required=True)
args = parser.parse_args()

worker = runstream.Worker(args.addr, max_in_flight=4, worker_id="agent-worker")
lock = threading.Lock()


def record(ctx, input):
    line = {"task": ctx.task_type, "run": ctx.run_id, "step": ctx.step_id, "key": ctx.idempotency_key,
            "workflow": ctx.workflow_id, "input": input}
    with lock, open(args.events, "a") as f:
        f.write(json.dumps(line) + "\n")


@worker.task("weather-lookup")
def weather(ctx, input):
    record(ctx, input)
    ctx.write({"looking_up": input["city"]})
    ctx.write({"progress": 1})
    return {"city": input["city"], "tempC": 21, "sky": "clear"}


@worker.task("huge-number")
def huge(ctx, input):
    record(ctx, input)
    # json.dumps writes it, a google.protobuf.Value cannot hold it: this raised on the pool thread and the task hung.
    return {"n": 10**400}


@worker.task("huge-number-async")
async def huge_async(ctx, input):
    record(ctx, input)
    return [1, {"n": -(10**400)}]


worker.run()
