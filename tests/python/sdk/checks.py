"""PASS/FAIL lines for the SDK test scripts: a line per check; `exit_with_summary()` exits non-zero if any failed."""

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
