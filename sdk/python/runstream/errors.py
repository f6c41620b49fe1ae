"""The exceptions of the SDK."""

import grpc


class RunstreamError(Exception):
    """A call the server answered with an error: `code` (a grpc.StatusCode) and the server's `message`."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error):
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


class NonRetryableError(Exception):
    """Raise it from a task to fail the step at once: the step's retry policy does not apply."""


class OutputTooLarge(ValueError):
    """A write or an output is larger than the server accepts in one message (Welcome.max_message_bytes)."""
