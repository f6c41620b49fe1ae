"""PASS/FAIL lines for the SDK test scripts: a line per check; `exit_with_summary()` exits non-zero if any failed.
Also `stop(process)`, for the worker processes the scripts start."""

import subprocess
import sys

FAILURES = []


def check(name, ok, detail=""):
    if ok:
        print(f"PASS {name}", flush=True)
    else:
        FAILURES.append(name)
        print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


def exit_with_summary():
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
        sys.exit(1)
    print("all checks passed")


def stop(process, grace=10):
    """Ends a child process: SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
