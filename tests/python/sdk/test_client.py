"""runstream.Client against `runstream serve` and its built-in demos.

Usage: python test_client.py HOST:PORT

Checks: stream (proto JSON dicts as grpcurl prints them), start (created, and not again for the same run id),
observe (from the start and after a seq), result (wait), resume_stream (order-approval, numbering continued),
cancel, errors as RunstreamError with the gRPC code and the server's message, register_workflow's local check of
the definition. Prints one PASS/FAIL line per check; exits non-zero if any failed.
"""

import os
import sys
import traceback
import uuid

import grpc

import runstream
from checks import check, exit_with_summary

ADDR = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RUNSTREAM_ADDR", "127.0.0.1:50051")


def raises(name, code, fn, contains=""):
    try:
        fn()
    except runstream.RunstreamError as e:
        return check(name, e.code == code and contains in e.message, f"{e.code}: {e.message}")
    return check(name, False, "no error")


def seqs(events):
    return [int(e["seq"]) for e in events]


def main():
    client = runstream.Client(ADDR, timeout=60)

    events = list(client.stream("chain", {"value": 1}))
    check("stream: chain gives 8 events, seq 1..8 as strings (proto JSON)",
          [e["seq"] for e in events] == [str(i) for i in range(1, 9)], [e.get("seq") for e in events])
    check("stream: the first is workflowStart, the last workflowFinish with {value: 4}",
          "workflowStart" in events[0] and events[-1]["workflowFinish"]["status"] == "RUN_STATUS_SUCCESS"
          and events[-1]["workflowFinish"]["result"] == {"value": 4}, (events[0], events[-1]))
    check("stream: camelCase keys, whole numbers as ints", "stepStart" in events[1]
          and events[1]["stepStart"]["input"] == {"value": 1} and isinstance(events[1]["stepStart"]["input"]["value"], int),
          events[1])

    run_id = f"sdk-{uuid.uuid4()}"
    started = client.start("chain", {"value": 10}, run_id=run_id)
    check("start: created with the run id asked for", started["runId"] == run_id and started["created"] is True, started)
    again = client.start("chain", {"value": 10}, run_id=run_id)
    check("start: the same run id again is not started again", again["created"] is False, again)
    result = client.result(run_id, wait=True, max_wait=30)
    check("result: waits for SUCCESS with {value: 13}",
          result["status"] == "RUN_STATUS_SUCCESS" and result["result"] == {"value": 13}, result)
    observed = list(client.observe(run_id))
    check("observe: the whole log from seq 1", seqs(observed) == list(range(1, 9)), seqs(observed))
    after = list(client.observe(run_id, after_seq=5))
    check("observe: after_seq 5 gives 6..8", seqs(after) == [6, 7, 8], seqs(after))
    check("run: GetRun's lastSeq", client.run(run_id)["lastSeq"] == "8")

    order = list(client.stream("order-approval", {"orderId": "A-1", "amount": 250}))
    order_id = order[0]["runId"]
    check("stream: order-approval suspends", order[-1]["workflowFinish"]["status"] == "RUN_STATUS_SUSPENDED",
          order[-1])
    resumed = list(client.resume_stream(order_id, {"approved": True, "approver": "ana"}, step="approve"))
    check("resume_stream: the numbering continues", seqs(resumed)[0] == seqs(order)[-1] + 1
          and seqs(resumed) == list(range(seqs(resumed)[0], seqs(resumed)[0] + len(resumed))), seqs(resumed))
    check("resume_stream: the run succeeds", resumed[-1]["workflowFinish"]["status"] == "RUN_STATUS_SUCCESS",
          resumed[-1])
    raises("resume_stream: a finished run is FAILED_PRECONDITION", grpc.StatusCode.FAILED_PRECONDITION,
           lambda: list(client.resume_stream(order_id, {"approved": True, "approver": "ana"})))

    slow = client.start("chain", {"value": 1, "delayMs": 10_000})["runId"]
    canceled = client.cancel(slow)
    check("cancel: the run is canceled", canceled["canceled"] is True, canceled)
    check("cancel: result CANCELED", client.result(slow, wait=True, max_wait=30)["status"] == "RUN_STATUS_CANCELED")
    check("cancel: an ended run is not canceled again", client.cancel(slow)["canceled"] is False)

    raises("errors: an unknown workflow is NOT_FOUND naming it", grpc.StatusCode.NOT_FOUND,
           lambda: list(client.stream("no-such-workflow", {})), "no-such-workflow")
    raises("errors: an unknown run is NOT_FOUND", grpc.StatusCode.NOT_FOUND, lambda: client.result("no-such-run"))
    raises("errors: input failing the schema is INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
           lambda: client.start("chain", {"value": "one"}))

    workflows = {w["id"] for w in client.list_workflows()}
    check("list_workflows: the built-in demos", {"chain", "order-approval"} <= workflows, workflows)
    try:
        client.register_workflow({"id": "x", "steps": [{"no_such_node": {}}]})
        check("register_workflow: a dict that is no WorkflowDefinition is a ValueError", False, "no error")
    except ValueError as e:
        check("register_workflow: a dict that is no WorkflowDefinition is a ValueError", "WorkflowDefinition" in str(e),
              e)
    client.close()

    exit_with_summary()


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
