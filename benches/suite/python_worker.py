"""The `workers` scenario's Python worker (benches/suite/workers.rs starts it): one `runstream.Worker` that
answers every task of TASK_TYPE with its input at once, so the figure is the SDK's and the protocol's cost.

usage: python python_worker.py ADDR TASK_TYPE MAX_IN_FLIGHT   (runs until killed)
"""

import os
import sys

import runstream


def main():
    addr, task_type, in_flight = sys.argv[1], sys.argv[2], int(sys.argv[3])
    worker = runstream.Worker(addr, max_in_flight=in_flight, worker_id=f"bench-python-{os.getpid()}")

    @worker.task(task_type)
    def echo(ctx, value):
        return value

    worker.run()


if __name__ == "__main__":
    main()
