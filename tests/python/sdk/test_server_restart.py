"""A Python worker holds tasks when the server is killed with SIGKILL: after the restart (same address, same data
directory) the worker reconnects by itself, the server revokes the attempts it held (it does not know them), the
recovered run queues the interrupted step's tasks again with the same idempotency keys, the worker runs them, and
the run completes with each step's result recorded once.

Usage: python test_server_restart.py WORKERS_EXAMPLE_BINARY DATA_DIR LEASE_MS

Prints one PASS/FAIL line per check; exits non-zero if any failed.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time
import traceback

import runstream
from checks import check, exit_with_summary
from test_workers import WorkerProcess, gapless, wait_for  # noqa: E402
import test_workers

BINARY, DATA_DIR, LEASE_MS = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
DEADLINE = 60.0


def start_server(listen, log):
    proc = subprocess.Popen(
        [BINARY, "--listen", listen, "--data-dir", str(DATA_DIR), "--lease-ms", LEASE_MS],
        stdout=subprocess.PIPE, stderr=open(DATA_DIR / log, "w"), text=True,
    )
    # The server prints this one line on stdout once it listens; nothing after it.
    line = proc.stdout.readline()
    if not line.startswith("runstream listening on "):
        proc.kill()
        raise AssertionError(f"the server did not start: {line!r}; see {DATA_DIR / log}")
    return proc, line.removeprefix("runstream listening on ").strip()


def main():
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    first, addr = start_server("127.0.0.1:0", "first.log")
    second = None
    test_workers.ADDR = addr
    test_workers.client = client = runstream.Client(addr, timeout=DEADLINE)
    worker = WorkerProcess("survivor", addr=addr, max_in_flight=4)
    try:
        worker.connected()
        run_id = client.start("thumbnails", {"images": 3, "ms": 50, "ms_first": 600_000})["runId"]
        wait_for("the worker to hold 3 resize tasks",
                 lambda: len([e for e in worker.lines() if e["event"] == "resize" and e["run"] == run_id]) == 3)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second, again = start_server(addr, "second.log")
        check("restart: on the same address", again == addr, again)
        result = client.result(run_id, wait=True, max_wait=DEADLINE, timeout=DEADLINE + 10)
        check("restart: the run completes with 3 thumbnails",
              result["status"] == "RUN_STATUS_SUCCESS" and result["result"] == {"thumbnails": 3}, result)
        resizes = [e for e in worker.lines() if e["event"] == "resize" and e["run"] == run_id]
        keys = sorted(e["key"] for e in resizes)
        check("restart: each resize ran twice with the same idempotency key",
              len(resizes) == 6 and keys[0::2] == keys[1::2] and len(set(keys)) == 3, keys)
        dropped = [e for e in worker.lines() if e["event"] == "resized" and e["run"] == run_id and e["cancelled"]]
        check("restart: the held attempts were revoked (ctx.cancelled)", len(dropped) == 3, dropped)
        log = worker.log_text()
        check("restart: the worker reconnected by itself and logged the revoked attempts",
              log.count("was revoked after the reconnect") == 3, log[-3000:])
        events = list(client.observe(run_id))
        check("restart: gapless seq", gapless(events)[0], gapless(events)[1])
        results = sorted(e["stepResult"]["stepId"] for e in events
                         if e.get("stepResult", {}).get("status") == "STEP_STATUS_SUCCESS")
        check("restart: each step's result recorded once", results == ["list", "report", "resize"], results)
        check("restart: the log has run_recovered", any("runRecovered" in e for e in events))
    finally:
        worker.stop()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    exit_with_summary()


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
