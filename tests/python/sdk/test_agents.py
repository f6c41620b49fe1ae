"""An agent registered from Python (Client.register_agent) on `runstream serve --no-builtins` with the offline model,
its tool served by a Python worker process (agent_worker.py); and a task whose output holds an integer too large
for a double (the worker used to raise on its pool thread and leave the task running forever).

Usage: python test_agents.py HOST:PORT

Checks:
  register    version 1 and registeredAt; GetAgentDefinition gives it back, by latest and by version; NOT_FOUND for
              a version that does not exist; listed as an agent
  refused     definitions the server refuses: INVALID_ARGUMENT naming the field; a dict that is no AgentDefinition:
              ValueError before any call
  stream      seq gapless from 1; one toolCall get_weather {"city": "Paris"}; the worker's two writes as toolOutput
              of that call, in order, right after it, then its toolResult; the text answer uses the result; success
  task        the worker got one task: the call's arguments as input, step "<agent>/<tool>", key
              "<run>/<agent step>/<model call>/<tool call id>"
  overflow    a plain and an async task returning 10**400: the run fails (no hang) with a message saying which
              value is too large and where

Prints one PASS/FAIL line per check; exits non-zero if any failed.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

import grpc

import runstream
from checks import check, exit_with_summary, stop

HERE = pathlib.Path(__file__).resolve().parent
AGENT = "forecaster-py"
ENVELOPE = {"seq", "runId", "time", "source", "stepId"}


def definition(**changes):
    # Proto JSON, as a user keeps it in a file.
    agent = {
        "id": AGENT,
        "description": "Answers questions about the weather.",
        "instructions": "You answer questions about the weather.",
        "maxSteps": 4,
        "tools": [{
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                           "required": ["city"]},
            "task": "weather-lookup",
        }],
    }
    tool_changes = changes.pop("tool", {})
    agent.update(changes)
    agent["tools"][0].update(tool_changes)
    return agent


def kind(event):
    return next((k for k in event if k not in ENVELOPE), None)


def refused(call):
    try:
        call()
    except runstream.RunstreamError as e:
        return e.code, e.message
    except ValueError as e:
        return "ValueError", str(e)
    return None, "accepted"


def check_register(client):
    stored = client.register_agent(definition())
    check("register: version 1", stored.get("version") == 1, stored)
    check("register: registeredAt set", bool(stored.get("registeredAt")), stored)
    expected = {**definition(), "version": 1, "registeredAt": stored.get("registeredAt")}
    tool = stored.get("tools", [{}])[0]
    check("register: the stored definition is the one sent",
          {k: stored.get(k) for k in expected if k != "tools"} == {k: v for k, v in expected.items() if k != "tools"}
          and {k: tool.get(k) for k in expected["tools"][0]} == expected["tools"][0], stored)
    check("get_agent_definition: the latest is what register returned", client.get_agent_definition(AGENT) == stored)
    check("get_agent_definition: version 1 likewise", client.get_agent_definition(AGENT, version=1) == stored)
    code, message = refused(lambda: client.get_agent_definition(AGENT, version=7))
    check("get_agent_definition: NOT_FOUND for a version that does not exist",
          code == grpc.StatusCode.NOT_FOUND and AGENT in message, (code, message))
    listed = [w for w in client.list_workflows() if w.get("id") == AGENT]
    check("register: listed as an agent with its tool",
          len(listed) == 1 and listed[0].get("kind") == "RUN_KIND_AGENT"
          and [t.get("name") for t in listed[0].get("tools", [])] == ["get_weather"], listed)

    for name, bad, field in [
        ("a tool name with a space", definition(tool={"name": "get weather"}), "tools[0].name"),
        ("a tool without a task", definition(tool={"task": ""}), "tools[0].task"),
        ("parameters that are not an object schema", definition(tool={"parameters": {"type": "string"}}),
         "tools[0].parameters"),
        ("too many model calls", definition(maxSteps=51), "maxSteps"),
        ("no id", definition(id=""), "id"),
    ]:
        code, message = refused(lambda: client.register_agent(bad))
        check(f"refused: {name}: INVALID_ARGUMENT naming {field}",
              code == grpc.StatusCode.INVALID_ARGUMENT and field in message, (code, message))
    code, message = refused(lambda: client.register_agent({**definition(), "toolz": []}))
    check("refused: a dict that is no AgentDefinition: ValueError", code == "ValueError" and "toolz" in message,
          (code, message))
    check("refused: nothing registered meanwhile", client.get_agent_definition(AGENT).get("version") == 1)


def check_stream(client, events_file):
    run_id = "py-paris-1"
    events = list(client.stream(agent_id=AGENT, input={"prompt": "What is the weather in Paris?"}, run_id=run_id))
    seqs = [int(e["seq"]) for e in events]
    check("stream: seq gapless from 1", seqs == list(range(1, len(seqs) + 1)), seqs)
    finish = events[-1].get("workflowFinish", {}) if events else {}
    check("stream: ends with workflowFinish SUCCESS", finish.get("status") == "RUN_STATUS_SUCCESS", events[-1:])
    calls = [(i, e["toolCall"]) for i, e in enumerate(events) if "toolCall" in e]
    check("stream: one toolCall of get_weather with the city from the prompt",
          [(c.get("toolName"), c.get("args")) for _, c in calls] == [("get_weather", {"city": "Paris"})], calls)
    if len(calls) != 1:
        return
    at, call = calls[0]
    call_id = call.get("toolCallId")
    after = events[at + 1:]
    outputs = []
    for e in after:
        if "toolOutput" not in e:
            break
        outputs.append(e["toolOutput"])
    check("stream: the worker's writes are the call's toolOutput, in order, right after the toolCall",
          [o.get("output") for o in outputs] == [{"looking_up": "Paris"}, {"progress": 1}]
          and all((o.get("toolCallId"), o.get("toolName")) == (call_id, "get_weather") for o in outputs),
          [kind(e) for e in after])
    nxt = after[len(outputs)] if len(after) > len(outputs) else {}
    result = nxt.get("toolResult", {})
    check("stream: then the call's toolResult with the worker's result",
          result.get("toolCallId") == call_id and result.get("result") == {"city": "Paris", "tempC": 21,
                                                                          "sky": "clear"}, nxt)
    check("stream: no toolError", not any("toolError" in e for e in events))
    answer = "".join(e["textDelta"].get("text", "") for e in events if "textDelta" in e)
    check("stream: the text answer uses the tool's result", "21" in answer, answer)
    done = client.result(run_id, wait=True, max_wait=30)
    check("stream: Client.result says success", done.get("status") == "RUN_STATUS_SUCCESS", done)

    tasks = [json.loads(l) for l in events_file.read_text().splitlines() if '"weather-lookup"' in l]
    check("task: one weather-lookup task, its input the call's arguments",
          [t["input"] for t in tasks] == [{"city": "Paris"}], tasks)
    if tasks:
        step = f"{AGENT}/get_weather"
        check("task: step <agent>/<tool>", tasks[0]["step"] == step, tasks[0])
        check("task: key <run>/<agent step>/<model call>/<tool call id>",
              tasks[0]["key"] == f"{run_id}/{AGENT}/1/{call_id}", (tasks[0], call_id))


def check_overflow(client):
    for workflow, task, where in [("huge-py", "huge-number", "value['n']"),
                                  ("huge-async-py", "huge-number-async", "value[1]['n']")]:
        client.register_workflow({"id": workflow, "steps": [{"step": {"id": "compute", "task": task}}]})
        started = client.start(workflow, {})
        done = client.result(started["runId"], wait=True, max_wait=30)
        message = done.get("error", {}).get("message", "")
        check(f"overflow {task}: the run ends (no hang)", not done.get("waitExpired"), done)
        check(f"overflow {task}: the run fails", done.get("status") == "RUN_STATUS_FAILED", done)
        check(f"overflow {task}: the message says what is too large and where",
              "the task's output cannot be sent" in message and where in message
              and "too large for a JSON number" in message, message)
        events = list(client.observe(started["runId"]))
        starts = [e for e in events if e.get("stepStart", {}).get("stepId") == "compute"]
        check(f"overflow {task}: not retried (the same output would fail again)", len(starts) == 1, starts)


def main():
    addr = sys.argv[1]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="runstream-sdk-agents-"))
    events_file = tmp / "worker-events.jsonl"
    events_file.touch()
    client = runstream.Client(addr, timeout=30)
    check_register(client)
    worker = subprocess.Popen([sys.executable, str(HERE / "agent_worker.py"), addr, "--events", str(events_file)])
    try:
        deadline = time.monotonic() + 30
        while not client.list_workers("weather-lookup") and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        if not check("worker connected", bool(client.list_workers("weather-lookup"))):
            exit_with_summary()
        check_stream(client, events_file)
        check_overflow(client)
        check("the worker is still running", worker.poll() is None, worker.returncode)
    finally:
        stop(worker)
    exit_with_summary()


if __name__ == "__main__":
    main()
