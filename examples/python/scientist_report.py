"""Report a pipeline's progress to the `scientist work` that runs it. Standard library only:
copy this file next to your pipeline, or put examples/python on PYTHONPATH.

    from scientist_report import report

    report.progress("Stage_1", iteration=3, max_iterations=14, good_nodes=3, buggy_nodes=1)
    report.node("n7", "completed", stage="Stage_1", parent_id="n3", is_buggy=False, metric=0.91)
    report.metric("val_loss", 0.25, step=3)
    report.llm_usage("gpt-5-mini", input_tokens=1200, output_tokens=300, cached_tokens=800)
    report.artifact("/tmp/loss.png")          # copied into the run directory, then uploaded

The worker gives every stage SCIENTIST_EMIT_URL (its local endpoint), SCIENTIST_TOKEN and
SCIENTIST_RUN_ID. Events are queued in memory and posted in NDJSON batches by a background
thread: when BATCH_SIZE are waiting, every FLUSH_INTERVAL seconds, and once more at exit. The
endpoint answers once the worker has them on disk, so nothing here waits for the control plane.

Outside `scientist work` (no SCIENTIST_EMIT_URL) every call does nothing. No call ever raises
into the pipeline: a problem is written to stderr (the first at once, then at most one line a
minute with a count). If the endpoint cannot be reached, at most MAX_PENDING events wait; past
that the oldest are dropped and counted. Events the endpoint refuses are dropped with the
reason on stderr (docs/events.md says what each type takes).
"""

import atexit
import collections
import contextlib
import json
import multiprocessing.util
import os
import random
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Reporter", "report"]

BATCH_SIZE = 100
FLUSH_INTERVAL = 1.0
MAX_PENDING = 10_000
# The endpoint takes at most 1000 events a request.
MAX_BATCH = 1000
TIMEOUT = 10.0
# At exit, the queue gets this long to drain before what is left is given up (and counted).
EXIT_DEADLINE = 10.0
# Between failed posts the thread waits longer each time, up to this.
MAX_BACKOFF = 30.0
# After the first problem, at most one stderr line this often.
WARN_INTERVAL = 60.0

NODE_STEPS = ("created", "code_generated", "executing", "completed", "selected_best")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid():
    """A ULID (time-ordered, unique): the event id scientist expects."""
    value = (int(time.time() * 1000) << 80) | random.getrandbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _now():
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)


def _drop_none(fields):
    return {name: value for name, value in fields.items() if value is not None}


class _Retry(Exception):
    """A post that may succeed later (the endpoint is down or busy)."""


class _GiveUp(Exception):
    """A post that never will (a malformed URL, a wrong token): reporting stops."""


class Reporter:
    """Sends one run's events to the worker's local endpoint. `report` is the one a pipeline
    uses; make your own only to change the settings or in tests."""

    def __init__(self, url=None, token=None, run_id=None, *, stage=None, source=None,
                 batch_size=BATCH_SIZE, flush_interval=FLUSH_INTERVAL, max_pending=MAX_PENDING,
                 timeout=TIMEOUT, exit_deadline=EXIT_DEADLINE, environ=None):
        env = os.environ if environ is None else environ
        self.url = (env.get("SCIENTIST_EMIT_URL", "") if url is None else url).rstrip("/")
        self.token = env.get("SCIENTIST_TOKEN", "") if token is None else token
        self.run_id = env.get("SCIENTIST_RUN_ID", "") if run_id is None else run_id
        # The stage the worker runs now (unset for a whole-run command): the default stage.
        self.current_stage = (env.get("SCIENTIST_STAGE") or None) if stage is None else stage
        self.source = source or "python://%s/%d" % (socket.gethostname(), os.getpid())
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.flush_interval = flush_interval
        self.max_pending = max(1, max_pending)
        self.timeout = timeout
        self.exit_deadline = exit_deadline
        self._warned_at = None
        self._unwarned = 0
        self.enabled = bool(self.url and self.run_id)
        if self.enabled:
            try:
                parts = urllib.parse.urlsplit(self.url)
                parts.port  # raises ValueError for a port that is not a number
                usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                usable = False
            if not usable:
                self.enabled = False
                self._warn("SCIENTIST_EMIT_URL %r is not an http:// URL: nothing is reported" % self.url)
        self.dropped = 0
        self._reset_delivery()
        self._closed = False
        self._own_source = source is None
        if self.enabled:
            atexit.register(self.close)
            self._flush_at_process_exit()
            # A forked child starts with no thread: it gets its own, and does not send again
            # what its parent still had waiting.
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=self._after_fork)
            multiprocessing.util.register_after_fork(self, Reporter._flush_at_process_exit)

    # ---- what a pipeline reports -------------------------------------------------------

    def progress(self, stage=None, iteration=None, max_iterations=None, *, progress=None,
                 good_nodes=None, buggy_nodes=None, total_nodes=None, best_metric=None,
                 eta_s=None, **extra):
        """`ai.run.stage_progress`. `progress` (0 to 1) is iteration / max_iterations when
        not given."""
        if progress is None and iteration is not None and max_iterations:
            progress = min(1.0, max(0.0, iteration / max_iterations))
        if best_metric is not None and not isinstance(best_metric, (int, float, str)):
            best_metric = str(best_metric)
        self.emit("ai.run.stage_progress", stage=self._stage(stage), iteration=iteration,
                  max_iterations=max_iterations, progress=progress, good_nodes=good_nodes,
                  buggy_nodes=buggy_nodes, total_nodes=total_nodes, best_metric=best_metric,
                  eta_s=eta_s, **extra)

    def node(self, node_id, step="completed", *, stage=None, parent_id=None, is_buggy=None,
             metric=None, summary=None, **extra):
        """`ai.node.<step>`: one step of a search-tree node (created, code_generated,
        executing, completed, selected_best)."""
        if step not in NODE_STEPS:
            return self._warn("report.node: step %r is not one of %s" % (step, ", ".join(NODE_STEPS)))
        self.emit("ai.node." + step, stage=self._stage(stage), node_id=str(node_id),
                  parent_id=None if parent_id is None else str(parent_id), is_buggy=is_buggy,
                  metric=metric, summary=summary, **extra)

    def metric(self, name, value, step=None, *, stage=None, **extra):
        """`ai.run.stage_metric`: one point of the series `name`."""
        self.emit("ai.run.stage_metric", name=name, value=value, step=step,
                  stage=self._stage(stage), **extra)

    def llm_usage(self, model, input_tokens, output_tokens, cached_tokens=0, cost_usd=None,
                  stage=None, node_id=None, **extra):
        """`ai.llm.usage`: tokens of one call or many. `input_tokens` includes the cached
        ones; `cost_usd`, when known, wins over the worker's price file."""
        self.emit("ai.llm.usage", model=model, input_tokens=input_tokens,
                  output_tokens=output_tokens, cached_tokens=cached_tokens, cost_usd=cost_usd,
                  stage=self._stage(stage), node_id=node_id, **extra)

    def artifact(self, path, name=None):
        """Makes `path` part of the run: a file outside the run directory is copied into it
        (as `name`, default its file name); the worker uploads and registers it once it
        settles, if it is a kind the worker collects (plots, PDFs, checkpoints, configs,
        metrics.json, .npy). Returns its path in the run directory, or None."""
        if not self.enabled:
            return None
        try:
            run_dir = os.path.realpath(os.environ.get("SCIENTIST_RUN_DIR") or os.getcwd())
            source = os.path.realpath(path)
            if os.path.commonpath([run_dir, source]) == run_dir:
                return os.path.relpath(source, run_dir)
            relative = os.path.normpath(name or os.path.basename(source))
            if relative.startswith(("..", "/")):
                return self._warn("report.artifact: name %r leaves the run directory" % name)
            target = os.path.join(run_dir, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # A hidden temporary name, renamed into place: the worker never sees half a file.
            partial = os.path.join(os.path.dirname(target), ".%s.%s.part" % (os.path.basename(target), _ulid()))
            shutil.copyfile(source, partial)
            os.replace(partial, target)
            return relative
        except OSError as err:
            return self._warn("report.artifact: cannot add %s to the run: %s" % (path, err))

    def stage_started(self, stage, desc=None, stall_after_s=None):
        """`ai.run.stage_started`, for a pipeline run as one command (the worker reports the
        stages of a [[stage]] pipeline itself)."""
        self.current_stage = stage
        self.emit("ai.run.stage_started", stage=stage, desc=desc, stall_after_s=stall_after_s)

    def stage_completed(self, stage, duration_s=None):
        self.emit("ai.run.stage_completed", stage=stage, duration_s=duration_s)

    @contextlib.contextmanager
    def stage(self, stage, desc=None, stall_after_s=None):
        """`with report.stage("plots"):` reports the start, and the end with its duration when
        the block returns (an exception propagates: the worker reports the failure)."""
        started = time.monotonic()
        self.stage_started(stage, desc, stall_after_s)
        yield self
        self.stage_completed(stage, round(time.monotonic() - started, 3))

    def log(self, message, level="info"):
        """`ai.run.log` (print() reaches the run's log too: the worker relays stdout)."""
        self.emit("ai.run.log", message=str(message), level=level, source="report")

    def review(self, reason, options=None):
        """`ai.run.review_requested`: ask a person (`scientist runs approve|reject`)."""
        self.emit("ai.run.review_requested", reason=reason, options=options)

    def failed(self, code, message, *, stage=None, traceback=None, retryable=False):
        """`ai.run.failed` with the pipeline's own code (e.g. ALL_NODES_BUGGY); the worker
        then does not report its own when the command exits non-zero. Sent at once."""
        self.emit("ai.run.failed", code=code, message=message, stage=self._stage(stage),
                  traceback=traceback, retryable=retryable)
        self.flush()

    def paper_started(self, artifact_key=None):
        self.emit("ai.paper.started", artifact_key=artifact_key)

    def paper_generated(self, artifact_key):
        """`artifact_key` is the paper's key as the worker stores it: `runs/<run>/<path>`
        under the --artifacts prefix (see `artifact_key`)."""
        self.emit("ai.paper.generated", artifact_key=artifact_key)

    def validation_started(self, model=None):
        self.emit("ai.validation.auto_started", model=model)

    def validation_completed(self, verdict=None, scores=None, review=None):
        self.emit("ai.validation.auto_completed", verdict=verdict, scores=scores, review=review)

    def artifact_key(self, relative, prefix=""):
        """The key the worker uploads `relative` (a path in the run directory) under, with
        the --artifacts prefix `prefix` (none by default)."""
        parts = [part for part in (prefix.strip("/"), "runs", self.run_id, relative) if part]
        return "/".join(parts)

    def emit(self, event_type, **data):
        """Queues one event of `event_type`; fields left None are not sent."""
        if not self.enabled or self._closed:
            return
        try:
            data = _drop_none(data)
            data["run_id"] = self.run_id
            event = {"specversion": "1.0", "id": _ulid(), "source": self.source, "type": event_type,
                     "subject": "run/" + self.run_id, "time": _now(),
                     "datacontenttype": "application/json", "data": data}
            line = json.dumps(event, default=str, allow_nan=False)
        except (TypeError, ValueError) as err:
            return self._warn("%s not sent: its data is not JSON (%s)" % (event_type, err))
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
                overflowed = True
            else:
                overflowed = False
            self._pending.append(line)
            self._start()
            if len(self._pending) >= self.batch_size:
                self._wake.notify_all()
        if overflowed:
            self._warn("more than %d events wait for %s: the oldest are dropped (%d so far)"
                       % (self.max_pending, self.url, self.dropped))

    # ---- delivery -----------------------------------------------------------------------

    def flush(self, timeout=None):
        """Waits until every queued event was posted (or given up), at most `timeout`
        seconds (default: the exit deadline). True when nothing is left."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + (self.exit_deadline if timeout is None else timeout)
        with self._lock:
            self._flushing += 1
            try:
                self._start()
                self._wake.notify_all()
                while (self._pending or self._sending) and self._thread is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._wake.wait(left)
                return not self._pending
            finally:
                self._flushing -= 1

    def close(self):
        """Sends what waits (at exit: registered with atexit) and stops reporting."""
        if not self.enabled or self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True
            left = len(self._pending)
            self._pending.clear()
            self._wake.notify_all()
        if left:
            self._warn("%d events were not delivered to %s before exit" % (left, self.url), force=True)

    def _start(self):
        # Called with the lock held.
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name="scientist-report", daemon=True)
            self._thread.start()

    def _reset_delivery(self):
        """No queue, no thread: at the start, and in a forked child (whose copy of the
        parent's lock may be held, and whose parent sends what it had waiting)."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending = collections.deque()
        self._sending = 0
        self._flushing = 0
        self._thread = None

    def _after_fork(self):
        self._reset_delivery()
        if self._own_source:
            self.source = "%s/%d" % (self.source.rsplit("/", 1)[0], os.getpid())

    def _flush_at_process_exit(self):
        # multiprocessing's children end with os._exit (no atexit) after running its
        # finalizers; in a child this is registered again after multiprocessing clears them.
        multiprocessing.util.Finalize(None, self.close, exitpriority=10)

    def _loop(self):
        backoff = 0.0
        while True:
            with self._lock:
                if self._closed:
                    return
                if backoff:
                    # After a failure: wait it out, or only briefly while a flush (exit) waits.
                    self._wake.wait(min(backoff, 0.2) if self._flushing else backoff)
                else:
                    due = time.monotonic() + self.flush_interval
                    while not (self._closed or self._flushing or len(self._pending) >= self.batch_size):
                        left = due - time.monotonic()
                        if left <= 0:
                            break
                        self._wake.wait(left)
                if self._closed:
                    return
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.batch_size))]
                self._sending = len(batch)
            if not batch:
                continue
            try:
                self._post(batch)
                backoff = 0.0
            except _Retry as err:
                with self._lock:
                    # Back to the front, in order, within the bound.
                    room = self.max_pending - len(self._pending)
                    kept = batch[len(batch) - room:] if room < len(batch) else batch
                    self.dropped += len(batch) - len(kept)
                    self._pending.extendleft(reversed(kept))
                backoff = min(MAX_BACKOFF, max(0.5, backoff * 2))
                self._warn("cannot report to %s (%s): retrying in %.1f s" % (self.url, err, backoff))
            except _GiveUp as err:
                with self._lock:
                    self.enabled = False
                    self._closed = True
                    self._pending.clear()
                self._warn("reporting stopped: %s" % err, force=True)
            except Exception as err:  # never let the thread die with events queued
                self._warn("reporting failed unexpectedly (%r); %d events dropped" % (err, len(batch)))
            finally:
                with self._lock:
                    self._sending = 0
                    self._wake.notify_all()

    def _post(self, lines):
        body = ("\n".join(lines) + "\n").encode()
        request = urllib.request.Request(self.url + "/api/ingest/events", data=body, method="POST", headers={
            "Content-Type": "application/x-ndjson", "Authorization": "Bearer " + self.token})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as err:
            reason = _reason(err)
            if err.code in (401, 403):
                raise _GiveUp("%s refused the token (%d: %s)" % (self.url, err.code, reason))
            if err.code in (408, 429) or err.code >= 500:
                raise _Retry("%d: %s" % (err.code, reason))
            # Refused as a whole for good (400, 409 no run attached, 413): not sent again.
            return self._warn("%d events refused (%d: %s)" % (len(lines), err.code, reason))
        except ValueError as err:  # a URL urllib cannot use
            raise _GiveUp("SCIENTIST_EMIT_URL %r is not a URL (%s)" % (self.url, err))
        except (urllib.error.URLError, OSError) as err:
            raise _Retry(getattr(err, "reason", err))
        try:
            rejected_lines = json.loads(body).get("rejected") or []
        except (ValueError, AttributeError):
            rejected_lines = []
        for rejected in rejected_lines:
            index = rejected.get("line", 0) - 1
            kind = json.loads(lines[index]).get("type") if 0 <= index < len(lines) else "an event"
            self._warn("%s refused: %s" % (kind, rejected.get("reason")))

    # ---- helpers --------------------------------------------------------------------------

    def _stage(self, stage):
        return stage if stage is not None else self.current_stage

    def _warn(self, message, force=False):
        """One line on stderr: the first at once, then at most one per WARN_INTERVAL."""
        try:
            now = time.monotonic()
            with _WARN_LOCK:
                if not force and self._warned_at is not None and now - self._warned_at < WARN_INTERVAL:
                    self._unwarned += 1
                    return None
                more = " (and %d more problems since the last report)" % self._unwarned if self._unwarned else ""
                self._warned_at, self._unwarned = now, 0
            sys.stderr.write("scientist_report: %s%s\n" % (message, more))
            sys.stderr.flush()
        except Exception:  # stderr closed: nothing left to tell
            pass
        return None


_WARN_LOCK = threading.Lock()


def _reason(err):
    try:
        return json.loads(err.read()).get("error", err.reason)
    except Exception:
        return err.reason


report = Reporter()
