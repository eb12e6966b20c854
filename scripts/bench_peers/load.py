"""The load generator: one process per client, each on one keep-alive connection, posting
bodies built before the clock starts; the same code for both peers, only the wire differs."""
import http.client
import json
import math
import multiprocessing
import time
import uuid

from .procs import machine_busy, tree_cpu

METRICS = ("loss", "acc", "lr", "grad_norm")
RETRIES = 5
# MLflow's 4 workers share one SQLite file; a 'database is locked' answer is retried as
# MLflow's own client does, and counted.
RETRY_PAUSE = 0.1


def now_ms():
    return int(time.time() * 1000)


def rfc3339(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def scientist_requests(run, prefix, batch, count):
    """`count` request bodies of `batch` stage-metric events each, for `run`."""
    requests, n = [], 0
    for _ in range(count):
        lines = []
        for _ in range(batch):
            ms = now_ms()
            lines.append(json.dumps({
                "specversion": "1.0", "id": f"{prefix}-{n}", "source": "pod://bench-peers",
                "type": "ai.run.stage_metric", "subject": f"run/{run}", "time": rfc3339(ms),
                "data": {"name": METRICS[n % len(METRICS)], "value": 1.0 / (n + 1), "step": n}},
                separators=(",", ":")))
            n += 1
        if batch == 1:
            requests.append(("/api/ingest/event", "application/cloudevents+json", lines[0].encode()))
        else:
            requests.append(("/api/ingest/events", "application/x-ndjson", "\n".join(lines).encode()))
    return requests


def scientist_accepted(status, answer, batch):
    """202 with every event applied (or, on a retry, already there)."""
    if status != 202:
        return False
    answer = json.loads(answer)
    if batch == 1:
        return answer.get("outcome") in ("applied", "duplicate")
    return answer.get("applied", 0) + answer.get("duplicate", 0) == batch and not answer.get("rejected")


def mlflow_requests(run, prefix, batch, count):
    """`count` request bodies of `batch` metric points each, for `run` (prefix unused: a
    point is told apart by its step)."""
    requests, n = [], 0
    for _ in range(count):
        metrics = []
        for _ in range(batch):
            metrics.append({"key": METRICS[n % len(METRICS)], "value": 1.0 / (n + 1), "timestamp": now_ms(), "step": n})
            n += 1
        if batch == 1:
            body = dict(metrics[0], run_id=run)
            requests.append(("/api/2.0/mlflow/runs/log-metric", "application/json", json.dumps(body).encode()))
        else:
            body = {"run_id": run, "metrics": metrics}
            requests.append(("/api/2.0/mlflow/runs/log-batch", "application/json", json.dumps(body).encode()))
    return requests


def mlflow_accepted(status, answer, batch):
    return status == 200


PEER_WIRE = {"scientist": (scientist_requests, scientist_accepted), "mlflow": (mlflow_requests, mlflow_accepted)}


# --- the load generator ------------------------------------------------------------------

def client(peer, port, run, prefix, batch, count, ready, go, results):
    """One client process: builds its bodies, connects, says it is ready, then posts them one
    after another on its keep-alive connection once every client is."""
    build, accepted = PEER_WIRE[peer]
    requests = build(run, prefix, batch, count)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.connect()
    latencies, retries, failed, first_error = [], 0, 0, None
    ready.wait()
    go.wait()
    started, cpu = time.monotonic(), time.process_time()
    for path, content_type, body in requests:
        for attempt in range(RETRIES):
            sent = time.monotonic()
            try:
                connection.request("POST", path, body, {"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
                latencies.append(time.monotonic() - sent)
                if accepted(response.status, answer, batch):
                    break
                first_error = first_error or f"{response.status} {answer[:200]!r}"
            except (OSError, http.client.HTTPException) as error:
                # The next request opens a new connection.
                connection.close()
                first_error = first_error or repr(error)
            if attempt + 1 == RETRIES:
                failed += 1
            else:
                retries += 1
                time.sleep(RETRY_PAUSE * (attempt + 1))
    results.put({"run": run, "started": started, "ended": time.monotonic(), "cpu": time.process_time() - cpu,
                 "latencies": latencies, "retries": retries, "failed": failed, "error": first_error})


def drive(peer, port, server_pid, runs, batch, points_per_client):
    """All clients of one cell, each on its own run; returns the cell's figures."""
    count = points_per_client // batch
    ready, go = multiprocessing.Barrier(len(runs) + 1), multiprocessing.Barrier(len(runs) + 1)
    results = multiprocessing.Queue()
    cell = uuid.uuid4().hex[:8]
    processes = [multiprocessing.Process(target=client, args=(peer, port, run, f"{cell}-{i}", batch, count, ready, go, results))
                 for i, run in enumerate(runs)]
    for process in processes:
        process.start()
    # The counters are read once every client has built its bodies, so that work is not counted.
    ready.wait()
    server_cpu, busy = tree_cpu(server_pid), machine_busy()
    go.wait()
    outcomes = [results.get(timeout=3600) for _ in processes]
    server_cpu, busy = tree_cpu(server_pid) - server_cpu, machine_busy() - busy
    for process in processes:
        process.join()
    wall = max(o["ended"] for o in outcomes) - min(o["started"] for o in outcomes)
    latencies = sorted(latency for o in outcomes for latency in o["latencies"])
    acknowledged = {o["run"]: (count - o["failed"]) * batch for o in outcomes}
    return {
        "acknowledged": acknowledged,
        "rate": sum(acknowledged.values()) / wall,
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "server_cores": max(server_cpu, 0) / wall,
        "generator_cores": sum(o["cpu"] for o in outcomes) / wall,
        "machine_cores": busy / wall,
        "busiest_client": max(o["cpu"] / (o["ended"] - o["started"]) for o in outcomes),
        "retries": sum(o["retries"] for o in outcomes),
        "failed": sum(o["failed"] for o in outcomes),
        "error": next((o["error"] for o in outcomes if o["error"]), None),
    }


def percentile(sorted_values, p):
    if not sorted_values:
        return math.nan
    rank = min(max(math.ceil(p * len(sorted_values)), 1), len(sorted_values))
    return sorted_values[rank - 1]

