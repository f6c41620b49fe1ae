"""Python workers (runstream.Worker, in real processes: worker.py) against examples/workers.rs's server.

Usage: python test_workers.py HOST:PORT LEASE_MS   (the server runs with --lease-ms LEASE_MS)

Scenarios, one after the other (each stops its workers, so the next one's tasks go to its own):
  no_worker        a run with no worker shows step_waiting NO_WORKER, then runs when one connects; gapless seq
  max_in_flight    a foreach of 10 at concurrency 10 through a worker of max_in_flight 3: never more than 3 at once;
                   the worker's writes, progress and custom chunks are events of its step
  kill9            a worker killed with SIGKILL mid-step: the step goes to another worker after the lease
                   (step_start attempt 2, same idempotency key) and the run succeeds
  reconnect        the connection cut (a TCP proxy closed) and restored within the lease: the worker keeps its task,
                   no redelivery, while its task sleeps longer than the lease (heartbeats go on)
  cancel           CancelRun mid-step reaches the worker: ctx.cancelled, reason RUN_CANCELED
  suspend          a worker suspends its step; ResumeStream's data reaches the next attempt as ctx.resume_data
  late_result      a worker stopped (SIGSTOP) past its lease, continued while attempt 2 runs: its late result is
                   rejected (STALE_ATTEMPT, logged and dropped) and attempt 2's is the step's
  oversized        an output over the server's message limit: a clear error in the worker's log, the step fails
                   saying so; an oversized ctx.write raises OutputTooLarge in the task, which goes on; the same
                   connection serves the next run
  non_retryable    runstream.NonRetryableError fails the step at once with its message
  drain            Worker.stop(drain=True) (SIGTERM in worker.py) finishes the running task, takes no new one, exits

Prints one PASS/FAIL line per check; exits non-zero if any failed.
"""

import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import runstream
from checks import check, exit_with_summary

HERE = pathlib.Path(__file__).resolve().parent
# Set by main() (or by a script that imports this one's helpers).
ADDR = os.environ.get("RUNSTREAM_ADDR", "127.0.0.1:50051")
LEASE = 3.0
client = None
DEADLINE = 30.0
TMP = pathlib.Path(tempfile.mkdtemp(prefix="runstream-sdk-workers-"))


def wait_for(what, predicate, timeout=DEADLINE, every=0.05):
    """Polls `predicate` until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class WorkerProcess:
    def __init__(self, name, addr=None, max_in_flight=1):
        addr = addr or ADDR
        self.id = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.events = TMP / f"{self.id}.events"
        self.log = TMP / f"{self.id}.log"
        self.events.touch()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "worker.py"), addr, "--id", self.id, "--events", str(self.events),
                 "--max-in-flight", str(max_in_flight)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def connected(self):
        return wait_for(f"worker {self.id} in ListWorkers",
                        lambda: [w for w in client.list_workers() if w["workerId"] == self.id])[0]

    def lines(self):
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]

    def wait_event(self, event, **match):
        def found():
            return [e for e in self.lines() if e["event"] == event and all(e.get(k) == v for k, v in match.items())]
        return wait_for(f"{event} {match} from {self.id}", found)[0]

    def log_text(self):
        return self.log.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


class Stream:
    """A stream's events, read on a thread into a queue."""

    def __init__(self, events):
        self.events = []
        self.queue = queue.Queue()
        self.error = None

        def read():
            try:
                for event in events:
                    self.events.append(event)
                    self.queue.put(event)
            except Exception as e:  # noqa: BLE001  (reported by the check that needs the stream)
                self.error = e
            self.queue.put(None)

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def until(self, predicate, timeout=DEADLINE):
        end = time.monotonic() + timeout
        while True:
            event = self.queue.get(timeout=max(0.0, end - time.monotonic()))
            if event is None:
                raise AssertionError(f"the stream ended first ({self.error})")
            if predicate(event):
                return event

    def all(self, timeout=DEADLINE):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the stream did not end within {timeout}s")
        if self.error:
            raise self.error
        return self.events


def gapless(events, start=1):
    seqs = [int(e["seq"]) for e in events]
    return seqs == list(range(start, start + len(seqs))), seqs


def finish(events):
    return events[-1].get("workflowFinish", {}) if events else {}


def step_result(events, step):
    return next((e["stepResult"] for e in events if e.get("stepResult", {}).get("stepId") == step), {})


def step_starts(events, step):
    return [e["stepStart"].get("attempt", 0) for e in events if e.get("stepStart", {}).get("stepId") == step]


# ---------------------------------------------------------------------------------------------------------------

def scenario_no_worker():
    stream = Stream(client.stream("thumbnails", {"images": 2}))
    waiting = stream.until(lambda e: "stepWaiting" in e)
    check("no_worker: step_waiting NO_WORKER for list-images",
          waiting["stepWaiting"].get("reason") == "WAIT_REASON_NO_WORKER"
          and waiting["stepWaiting"].get("taskType") == "list-images", waiting)
    worker = WorkerProcess("late-joiner")
    try:
        events = stream.all()
        ok, seqs = gapless(events)
        check("no_worker: gapless seq from 1", ok, seqs)
        check("no_worker: the run succeeds once a worker connects",
              finish(events).get("status") == "RUN_STATUS_SUCCESS" and finish(events).get("result") == {"thumbnails": 2},
              finish(events))
        check("no_worker: the worker ran the step", any(e["task"] == "list-images" for e in worker.lines()))
    finally:
        worker.stop()


def scenario_max_in_flight():
    worker = WorkerProcess("busy", max_in_flight=3)
    try:
        worker.connected()
        stream = Stream(client.stream("thumbnails", {"images": 10, "ms": 300}))
        seen_in_flight = []
        while stream.thread.is_alive():
            seen_in_flight += [w["inFlight"] for w in client.list_workers("resize-image") if w["workerId"] == worker.id]
            stream.thread.join(0.05)
        events = stream.all()
        check("max_in_flight: the run succeeds with 10 thumbnails",
              finish(events).get("result") == {"thumbnails": 10}, finish(events))
        actives = [e["active"] for e in worker.lines() if e["event"] == "resize"]
        check("max_in_flight: 10 resizes, never more than 3 at once, 3 at some point",
              len(actives) == 10 and max(actives) == 3, actives)
        check("max_in_flight: ListWorkers never showed more than 3 in flight", max(seen_in_flight, default=0) <= 3,
              seen_in_flight)
        progress = [e for e in events if "stepProgress" in e]
        check("max_in_flight: 10 foreach progress events", len(progress) == 10, len(progress))
        list_events = [e for e in events if e.get("stepId") == "list"]
        kinds = [k for e in list_events for k in ("stepOutput", "custom") if k in e]
        check("max_in_flight: the worker's write, progress and custom chunk are events of its step",
              kinds == ["stepOutput", "custom", "custom"]
              and list_events[1]["stepOutput"]["output"] == {"listing": 10}
              and [e["custom"]["type"] for e in list_events if "custom" in e] == ["data-progress", "data-note"],
              list_events)
        check("max_in_flight: gapless seq", gapless(events)[0], gapless(events)[1])
    finally:
        worker.stop()


def scenario_kill9():
    first = WorkerProcess("doomed")
    second = None
    try:
        first.connected()
        run_id = client.start("thumbnails", {"mode": "sleep", "ms": 60_000, "ms_retry": 10})["runId"]
        started = first.wait_event("start", run=run_id)
        second = WorkerProcess("heir")
        second.connected()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        result = client.result(run_id, wait=True, max_wait=DEADLINE)
        check("kill9: the run succeeds", result["status"] == "RUN_STATUS_SUCCESS", result)
        retried = second.wait_event("start", run=run_id)
        check("kill9: the other worker got attempt 2 with the same idempotency key",
              retried["attempt"] == 2 and retried["key"] == started["key"] and started["attempt"] == 1,
              (started, retried))
        events = list(client.observe(run_id))
        check("kill9: step_start of list shows attempts 1 then 2", step_starts(events, "list") == [1, 2],
              step_starts(events, "list"))
        output = step_result(events, "list").get("output", [{}])[0]
        check("kill9: the step's output is attempt 2's", output.get("attempt") == 2 and output.get("worker") == second.id,
              output)
        check("kill9: gapless seq", gapless(events)[0], gapless(events)[1])
    finally:
        first.stop()
        if second:
            second.stop()


class Proxy:
    """A TCP proxy to the server that can be cut (every connection and the listener closed) and restored on the
    same port."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.sockets = []
        self.lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.restore()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def restore(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client_side, _ = listener.accept()
            except OSError:
                return
            server_side = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client_side, server_side]
            for a, b in ((client_side, server_side), (server_side, client_side)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        # shutdown() wakes the accept() blocked on it (close() alone would leave the socket listening).
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def scenario_reconnect():
    proxy = Proxy(ADDR)
    worker = WorkerProcess("flaky", addr=proxy.addr)
    try:
        worker.connected()
        # The task outlasts the lease, and the connection is down for a third of it.
        run_id = client.start("thumbnails", {"mode": "sleep", "ms": int(LEASE * 1000 * 1.5)})["runId"]
        worker.wait_event("start", run=run_id)
        proxy.cut()
        time.sleep(LEASE / 3)  # the outage itself: nothing to wait for
        proxy.restore()
        result = client.result(run_id, wait=True, max_wait=DEADLINE)
        check("reconnect: the run succeeds", result["status"] == "RUN_STATUS_SUCCESS", result)
        events = list(client.observe(run_id))
        check("reconnect: no redelivery (one step_start, attempt 1)", step_starts(events, "list") == [1],
              step_starts(events, "list"))
        starts = [e for e in worker.lines() if e["event"] == "start"]
        check("reconnect: the worker ran the task once", len(starts) == 1, starts)
        log = worker.log_text()
        check("reconnect: the worker reconnected and the server handed its task back",
              "connection lost" in log and "1 task(s) resumed" in log, log[-2000:])
    finally:
        worker.stop()
        proxy.cut()


def scenario_cancel():
    worker = WorkerProcess("cancelee")
    try:
        worker.connected()
        run_id = client.start("thumbnails", {"mode": "cancel"})["runId"]
        worker.wait_event("start", run=run_id)
        answer = client.cancel(run_id)
        check("cancel: CancelRun canceled the run", answer["canceled"] is True, answer)
        seen = worker.wait_event("cancelled", run=run_id)
        check("cancel: ctx.cancelled became true with reason RUN_CANCELED", seen.get("reason") == "RUN_CANCELED", seen)
        result = client.result(run_id, wait=True, max_wait=DEADLINE)
        check("cancel: the run is CANCELED", result["status"] == "RUN_STATUS_CANCELED", result)
    finally:
        worker.stop()


def scenario_suspend():
    worker = WorkerProcess("asker")
    try:
        worker.connected()
        events = list(client.stream("thumbnails", {"mode": "suspend"}))
        run_id = events[0]["runId"]
        suspended = next((e["stepSuspended"] for e in events if "stepSuspended" in e), {})
        check("suspend: the run suspends with the worker's payload",
              finish(events).get("status") == "RUN_STATUS_SUSPENDED"
              and suspended.get("suspendPayload") == {"question": "approve?"}, (finish(events), suspended))
        resumed = list(client.resume_stream(run_id, {"approved": True}, step="list"))
        check("suspend: the resumed phase continues the numbering", gapless(resumed, int(events[-1]["seq"]) + 1)[0],
              gapless(resumed, int(events[-1]["seq"]) + 1)[1])
        check("suspend: the run succeeds", finish(resumed).get("status") == "RUN_STATUS_SUCCESS", finish(resumed))
        starts = [e for e in worker.lines() if e["event"] == "start" and e["run"] == run_id]
        check("suspend: the next attempt got ctx.resume_data and its suspend payload, key with /r1",
              len(starts) == 2 and starts[0]["resume_data"] is None
              and starts[1]["resume_data"] == {"approved": True}
              and starts[1]["suspend_payload"] == {"question": "approve?"}
              and starts[1]["key"] == starts[0]["key"] + "/r1", starts)
    finally:
        worker.stop()


def scenario_late_result():
    stale = WorkerProcess("sleeper")
    fresh = None
    try:
        stale.connected()
        # Attempt 1 would end after 1.5 leases; attempt 2 takes 2 leases, so attempt 1's result comes while
        # attempt 2 is current.
        run_id = client.start(
            "thumbnails", {"mode": "late", "ms": int(LEASE * 1500), "ms_retry": int(LEASE * 2000)})["runId"]
        stale.wait_event("start", run=run_id)
        stale.proc.send_signal(signal.SIGSTOP)
        fresh = WorkerProcess("replacement")
        fresh.connected()
        fresh.wait_event("start", run=run_id, attempt=2)
        stale.proc.send_signal(signal.SIGCONT)
        log = wait_for("the stopped worker's STALE_ATTEMPT log line",
                       lambda: "STALE_ATTEMPT" in stale.log_text() and stale.log_text())
        check("late_result: the late attempt was rejected STALE_ATTEMPT and its result dropped",
              "dropped" in log, log[-2000:])
        result = client.result(run_id, wait=True, max_wait=DEADLINE)
        check("late_result: the run succeeds", result["status"] == "RUN_STATUS_SUCCESS", result)
        events = list(client.observe(run_id))
        output = step_result(events, "list").get("output", [{}])[0]
        check("late_result: the step's output is attempt 2's", output.get("attempt") == 2
              and output.get("worker") == fresh.id, output)
        check("late_result: one step_result for the step",
              sum(1 for e in events if e.get("stepResult", {}).get("stepId") == "list") == 1)
    finally:
        stale.stop()
        if fresh:
            fresh.stop()


def scenario_oversized():
    worker = WorkerProcess("hoarder")
    try:
        session = worker.connected()["sessionId"]
        events = list(client.stream("thumbnails", {"mode": "big", "bytes": 5_000_000}))
        result = step_result(events, "list")
        message = result.get("error", {}).get("message", "")
        check("oversized: the step fails saying the output is over the message limit",
              finish(events).get("status") == "RUN_STATUS_FAILED" and "over the server's message limit" in message,
              (finish(events), result))
        check("oversized: the worker's log names the error", "over the server's message limit" in worker.log_text(),
              worker.log_text()[-2000:])
        events = list(client.stream("thumbnails", {"mode": "bigwrite", "bytes": 5_000_000}))
        refused = [e for e in worker.lines() if e["event"] == "too-large"]
        check("oversized: an oversized ctx.write raises OutputTooLarge in the task, naming the limit",
              len(refused) == 1 and "over the server's message limit" in refused[0]["message"], refused)
        outputs = [e["stepOutput"]["output"] for e in events if "stepOutput" in e]
        check("oversized: the task goes on, its next write streams and the run succeeds",
              outputs == [{"after": "the refused write"}] and finish(events).get("status") == "RUN_STATUS_SUCCESS",
              (outputs, finish(events)))
        events = list(client.stream("thumbnails", {"images": 2}))
        check("oversized: the same worker serves the next run", finish(events).get("status") == "RUN_STATUS_SUCCESS",
              finish(events))
        check("oversized: on the same connection", worker.connected()["sessionId"] == session)
    finally:
        worker.stop()


def scenario_non_retryable():
    worker = WorkerProcess("refuser")
    try:
        worker.connected()
        events = list(client.stream("thumbnails", {"mode": "fail", "bucket": "photos"}))
        error = step_result(events, "list").get("error", {})
        check("non_retryable: the step fails with the exception's message, once",
              finish(events).get("status") == "RUN_STATUS_FAILED" and error.get("message") == "no images in photos"
              and step_starts(events, "list") == [1], (error, step_starts(events, "list")))
    finally:
        worker.stop()


def scenario_drain():
    leaving = WorkerProcess("leaving")
    staying = None
    try:
        leaving.connected()
        run_id = client.start("thumbnails", {"mode": "sleep", "ms": 1500})["runId"]
        leaving.wait_event("start", run=run_id)
        leaving.proc.send_signal(signal.SIGTERM)
        code = leaving.proc.wait(DEADLINE)
        check("drain: the worker finished its task and exited 0", code == 0
              and [e["cancelled"] for e in leaving.lines() if e["event"] == "end"] == [False], (code, leaving.lines()))
        check("drain: it took no new task while draining", not [e for e in leaving.lines() if e["task"] != "list-images"],
              leaving.lines())
        staying = WorkerProcess("staying")
        result = client.result(run_id, wait=True, max_wait=DEADLINE)
        check("drain: another worker takes the next step; the run succeeds", result["status"] == "RUN_STATUS_SUCCESS",
              result)
        events = list(client.observe(run_id))
        check("drain: the drained step was not redelivered", step_starts(events, "list") == [1],
              step_starts(events, "list"))
    finally:
        leaving.stop()
        if staying:
            staying.stop()


SCENARIOS = [scenario_no_worker, scenario_max_in_flight, scenario_kill9, scenario_reconnect, scenario_cancel,
             scenario_suspend, scenario_late_result, scenario_oversized, scenario_non_retryable, scenario_drain]


def main():
    global ADDR, LEASE, client
    if len(sys.argv) > 1:
        ADDR = sys.argv[1]
    if len(sys.argv) > 2:
        LEASE = int(sys.argv[2]) / 1000
    client = runstream.Client(ADDR, timeout=DEADLINE)
    only = os.environ.get("SDK_SCENARIO")
    for scenario in SCENARIOS:
        name = scenario.__name__.removeprefix("scenario_")
        if only and name != only:
            continue
        started = time.monotonic()
        try:
            scenario()
        except Exception:  # noqa: BLE001
            check(name, False, traceback.format_exc())
        print(f"  ({name}: {time.monotonic() - started:.1f}s)", flush=True)
    print(f"worker logs in {TMP}")
    exit_with_summary()


if __name__ == "__main__":
    main()
