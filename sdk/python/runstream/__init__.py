"""runstream: stream workflow runs from a runstream server (`Client`) and run workflow steps in Python
(`Worker`). See the repository's README ("Your own workflow in Python, in five minutes") and docs/workers.md."""

from .client import Client
from .errors import NonRetryableError, OutputTooLarge, RunstreamError
from .worker import TaskContext, Worker

__version__ = "0.1.0"
__all__ = ["Client", "Worker", "TaskContext", "RunstreamError", "NonRetryableError", "OutputTooLarge"]
