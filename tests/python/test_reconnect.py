"""End-to-end checks of runstream with a real grpcio client.

Usage: python tests/python/test_reconnect.py HOST:PORT   (or set RUNSTREAM_ADDR)

Scenarios:
  reconnect  StreamRun `writer-flood` {"count": 5000}, drop the connection after ~1000 events, re-attach with
             ObserveStream(after_seq = last seen) on a new channel: every seq exactly once, in order.
  suspend    StreamRun `order-approval` to its suspension, ResumeStream it: the resumed events continue the
             run's numbering without a gap; GetResult gives the approval.
  live       StreamRun `order-approval` (close_on_suspend=false), drop after 3 events, re-attach while the run is
             live and suspended, resume it from another channel: the re-attached stream follows through the
             resume to the end, every seq exactly once.
  errors     ResumeStream on a finished run, an unknown workflow, input that fails the schema.
  limits     with grpcio's default 4 MiB receive limit: an `order-approval` whose input is ~2.5 MB streams, resumes
             and its GetResult is readable (the input once); asking for the step inputs too is RESOURCE_EXHAUSTED
             naming the size and the limit, and so is a 5 MB request; a run id reused with other input is
             ALREADY_EXISTS; an unknown input field is named.

Prints one line per check (PASS/FAIL) and exits non-zero if any check failed.
"""

import os
import sys
import traceback
import uuid

import grpc
from google.protobuf import json_format, struct_pb2

# The plain generated stubs, as a grpcio user has them: those of sdk/python (scripts/test-deps.sh installs it;
# tests/sdk_python.rs checks that they match proto/). Only the stubs are used here, not the SDK's client.
from runstream.v1 import common_pb2, service_pb2, service_pb2_grpc  # noqa: E402

# The PASS/FAIL lines and the summary the SDK test scripts share.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk"))
from checks import check, exit_with_summary  # noqa: E402

CALL_TIMEOUT = float(os.environ.get("RUNSTREAM_CALL_TIMEOUT", "120"))
FLOOD_COUNT = 5000
DISCONNECT_AT = 1000


def to_value(obj):
    return json_format.ParseDict(obj, struct_pb2.Value())


def from_value(value):
    return json_format.MessageToDict(value)


def kind(ev):
    return ev.WhichOneof("event")


def status_name(status):
    return common_pb2.RunStatus.Name(status)


def describe(ev):
    k = kind(ev)
    extra = ""
    if k == "workflow_finish":
        extra = " " + status_name(ev.workflow_finish.status)
    return f"#{ev.seq} {k}{extra}"


def open_channel(addr):
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, service_pb2_grpc.RunServiceStub(channel)


def gapless(seqs, start):
    """None when seqs == [start, start+1, ...], else a description of the first problem."""
    for i, s in enumerate(seqs):
        if s != start + i:
            return f"position {i}: expected seq {start + i}, got {s} (previous {seqs[i - 1] if i else None})"
    return None


def expect_rpc_error(name, code, fn, message_contains=None):
    try:
        result = fn()
        # Streaming calls only fail when read.
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)):
            events = list(result)
            return check(name, False, f"expected {code.name}, the stream gave {len(events)} events and no error")
        return check(name, False, f"expected {code.name}, got a response: {result}")
    except grpc.RpcError as err:
        got = err.code()
        details = err.details() or ""
        ok = check(name, got == code, f"expected {code.name}, got {got.name}: {details!r}")
        if message_contains is not None:
            ok &= check(
                f"{name}: message names {message_contains!r}",
                message_contains in details,
                f"message was {details!r}",
            )
        return ok


def scenario_reconnect(addr):
    run_id = f"py-reconnect-{uuid.uuid4().hex[:12]}"
    print(f"-- reconnect: writer-flood count={FLOOD_COUNT} run_id={run_id}", flush=True)

    # Phase 1: stream until ~DISCONNECT_AT, then drop the call and the connection.
    channel, stub = open_channel(addr)
    first = []
    call = stub.StreamRun(
        service_pb2.StreamRunRequest(workflow_id="writer-flood", run_id=run_id, input=to_value({"count": FLOOD_COUNT})),
        timeout=CALL_TIMEOUT,
    )
    ended_early = True
    for ev in call:
        first.append(ev)
        if ev.seq >= DISCONNECT_AT:
            ended_early = False
            break
    call.cancel()
    channel.close()
    last_seen = first[-1].seq if first else 0
    check("reconnect: first stream reached the disconnect point", not ended_early and last_seen >= DISCONNECT_AT,
          f"stream ended after {len(first)} events (last seq {last_seen})")
    check("reconnect: first stream events belong to the run", all(ev.run_id == run_id for ev in first),
          f"run ids seen: {sorted({ev.run_id for ev in first})}")
    print(f"   disconnected after seq {last_seen} ({len(first)} events)", flush=True)

    # Phase 2: re-attach on a fresh channel from the last seq seen.
    channel, stub = open_channel(addr)
    try:
        info = stub.GetRun(service_pb2.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT)
        print(f"   at re-attach the run is {status_name(info.status)}, last_seq {info.last_seq}", flush=True)
        second = list(
            stub.ObserveStream(service_pb2.ObserveStreamRequest(run_id=run_id, after_seq=last_seen),
                               timeout=CALL_TIMEOUT)
        )
        result = stub.GetResult(service_pb2.GetResultRequest(run_id=run_id, wait=True), timeout=CALL_TIMEOUT)
    finally:
        channel.close()
    print(f"   re-attached: {len(second)} more events", flush=True)

    check("reconnect: ObserveStream starts at after_seq + 1", bool(second) and second[0].seq == last_seen + 1,
          f"first re-attached seq {second[0].seq if second else None}, expected {last_seen + 1}")
    events = first + second
    seqs = [ev.seq for ev in events]
    problem = gapless(seqs, 1)
    check("reconnect: every seq 1..N exactly once, in order", problem is None, problem or "")
    print(f"   N = {len(events)}", flush=True)
    check("reconnect: re-attached events belong to the run", all(ev.run_id == run_id for ev in second))

    last = events[-1] if events else None
    check(
        "reconnect: last event is workflow_finish SUCCESS",
        last is not None and kind(last) == "workflow_finish"
        and last.workflow_finish.status == common_pb2.RUN_STATUS_SUCCESS,
        f"last event {describe(last) if last else None}",
    )
    check("reconnect: exactly one workflow_finish", sum(kind(ev) == "workflow_finish" for ev in events) == 1)

    outputs = [from_value(ev.step_output.output) for ev in events if kind(ev) == "step_output"]
    check(f"reconnect: exactly {FLOOD_COUNT} step_output events", len(outputs) == FLOOD_COUNT,
          f"got {len(outputs)}")
    base = outputs[0].get("i") if outputs and isinstance(outputs[0], dict) else None
    bad = None
    if base not in (0, 1):
        bad = f"first output {outputs[0] if outputs else None}, expected {{'i': 0}} or {{'i': 1}}"
    else:
        for n, out in enumerate(outputs):
            if out != {"i": base + n}:
                bad = f"output #{n} is {out}, expected {{'i': {base + n}}}"
                break
    check('reconnect: step_output values are {"i": k} in order', bad is None, bad or "")

    check("reconnect: GetResult status SUCCESS", result.status == common_pb2.RUN_STATUS_SUCCESS,
          status_name(result.status))
    got = from_value(result.result)
    check(f'reconnect: GetResult result is {{"written": {FLOOD_COUNT}}}', got == {"written": FLOOD_COUNT},
          f"got {got}")
    if result.last_seq:
        check("reconnect: GetResult last_seq is the last event's seq", result.last_seq == seqs[-1],
              f"last_seq {result.last_seq}, last event {seqs[-1]}")
    return run_id


def scenario_suspend_resume(addr):
    run_id = f"py-order-{uuid.uuid4().hex[:12]}"
    print(f"-- suspend/resume: order-approval run_id={run_id}", flush=True)
    channel, stub = open_channel(addr)
    try:
        phase1 = list(
            stub.StreamRun(
                service_pb2.StreamRunRequest(workflow_id="order-approval", run_id=run_id,
                                             input=to_value({"orderId": "A-100", "amount": 250})),
                timeout=CALL_TIMEOUT,
            )
        )
        print("   phase 1: " + ", ".join(describe(ev) for ev in phase1), flush=True)
        problem = gapless([ev.seq for ev in phase1], 1)
        check("suspend: phase 1 seqs are 1..k", bool(phase1) and problem is None, problem or "no events")
        tail = phase1[-2:]
        check(
            "suspend: stream ends with step_suspended then workflow_finish SUSPENDED",
            len(tail) == 2 and kind(tail[0]) == "step_suspended" and kind(tail[1]) == "workflow_finish"
            and tail[1].workflow_finish.status == common_pb2.RUN_STATUS_SUSPENDED,
            "tail: " + ", ".join(describe(ev) for ev in tail),
        )
        last_phase1 = phase1[-1].seq if phase1 else 0

        phase2 = list(
            stub.ResumeStream(
                service_pb2.ResumeStreamRequest(run_id=run_id,
                                                resume_data=to_value({"approved": True, "approver": "ada"})),
                timeout=CALL_TIMEOUT,
            )
        )
        print("   phase 2: " + ", ".join(describe(ev) for ev in phase2), flush=True)
        check("resume: first resumed seq continues the run's numbering",
              bool(phase2) and phase2[0].seq == last_phase1 + 1,
              f"first resumed seq {phase2[0].seq if phase2 else None}, expected {last_phase1 + 1}")
        problem = gapless([ev.seq for ev in phase2], last_phase1 + 1)
        check("resume: resumed seqs are gapless", bool(phase2) and problem is None, problem or "no events")
        check(
            "resume: first resumed event is workflow_start phase 2 (resumed)",
            bool(phase2) and kind(phase2[0]) == "workflow_start" and phase2[0].workflow_start.phase == 2
            and phase2[0].workflow_start.resumed,
            describe(phase2[0]) if phase2 else "no events",
        )
        check(
            "resume: last resumed event is workflow_finish SUCCESS",
            bool(phase2) and kind(phase2[-1]) == "workflow_finish"
            and phase2[-1].workflow_finish.status == common_pb2.RUN_STATUS_SUCCESS,
            describe(phase2[-1]) if phase2 else "no events",
        )

        result = stub.GetResult(service_pb2.GetResultRequest(run_id=run_id, wait=True), timeout=CALL_TIMEOUT)
        check("resume: GetResult status SUCCESS", result.status == common_pb2.RUN_STATUS_SUCCESS,
              status_name(result.status))
        got = from_value(result.result)
        check('resume: GetResult result is {"status": "approved by ada"}', got == {"status": "approved by ada"},
              f"got {got}")

        # Re-attach over the whole run: both phases, one numbering (close_on_suspend=False: follow past the
        # phase-1 suspension to the end of the run).
        replay = list(stub.ObserveStream(
            service_pb2.ObserveStreamRequest(run_id=run_id, after_seq=0, close_on_suspend=False),
            timeout=CALL_TIMEOUT,
        ))
        problem = gapless([ev.seq for ev in replay], 1)
        check("resume: ObserveStream(after_seq=0) replays both phases gaplessly",
              problem is None and len(replay) == len(phase1) + len(phase2),
              problem or f"{len(replay)} events, expected {len(phase1) + len(phase2)}")
    finally:
        channel.close()
    return run_id


def scenario_live_reattach(addr):
    run_id = f"py-live-{uuid.uuid4().hex[:12]}"
    print(f"-- live re-attach: order-approval run_id={run_id}", flush=True)
    channel, stub = open_channel(addr)
    call = stub.StreamRun(
        service_pb2.StreamRunRequest(workflow_id="order-approval", run_id=run_id, close_on_suspend=False,
                                     input=to_value({"orderId": "A-7", "amount": 99})),
        timeout=CALL_TIMEOUT,
    )
    first = []
    for ev in call:
        first.append(ev)
        if len(first) == 3:
            break
    call.cancel()
    channel.close()
    last_seen = first[-1].seq if first else 0

    channel, stub = open_channel(addr)
    other_channel, other_stub = open_channel(addr)
    try:
        observer = stub.ObserveStream(
            service_pb2.ObserveStreamRequest(run_id=run_id, after_seq=last_seen, close_on_suspend=False),
            timeout=CALL_TIMEOUT,
        )
        second = []
        # Follow the live run up to its suspension; the stream stays open (close_on_suspend=false).
        for ev in observer:
            second.append(ev)
            if kind(ev) == "workflow_finish":
                break
        check("live: the re-attached stream reached the suspension", bool(second)
              and second[-1].workflow_finish.status == common_pb2.RUN_STATUS_SUSPENDED,
              describe(second[-1]) if second else "no events")
        # Another client resumes; the open observer must receive the resumed phase too.
        resumed = list(other_stub.ResumeStream(
            service_pb2.ResumeStreamRequest(run_id=run_id, resume_data=to_value({"approved": True, "approver": "eve"})),
            timeout=CALL_TIMEOUT,
        ))
        second.extend(observer)
    finally:
        channel.close()
        other_channel.close()
    events = first + second
    problem = gapless([ev.seq for ev in events], 1)
    check("live: every seq 1..N exactly once across the drop, the suspension and the resume", problem is None,
          problem or "")
    check("live: the observer saw the resumed phase as the resumer did",
          [ev.SerializeToString() for ev in second[-len(resumed):]] == [ev.SerializeToString() for ev in resumed]
          if resumed else False)
    last = events[-1] if events else None
    check("live: the observer ends after workflow_finish SUCCESS", last is not None and kind(last) == "workflow_finish"
          and last.workflow_finish.status == common_pb2.RUN_STATUS_SUCCESS, describe(last) if last else "no events")


def scenario_errors(addr, finished_run_id):
    print("-- errors", flush=True)
    channel, stub = open_channel(addr)
    try:
        if finished_run_id:
            expect_rpc_error(
                "errors: ResumeStream on a finished run is FAILED_PRECONDITION",
                grpc.StatusCode.FAILED_PRECONDITION,
                lambda: stub.ResumeStream(
                    service_pb2.ResumeStreamRequest(run_id=finished_run_id,
                                                    resume_data=to_value({"approved": True, "approver": "ada"})),
                    timeout=CALL_TIMEOUT,
                ),
            )
        else:
            check("errors: ResumeStream on a finished run is FAILED_PRECONDITION", False,
                  "no finished run (an earlier scenario failed)")
        expect_rpc_error(
            "errors: unknown workflow is NOT_FOUND",
            grpc.StatusCode.NOT_FOUND,
            lambda: stub.StreamRun(
                service_pb2.StreamRunRequest(workflow_id=f"no-such-workflow-{uuid.uuid4().hex[:8]}",
                                             input=to_value({})),
                timeout=CALL_TIMEOUT,
            ),
        )
        expect_rpc_error(
            "errors: bad input to chain is INVALID_ARGUMENT",
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: stub.StreamRun(
                service_pb2.StreamRunRequest(workflow_id="chain", input=to_value({"value": "x"})),
                timeout=CALL_TIMEOUT,
            ),
            message_contains="input.value",
        )
    finally:
        channel.close()


def run_scenario(name, fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # a crashed scenario is a failed check, the others still run
        traceback.print_exc()
        detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else repr(err)
        check(f"{name}: scenario completed", False, detail)
        return None


def scenario_limits(addr):
    channel = grpc.insecure_channel(addr)  # grpcio's defaults: 4 MiB per received message
    stub = service_pb2_grpc.RunServiceStub(channel)
    run_id = f"py-large-{uuid.uuid4()}"
    print(f"-- limits: order-approval with a ~2.5 MB orderId, run_id={run_id}", flush=True)
    big = {"orderId": "o" * 2_500_000, "amount": 5}
    events = list(stub.StreamRun(
        service_pb2.StreamRunRequest(workflow_id="order-approval", run_id=run_id, input=to_value(big)),
        timeout=CALL_TIMEOUT))
    check("limits: the large run suspends", kind(events[-1]) == "workflow_finish"
          and events[-1].workflow_finish.status == common_pb2.RUN_STATUS_SUSPENDED, describe(events[-1]))
    resumed = list(stub.ResumeStream(
        service_pb2.ResumeStreamRequest(run_id=run_id, resume_data=to_value({"approved": True, "approver": "ada"})),
        timeout=CALL_TIMEOUT))
    check("limits: the large run resumes to SUCCESS",
          resumed[-1].workflow_finish.status == common_pb2.RUN_STATUS_SUCCESS, describe(resumed[-1]))
    result = stub.GetResult(service_pb2.GetResultRequest(run_id=run_id), timeout=CALL_TIMEOUT)
    check("limits: GetResult of the large run is readable",
          from_value(result.result) == {"status": "approved by ada"} and result.ByteSize() < 4 * 1024 * 1024,
          f"{result.ByteSize()} bytes")
    check("limits: the input comes once", len(from_value(result.input)["orderId"]) == 2_500_000
          and not result.steps["prepare"].HasField("input") and not result.steps["prepare"].HasField("output"))
    try:
        stub.GetResult(service_pb2.GetResultRequest(run_id=run_id, fields=["input", "steps.input", "steps.output"]),
                       timeout=CALL_TIMEOUT)
        check("limits: a too large GetResult is refused", False, "it was answered")
    except grpc.RpcError as err:
        check("limits: a too large GetResult is RESOURCE_EXHAUSTED naming the limit",
              err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "4194304-byte response limit" in err.details()
              and "fields" in err.details(), f"{err.code().name}: {err.details()[:300]}")
    only = stub.GetResult(service_pb2.GetResultRequest(run_id=run_id, fields=["result"]), timeout=CALL_TIMEOUT)
    check("limits: fields=[result] gives just the result",
          from_value(only.result) == {"status": "approved by ada"} and not only.HasField("input") and not only.steps)
    try:
        list(stub.StreamRun(service_pb2.StreamRunRequest(
            workflow_id="order-approval", input=to_value({"orderId": "o" * 5_000_000, "amount": 5})),
            timeout=CALL_TIMEOUT))
        check("limits: a 5 MB request is refused", False, "it was accepted")
    except grpc.RpcError as err:
        check("limits: a 5 MB request is RESOURCE_EXHAUSTED naming the limit",
              err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "4194304-byte request limit" in err.details()
              and "--max-request-bytes" in err.details(), f"{err.code().name}: {err.details()[:300]}")
    try:
        list(stub.StreamRun(service_pb2.StreamRunRequest(
            workflow_id="order-approval", run_id=run_id, input=to_value({"orderId": "other", "amount": 5})),
            timeout=CALL_TIMEOUT))
        check("limits: a reused run id with other input is refused", False, "it attached")
    except grpc.RpcError as err:
        check("limits: a reused run id with other input is ALREADY_EXISTS",
              err.code() == grpc.StatusCode.ALREADY_EXISTS and "ObserveStream" in err.details(),
              f"{err.code().name}: {err.details()[:300]}")
    try:
        list(stub.StreamRun(service_pb2.StreamRunRequest(
            workflow_id="chain", input=to_value({"value": 1, "delayMS": 3000})), timeout=CALL_TIMEOUT))
        check("limits: a typo in the input is refused", False, "it ran")
    except grpc.RpcError as err:
        check("limits: a typo in the input is INVALID_ARGUMENT naming it",
              err.code() == grpc.StatusCode.INVALID_ARGUMENT and "input.delayMS" in err.details(),
              f"{err.code().name}: {err.details()[:300]}")
    channel.close()


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RUNSTREAM_ADDR")
    if not addr:
        print("usage: test_reconnect.py HOST:PORT (or set RUNSTREAM_ADDR)", file=sys.stderr)
        return 2
    print(f"runstream at {addr}", flush=True)
    flood_run = run_scenario("reconnect", scenario_reconnect, addr)
    order_run = run_scenario("suspend/resume", scenario_suspend_resume, addr)
    run_scenario("live", scenario_live_reattach, addr)
    run_scenario("errors", scenario_errors, addr, order_run or flood_run)
    run_scenario("limits", scenario_limits, addr)
    exit_with_summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
