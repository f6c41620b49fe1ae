"""`Worker`: runs remote steps of runstream workflows in this process (WorkerService.Connect, docs/workers.md).

Threads: `run()`'s thread reads the server's messages; a heartbeat thread renews the leases of the attempts this
worker runs; plain task functions run in a pool of `max_in_flight` threads and async ones on one asyncio loop of
their own. So a task that computes or sleeps never delays a heartbeat.
"""

import asyncio
import inspect
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
from .errors import NonRetryableError, OutputTooLarge
# Direct converters, not json_format: they are on every task's path (values.py).
from .values import field_python, json_value, to_python
from .v1 import common_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger("runstream.worker")

SDK = "runstream-python/0.1.0"
PROTOCOL_VERSION = 1
# Until the Welcome says otherwise (the server's defaults).
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A lost connection is detected by the stream failing; keepalive pings catch a peer that vanished silently.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


# `suspend` of `Worker._finish` when the function did not suspend (None is a payload).
_NOT_SUSPENDED = object()


class _Suspend(BaseException):
    """Raised by `TaskContext.suspend`; a BaseException so that a task's `except Exception` does not swallow it."""

    def __init__(self, payload):
        super().__init__("the step suspends")
        self.payload = payload


def _duration_seconds(d, default):
    seconds = d.seconds + d.nanos / 1e9
    return seconds if seconds > 0 else default


def _ref_key(ref):
    return (ref.task_id, ref.attempt, ref.lease_token)


class TaskContext:
    """What a task function gets besides its input: who it is, and how to stream, suspend and notice a cancel.

    Attributes: `task_type`, `run_id`, `workflow_id`, `step_id` (dotted path), `for_each_index` (None outside a
    foreach), `attempt` (1 for the first delivery, 2 after a redelivery, ...), `idempotency_key` (the same for every
    attempt of one execution of the step: use it to make side effects idempotent), `resume_data` (None unless the
    step is being resumed), `suspend_payload` (what it suspended with, when resumed), `request_context` (a dict),
    `task_id`, `worker_id`.
    """

    def __init__(self, worker, attempt, assign):
        self._worker = worker
        self._attempt = attempt
        self.task_id = assign.ref.task_id
        self.attempt = assign.ref.attempt
        self.task_type = assign.task_type
        self.run_id = assign.run_id
        self.workflow_id = assign.workflow_id
        self.step_id = assign.step_id
        self.for_each_index = assign.for_each_index if assign.HasField("for_each_index") else None
        self.resume_data = field_python(assign, "resume_data")
        self.suspend_payload = field_python(assign, "suspend_payload")
        self.request_context = {k: to_python(v) for k, v in assign.request_context.fields.items()}
        self.idempotency_key = assign.idempotency_key
        self.worker_id = worker.worker_id

    @property
    def cancelled(self):
        """True once the server canceled this attempt (the run was canceled, or the lease was lost and the task
        handed to another worker): stop, whatever is returned is not applied."""
        return self._attempt.cancelled.is_set()

    @property
    def cancel_reason(self):
        """Why it was canceled ("RUN_CANCELED", "LEASE_LOST", "STALE_ATTEMPT", ...), or None."""
        return self._attempt.cancel_reason

    def wait_cancelled(self, timeout=None):
        """Blocks until the attempt is canceled (True) or `timeout` seconds pass (False)."""
        return self._attempt.cancelled.wait(timeout)

    def write(self, value):
        """Streams `value` (JSON) as a `step_output` event of the step."""
        self._output(write=json_value(value, "ctx.write's value"))

    def custom(self, kind, data=None, id=None, transient=False):
        """Streams a `custom` event of the step (its kind prefixed with "data-" unless it is)."""
        chunk = worker_pb2.CustomChunk(kind=kind, id=id or "", transient=transient)
        if data is not None:
            chunk.data.CopyFrom(json_value(data, "ctx.custom's data"))
        self._output(custom=chunk)

    def progress(self, current, total=0, message=""):
        """Streams progress: a `custom` event of kind "data-progress" with data {current, total, message}."""
        self._output(progress=worker_pb2.Progress(current=current, total=total, message=message))

    def suspend(self, payload=None):
        """Ends the step suspended with `payload` (raises; the run suspends until a ResumeStream, whose data the
        next attempt gets as `ctx.resume_data`)."""
        raise _Suspend(payload)

    def _output(self, **chunk):
        self._worker._send_output(self._attempt, chunk)


class _Attempt:
    """One attempt this worker holds, from its Assign until the server acknowledged its result."""

    def __init__(self, worker, assign):
        self.ref = assign.ref
        self.assign = assign
        self.cancelled = threading.Event()
        self.cancel_reason = None
        # Set when the server refused a message about the attempt: its result will be dropped.
        self.rejected = None
        # The result message once the function ended, kept until the ResultAck (resent after a reconnect).
        self.result = None
        self.chunk_seq = 0
        # Set by `Worker._on_assign`, which fails the task if its values cannot be read.
        self.ctx = None

    def describe(self):
        return (
            f"task {self.ref.task_id} attempt {self.ref.attempt} ({self.assign.task_type}, step "
            f"{self.assign.step_id} of run {self.assign.run_id})"
        )


class _Session:
    """One Connect stream."""

    def __init__(self):
        self.outbox = queue.Queue()
        self.connected = False
        self.call = None


class Worker:
    """A worker process's connection to a runstream server.

        worker = runstream.Worker("localhost:50051", max_in_flight=4)

        @worker.task("resize-image")
        def resize(ctx, image):            # or `async def`
            ctx.write({"resizing": image["name"]})
            return {"name": image["name"], "width": 128}

        worker.run()                       # blocks; or worker.start() ... worker.stop()

    A task function gets a `TaskContext` and the step's input (JSON as Python values) and returns the step's
    output. An exception fails the attempt with its message (the step's retry policy applies, unless it is a
    `runstream.NonRetryableError`). The server never gives this worker more than `max_in_flight` tasks at once.
    After a lost connection the worker reconnects (backoff up to `reconnect_max` seconds) with the same
    `worker_id`, and keeps the tasks whose leases have not run out.
    """

    def __init__(self, address, max_in_flight=1, worker_id=None, *, name=None, labels=None, reconnect_max=5.0):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.address = address
        self.max_in_flight = max_in_flight
        self.worker_id = worker_id or str(uuid.uuid4())
        self.name = name or f"{socket.gethostname()}/{os.getpid()}"
        self.labels = dict(labels or {})
        self.reconnect_max = reconnect_max
        self._handlers = {}
        self._lock = threading.Lock()
        self._attempts = {}
        # Messages made while no session was connected, sent after the next Welcome.
        self._pending = []
        self._session = None
        self._stop = threading.Event()
        self._heartbeat_interval = DEFAULT_HEARTBEAT_INTERVAL
        self._heartbeat_wake = threading.Event()
        self._max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._thread = None
        self._pool = None
        self._loop = None

    def task(self, task_type):
        """Decorator: the function (plain or async) runs the tasks of `task_type`."""

        def register(fn):
            if not callable(fn):
                raise TypeError(f"@worker.task({task_type!r}) needs a function")
            self._handlers[task_type] = fn
            return fn

        return register

    # ---- lifecycle ----

    def run(self):
        """Connects and runs tasks until `stop()` (or Ctrl-C); reconnects after a lost connection."""
        if not self._handlers:
            raise ValueError("no task types: register a function with @worker.task(\"type\") first")
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="runstream-task")
        if any(inspect.iscoroutinefunction(fn) for fn in self._handlers.values()):
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="runstream-async", daemon=True).start()
        heartbeats = threading.Thread(target=self._heartbeats, name="runstream-heartbeat", daemon=True)
        heartbeats.start()
        backoff = 0.1
        try:
            while not self._stop.is_set():
                welcomed, reconnect_after, why = self._connect_once()
                if self._stop.is_set():
                    break
                if welcomed:
                    backoff = 0.1
                delay = reconnect_after if reconnect_after is not None else backoff * (0.5 + random.random())
                log.warning("worker %s: %s; reconnecting in %.1fs", self.worker_id, why, delay)
                self._stop.wait(delay)
                backoff = min(backoff * 2, self.reconnect_max)
        except KeyboardInterrupt:
            log.info("worker %s: interrupted", self.worker_id)
        finally:
            self._stop.set()
            self._heartbeat_wake.set()
            self._abandon_all("the worker stopped")
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)

    def start(self):
        """Runs the worker on a background thread; returns self."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the worker is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="runstream-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0, drain=False):
        """Closes the connection and stops. Tasks still running are abandoned: their leases run out and the server
        hands them to another worker. With `drain=True` it first asks for no more tasks (SetCapacity 0) and waits
        up to `timeout` seconds for the running ones to end and their results to be acknowledged."""
        if drain:
            self._send(worker_pb2.WorkerMessage(set_capacity=worker_pb2.SetCapacity(max_in_flight=0)))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with self._lock:
                    if not self._attempts:
                        break
                time.sleep(0.05)
            else:
                log.warning("worker %s: %d task(s) still running after %.1fs of draining", self.worker_id,
                            len(self._attempts), timeout)
        self._stop.set()
        self._heartbeat_wake.set()
        with self._lock:
            session = self._session
        if session is not None and session.call is not None:
            session.call.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- one Connect stream ----

    def _hello(self):
        with self._lock:
            held = [a.ref for a in self._attempts.values() if a.rejected is None]
        return worker_pb2.Hello(
            worker_id=self.worker_id,
            worker_name=self.name,
            sdk=SDK,
            protocol_version=PROTOCOL_VERSION,
            task_types=sorted(self._handlers),
            max_in_flight=self.max_in_flight,
            labels=self.labels,
            held=held,
        )

    def _connect_once(self):
        """One session: Hello, then the server's messages until the stream ends. Returns (whether a Welcome came,
        the server's reconnect delay if it drained, why it ended)."""
        session = _Session()
        hello = self._hello()

        def requests():
            yield worker_pb2.WorkerMessage(hello=hello)
            while True:
                message = session.outbox.get()
                if message is None:
                    return
                yield message

        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        welcomed, reconnect_after, why = False, None, "the stream ended"
        try:
            session.call = worker_pb2_grpc.WorkerServiceStub(channel).Connect(requests())
            with self._lock:
                self._session = session
            if self._stop.is_set():
                session.call.cancel()
            for message in session.call:
                kind = message.WhichOneof("msg")
                if kind == "welcome":
                    welcomed = True
                    self._on_welcome(session, message.welcome)
                elif kind == "drain":
                    reconnect_after = _duration_seconds(message.drain.reconnect_after, 1.0)
                    why = "the server is draining"
                else:
                    self._on_message(kind, message)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            why = f"connection lost ({code.name if code else 'error'}: {e.details() if hasattr(e, 'details') else e})"
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                log.error("worker %s: the server ended the stream: %s", self.worker_id, why)
        except Exception as e:  # noqa: BLE001  (a bug here must not stop the worker: start a new session)
            log.exception("worker %s: error while handling the server's messages", self.worker_id)
            why = f"internal error ({type(e).__name__}: {e})"
        finally:
            with self._lock:
                session.connected = False
                if self._session is session:
                    self._session = None
            session.outbox.put(None)
            channel.close()
        return welcomed, reconnect_after, why

    def _on_welcome(self, session, welcome):
        self._heartbeat_interval = _duration_seconds(welcome.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL)
        self._max_message_bytes = welcome.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        with self._lock:
            for r in welcome.revoked:
                attempt = self._attempts.get(r.task_id)
                if attempt is not None and attempt.ref.attempt == r.attempt:
                    log.warning("worker %s: %s was revoked after the reconnect; it is dropped",
                                self.worker_id, attempt.describe())
                    self._reject(attempt, "REVOKED")
            session.connected = True
            pending, self._pending = self._pending, []
            for attempt_id, message in pending:
                attempt = self._attempts.get(attempt_id[0])
                if attempt is not None and _ref_key(attempt.ref) == attempt_id and attempt.rejected is None:
                    session.outbox.put(message)
            resumed = {_ref_key(r) for r in welcome.resumed}
            for attempt in self._attempts.values():
                if _ref_key(attempt.ref) in resumed and attempt.result is not None:
                    session.outbox.put(attempt.result)
        self._heartbeat_wake.set()
        log.info("worker %s: connected to %s (session %s, %d task(s) resumed)", self.worker_id, self.address,
                 welcome.session_id, len(welcome.resumed))

    def _on_message(self, kind, message):
        if kind == "assign":
            self._on_assign(message.assign)
        elif kind == "cancel":
            r = message.cancel.ref
            reason = worker_pb2.CancelReason.Name(message.cancel.reason).removeprefix("CANCEL_REASON_")
            with self._lock:
                attempt = self._attempts.get(r.task_id)
                if attempt is None or attempt.ref.attempt != r.attempt:
                    return
                attempt.cancel_reason = attempt.cancel_reason or reason
            log.info("worker %s: %s canceled (%s)", self.worker_id, attempt.describe(), reason)
            attempt.cancelled.set()
        elif kind == "result_ack":
            r = message.result_ack.ref
            with self._lock:
                attempt = self._attempts.get(r.task_id)
                if attempt is not None and attempt.ref.attempt == r.attempt:
                    del self._attempts[r.task_id]
        elif kind == "reject":
            r, code = message.reject.ref, worker_pb2.RejectCode.Name(message.reject.code).removeprefix("REJECT_CODE_")
            with self._lock:
                attempt = self._attempts.get(r.task_id)
                if attempt is None or attempt.ref.attempt != r.attempt or attempt.rejected is not None:
                    return
                self._reject(attempt, code)
                done = attempt.result is not None
            if done:
                log.warning("worker %s: the result of %s is dropped: the server rejected it (%s: %s)",
                            self.worker_id, attempt.describe(), code, message.reject.message)
            else:
                log.warning("worker %s: the server rejected %s (%s: %s); it is canceled and its result will be "
                            "dropped", self.worker_id, attempt.describe(), code, message.reject.message)
        # ping, and message kinds this SDK does not know: nothing to do.

    def _reject(self, attempt, code):
        """Drops `attempt` (lock held): canceled for its function, forgotten unless the function still runs."""
        attempt.rejected = code
        attempt.cancel_reason = attempt.cancel_reason or code
        attempt.cancelled.set()
        if attempt.result is not None:
            self._attempts.pop(attempt.ref.task_id, None)

    def _abandon_all(self, why):
        with self._lock:
            attempts = list(self._attempts.values())
            self._attempts.clear()
        for attempt in attempts:
            attempt.rejected = attempt.rejected or "ABANDONED"
            attempt.cancel_reason = attempt.cancel_reason or "WORKER_STOPPED"
            attempt.cancelled.set()
        if attempts:
            log.warning("worker %s: %s with %d task(s) running; the server hands them on when their leases run out",
                        self.worker_id, why, len(attempts))

    # ---- sending ----

    def _send(self, message, attempt=None):
        """Sends on the current session, or keeps the message for the next one."""
        with self._lock:
            session = self._session
            if session is not None and session.connected:
                session.outbox.put(message)
            elif attempt is not None:
                self._pending.append((_ref_key(attempt.ref), message))

    def _heartbeats(self):
        while not self._stop.is_set():
            # A Welcome wakes it: its interval may be shorter than the one this wait began with.
            self._heartbeat_wake.wait(self._heartbeat_interval)
            self._heartbeat_wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                refs = [a.ref for a in self._attempts.values() if a.rejected is None]
                session = self._session
                if session is not None and session.connected:
                    session.outbox.put(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat(in_flight=refs)))

    def _send_output(self, attempt, chunk):
        with self._lock:
            if attempt.rejected is not None or attempt.result is not None:
                return
            attempt.chunk_seq += 1
            output = worker_pb2.TaskOutput(ref=attempt.ref, chunk_seq=attempt.chunk_seq, **chunk)
        message = worker_pb2.WorkerMessage(output=output)
        size = message.ByteSize()
        if size > self._max_message_bytes:
            # Sending it would end the stream (RESOURCE_EXHAUSTED) and with it every task of this worker.
            raise OutputTooLarge(
                f"this output chunk is {size} bytes encoded, over the server's message limit of "
                f"{self._max_message_bytes} bytes; send it in smaller pieces"
            )
        self._send(message, attempt)

    # ---- running tasks ----

    def _on_assign(self, assign):
        attempt = _Attempt(self, assign)
        with self._lock:
            self._attempts[assign.ref.task_id] = attempt
        self._send(worker_pb2.WorkerMessage(ack=worker_pb2.Ack(ref=assign.ref)), attempt)
        log.info("worker %s: running %s", self.worker_id, attempt.describe())
        fn = self._handlers.get(assign.task_type)
        if fn is None:
            # The server assigns only the types of the Hello; this is a server bug, not the user's.
            self._finish(attempt, error=RuntimeError(f"this worker has no function for {assign.task_type!r}"),
                         non_retryable=True)
            return
        try:
            attempt.ctx = TaskContext(self, attempt, assign)
            input = field_python(assign, "input")
        except Exception as e:  # noqa: BLE001  (this thread reads the stream: an escape would end the session)
            self._finish(attempt, error=ValueError(f"the task's input or context cannot be read: {e}"),
                         non_retryable=True)
            return
        if inspect.iscoroutinefunction(fn):
            asyncio.run_coroutine_threadsafe(self._run_async(attempt, fn, input), self._loop)
        else:
            self._pool.submit(self._run_sync, attempt, fn, input)

    # Whatever a task function raises ends its attempt with a Fail, BaseExceptions too (SystemExit from a task
    # on a pool thread would otherwise vanish into its future): an attempt left without a result keeps its lease
    # through the heartbeats and its run waits forever.

    def _run_sync(self, attempt, fn, input):
        try:
            output = fn(attempt.ctx, input)
        except _Suspend as s:
            self._finish(attempt, suspend=s.payload)
        except NonRetryableError as e:
            self._finish(attempt, error=e, non_retryable=True)
        except BaseException as e:  # noqa: BLE001
            self._finish(attempt, error=e)
        else:
            self._finish(attempt, output=output)

    async def _run_async(self, attempt, fn, input):
        try:
            output = await fn(attempt.ctx, input)
        except _Suspend as s:
            self._finish(attempt, suspend=s.payload)
        except NonRetryableError as e:
            self._finish(attempt, error=e, non_retryable=True)
        except BaseException as e:  # noqa: BLE001
            self._finish(attempt, error=e)
        else:
            self._finish(attempt, output=output)

    def _finish(self, attempt, **result):
        """Sends the attempt's result; never raises (it runs on pool threads and the asyncio loop, where nothing
        would catch it)."""
        try:
            self._send_result(attempt, **result)
        except Exception as e:  # noqa: BLE001
            log.exception("worker %s: could not send the result of %s", self.worker_id, attempt.describe())
            try:
                error = RuntimeError(f"the worker could not send the task's result ({type(e).__name__}: {e})")
                self._send_result(attempt, error=error)
            except Exception:  # noqa: BLE001
                # Nothing is left to send: forget the attempt so that its lease runs out and the server hands the
                # task on, rather than holding it forever.
                log.exception("worker %s: %s is dropped", self.worker_id, attempt.describe())
                with self._lock:
                    self._attempts.pop(attempt.ref.task_id, None)

    def _send_result(self, attempt, output=None, suspend=_NOT_SUSPENDED, error=None, non_retryable=False):
        ref = attempt.ref
        if attempt.rejected is not None:
            log.warning("worker %s: the result of %s is dropped: the server rejected the attempt (%s)",
                        self.worker_id, attempt.describe(), attempt.rejected)
            with self._lock:
                self._attempts.pop(ref.task_id, None)
            return
        try:
            if attempt.cancelled.is_set():
                message = worker_pb2.WorkerMessage(canceled=worker_pb2.Canceled(ref=ref))
            elif error is not None:
                message = self._fail(attempt, error, non_retryable)
            elif suspend is not _NOT_SUSPENDED:
                message = worker_pb2.WorkerMessage(suspend=worker_pb2.Suspend(
                    ref=ref, payload=json_value(suspend, "ctx.suspend's payload"), last_chunk_seq=attempt.chunk_seq))
            else:
                message = worker_pb2.WorkerMessage(complete=worker_pb2.Complete(
                    ref=ref, output=json_value(output, "the task's output"), last_chunk_seq=attempt.chunk_seq))
        except Exception as e:  # noqa: BLE001
            # Not JSON, an integer too large for a double, ...: the same value would fail again, so no retry.
            message = self._fail(attempt, e, non_retryable=True)
        size = message.ByteSize()
        if size > self._max_message_bytes:
            what = message.WhichOneof("msg")
            text = (
                f"the {'output' if what == 'complete' else what + ' payload'} of {attempt.describe()} is {size} "
                f"bytes encoded, over the server's message limit of {self._max_message_bytes} bytes; the step "
                "fails (return a smaller value, e.g. a reference to where the data is)"
            )
            log.error("worker %s: %s", self.worker_id, text)
            message = self._fail(attempt, OutputTooLarge(text), non_retryable=True)
        with self._lock:
            # Kept until its ResultAck; a reconnect in between sends it again (Welcome.resumed), so it is not
            # queued for the next session here.
            attempt.result = message
            session = self._session
            if session is not None and session.connected:
                session.outbox.put(message)

    def _fail(self, attempt, error, non_retryable=False):
        try:
            text = str(error) or type(error).__name__
        except Exception:  # noqa: BLE001  (an exception class of the user's whose __str__ raises)
            text = f"{type(error).__name__} (its message could not be formatted)"
        if not isinstance(error, (NonRetryableError, OutputTooLarge)):
            log.warning("worker %s: %s failed: %s: %s", self.worker_id, attempt.describe(), type(error).__name__,
                        text)
        info = common_pb2.ErrorInfo(name=type(error).__name__, message=text)
        fail = worker_pb2.Fail(ref=attempt.ref, error=info, non_retryable=non_retryable,
                               last_chunk_seq=attempt.chunk_seq)
        return worker_pb2.WorkerMessage(fail=fail)
