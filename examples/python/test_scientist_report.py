"""Unit tests of scientist_report.py against a fake local endpoint on loopback:
python3 -m unittest discover -s examples/python (run by tests/python_report.rs)."""

import contextlib
import http.server
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import scientist_report  # noqa: E402
from scientist_report import Reporter  # noqa: E402


class Endpoint:
    """A stand-in for the worker's local endpoint: records each POST, answers `status`
    with `reply` (a JSON object)."""

    def __init__(self, status=202, reply=None):
        self.status = status
        self.reply = reply if reply is not None else {"accepted": 0}
        self.requests = []
        self.received = threading.Condition()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # Recorded before the answer: a client that has its answer finds its request here.
                with endpoint.received:
                    endpoint.requests.append((self.path, dict(self.headers), body))
                    endpoint.received.notify_all()
                answer = json.dumps(endpoint.reply).encode()
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self):
        with self.received:
            return [json.loads(line) for _, _, body in self.requests for line in body.decode().splitlines()]

    def wait_for_events(self, count, within=20.0):
        deadline = time.monotonic() + within
        with self.received:
            while len([1 for _, _, body in self.requests for _ in body.decode().splitlines()]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("waited %.0f s for %d events; got %r" % (within, count, self.requests))
                self.received.wait(left)
        return self.events()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url():
    """A loopback URL nothing listens on (an endpoint that was killed)."""
    endpoint = Endpoint()
    url = endpoint.url
    endpoint.stop()
    return url


class OutsideScientist(unittest.TestCase):
    def test_every_call_is_a_no_op_without_an_emit_url(self):
        threads = threading.active_count()
        reporter = Reporter(environ={})
        self.assertFalse(reporter.enabled)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            reporter.progress("Stage_1", 1, 3)
            reporter.node("n1", "created")
            reporter.metric("loss", 0.5)
            reporter.llm_usage("gpt-5-mini", 10, 5)
            self.assertIsNone(reporter.artifact(__file__))
            with reporter.stage("plots"):
                pass
            self.assertTrue(reporter.flush())
            reporter.close()
        self.assertEqual(threading.active_count(), threads, "no thread was started")
        self.assertEqual(stderr.getvalue(), "")

    def test_the_module_reporter_is_off_when_imported_outside_a_worker(self):
        env = {name: value for name, value in os.environ.items() if not name.startswith("SCIENTIST_")}
        code = ("import scientist_report as s; s.report.progress('Stage_1', 1, 2); "
                "print(s.report.enabled)")
        done = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual((done.returncode, done.stdout.strip(), done.stderr), (0, "False", ""))


class Delivery(unittest.TestCase):
    def setUp(self):
        self.endpoint = Endpoint()

    def tearDown(self):
        self.endpoint.stop()

    def reporter(self, **settings):
        settings.setdefault("flush_interval", 0.05)
        return Reporter(self.endpoint.url, "the-token", "run-1", stage="Stage_2", **settings)

    def test_events_go_in_ndjson_batches_with_the_token(self):
        reporter = self.reporter(batch_size=3, flush_interval=60)
        reporter.progress(iteration=2, max_iterations=8, good_nodes=2, best_metric=0.5)
        reporter.node("n1", "completed", parent_id="n0", is_buggy=False, metric={"value": 0.9})
        reporter.metric("val_loss", 0.25, step=3)
        events = self.endpoint.wait_for_events(3)
        path, headers, _ = self.endpoint.requests[0]
        self.assertEqual(len(self.endpoint.requests), 1, "three events, one batch")
        self.assertEqual(path, "/api/ingest/events")
        self.assertEqual(headers["Content-Type"], "application/x-ndjson")
        self.assertEqual(headers["Authorization"], "Bearer the-token")
        progress, node, metric = events
        self.assertEqual(progress["type"], "ai.run.stage_progress")
        self.assertEqual(progress["subject"], "run/run-1")
        self.assertEqual(progress["specversion"], "1.0")
        self.assertEqual(len(progress["id"]), 26)
        self.assertEqual(progress["data"], {"stage": "Stage_2", "iteration": 2, "max_iterations": 8,
                                            "progress": 0.25, "good_nodes": 2, "best_metric": 0.5,
                                            "run_id": "run-1"})
        self.assertEqual(node["type"], "ai.node.completed")
        self.assertEqual(node["data"]["parent_id"], "n0")
        self.assertEqual(metric["data"], {"name": "val_loss", "value": 0.25, "step": 3, "stage": "Stage_2",
                                          "run_id": "run-1"})
        self.assertEqual(len({event["id"] for event in events}), 3)
        reporter.close()

    def test_what_waits_is_sent_by_flush_and_llm_usage_keeps_its_fields(self):
        reporter = self.reporter(flush_interval=60)
        reporter.llm_usage("gpt-5-mini", 1200, 300, cached_tokens=800, cost_usd=0.01, node_id="n3")
        self.assertTrue(reporter.flush(timeout=20))
        (usage,) = self.endpoint.events()
        self.assertEqual(usage["type"], "ai.llm.usage")
        self.assertEqual(usage["data"], {"model": "gpt-5-mini", "input_tokens": 1200, "output_tokens": 300,
                                         "cached_tokens": 800, "cost_usd": 0.01, "stage": "Stage_2",
                                         "node_id": "n3", "run_id": "run-1"})
        reporter.close()

    def test_a_process_that_exits_without_flushing_still_sends_everything(self):
        env = dict(os.environ, SCIENTIST_EMIT_URL=self.endpoint.url, SCIENTIST_TOKEN="t", SCIENTIST_RUN_ID="r9")
        code = ("import multiprocessing as mp\n"
                "from scientist_report import report\n"
                "def child():\n"
                "    report.node('from-child', 'created')\n"
                "if __name__ == '__main__':\n"
                "    for i in range(3): report.progress('Stage_1', i + 1, 3)\n"
                "    process = mp.get_context('fork').Process(target=child)\n"
                "    process.start(); process.join()\n")
        done = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        events = self.endpoint.wait_for_events(4)
        types = sorted(event["type"] for event in events)
        self.assertEqual(types, ["ai.node.created"] + ["ai.run.stage_progress"] * 3, done.stderr)
        self.assertEqual(done.stderr, "")

    def test_refused_events_are_dropped_with_the_reason_on_stderr(self):
        self.endpoint.reply = {"accepted": 0, "rejected": [{"line": 1, "reason": "data.stage: unknown stage"}]}
        reporter = self.reporter()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            reporter.progress("Stage_9", 1, 2)
            self.assertTrue(reporter.flush(timeout=20))
        self.assertIn("ai.run.stage_progress refused: data.stage: unknown stage", stderr.getvalue())
        reporter.close()

    def test_a_wrong_token_stops_reporting_with_one_line(self):
        self.endpoint.status = 401
        self.endpoint.reply = {"error": "missing or wrong token"}
        reporter = self.reporter()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            reporter.metric("loss", 1.0)
            reporter.flush(timeout=20)
            for _ in range(5):
                reporter.metric("loss", 1.0)
            reporter.flush(timeout=1)
        self.assertFalse(reporter.enabled)
        self.assertEqual(len(self.endpoint.requests), 1, "nothing is sent after the refusal")
        self.assertEqual(stderr.getvalue().count("\n"), 1, stderr.getvalue())
        self.assertIn("refused the token", stderr.getvalue())

    def test_data_that_is_not_json_is_reported_not_raised(self):
        reporter = self.reporter()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            reporter.metric("loss", float("nan"))
        self.assertIn("ai.run.stage_metric not sent", stderr.getvalue())
        reporter.close()

    def test_artifact_copies_a_file_into_the_run_directory(self):
        with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as elsewhere:
            plot = os.path.join(elsewhere, "loss.png")
            with open(plot, "wb") as out:
                out.write(b"\x89PNG not really")
            previous = os.environ.get("SCIENTIST_RUN_DIR")
            os.environ["SCIENTIST_RUN_DIR"] = run_dir
            try:
                reporter = self.reporter()
                self.assertEqual(reporter.artifact(plot, "plots/loss.png"), os.path.join("plots", "loss.png"))
                self.assertEqual(reporter.artifact(os.path.join(run_dir, "plots", "loss.png")),
                                 os.path.join("plots", "loss.png"))
                stderr = io.StringIO()
                with contextlib.redirect_stderr(stderr):
                    self.assertIsNone(reporter.artifact(plot, "../outside.png"))
                    self.assertIsNone(reporter.artifact(os.path.join(elsewhere, "missing.png")))
                self.assertEqual(stderr.getvalue().count("\n"), 1, "rate-limited: " + stderr.getvalue())
                reporter.close()
            finally:
                if previous is None:
                    del os.environ["SCIENTIST_RUN_DIR"]
                else:
                    os.environ["SCIENTIST_RUN_DIR"] = previous
            with open(os.path.join(run_dir, "plots", "loss.png"), "rb") as copied:
                self.assertEqual(copied.read(), b"\x89PNG not really")
            self.assertEqual(os.listdir(os.path.join(run_dir, "plots")), ["loss.png"], "no partial copy is left")


class EndpointDown(unittest.TestCase):
    def test_a_killed_endpoint_never_raises_and_memory_stays_bounded(self):
        reporter = Reporter(closed_port_url(), "t", "run-1", stage="Stage_1", flush_interval=0.01,
                            max_pending=5, exit_deadline=0.5)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            for index in range(50):
                reporter.progress(iteration=index, max_iterations=50)
                reporter.llm_usage("gpt-5-mini", 10, 5)
            self.assertFalse(reporter.flush(timeout=0.5))
            with reporter._lock:
                self.assertLessEqual(len(reporter._pending), 5)
            self.assertGreaterEqual(reporter.dropped, 95)
            reporter.close()
            reporter.metric("after_close", 1.0)
        lines = stderr.getvalue().splitlines()
        # The first problem at once, rate-limited after it, and what was lost at exit.
        self.assertTrue(lines[0].startswith("scientist_report: "), lines)
        self.assertLessEqual(len(lines), 3, lines)
        self.assertIn("not delivered", lines[-1])

    def test_a_malformed_url_turns_reporting_off_with_one_line(self):
        for url in ("not a url", "ftp://127.0.0.1/x", "http://[::1", "http://127.0.0.1:port"):
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                reporter = Reporter(url, "t", "run-1", stage="Stage_1")
                reporter.progress(iteration=1, max_iterations=2)
                reporter.node("n1")
                self.assertTrue(reporter.flush())
            self.assertFalse(reporter.enabled, url)
            self.assertEqual(stderr.getvalue().count("\n"), 1, (url, stderr.getvalue()))
            self.assertIn("not an http:// URL", stderr.getvalue())

    def test_the_endpoint_coming_back_gets_what_waited_in_order(self):
        endpoint = Endpoint(status=503, reply={"error": "the spool is full"})
        try:
            reporter = Reporter(endpoint.url, "t", "run-1", stage="Stage_1", flush_interval=0.01)
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                for index in range(3):
                    reporter.progress(iteration=index + 1, max_iterations=3)
                with endpoint.received:
                    while not endpoint.requests:
                        endpoint.received.wait(20)
                endpoint.status = 202
                self.assertTrue(reporter.flush(timeout=30))
            delivered = [event["data"]["iteration"] for event in endpoint.events()[-3:]]
            self.assertEqual(delivered, [1, 2, 3])
            self.assertIn("retrying", stderr.getvalue())
            reporter.close()
        finally:
            endpoint.stop()


if __name__ == "__main__":
    unittest.main()
