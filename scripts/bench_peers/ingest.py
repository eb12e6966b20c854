"""The ingest cells: `scientist serve` and `mlflow server` up side by side, each cell run on
one then the other, then what each stored counted against what it acknowledged."""
import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
import uuid

from . import VENV
from .load import drive, now_ms
from .procs import descendants, free_port, freeze, idle_cores, proc_table, stop, wait_healthy

BATCHES = (1, 50, 1000)
CLIENTS = (1, 4, 8)
# Points per cell, by (points a request, clients), the same for both peers: small enough that
# MLflow's slowest cells (one point a request: 7-35 points/s on a busy 2-core machine) end
# within a minute or two; each a multiple of clients x points a request.
POINTS = {(1, 1): 400, (1, 4): 800, (1, 8): 1_600, (50, 1): 20_000, (50, 4): 20_000, (50, 8): 20_000,
          (1000, 1): 64_000, (1000, 4): 64_000, (1000, 8): 64_000}
QUICK_POINTS = {(batch, clients): max(points // 10, batch * clients) for (batch, clients), points in POINTS.items()}


def post_json(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


class Scientist:
    name = "scientist"

    def __init__(self, binary, work):
        self.store = os.path.join(work, "scientist.sqlite")
        self.env = dict(os.environ, HOME=work, SCIENTIST_STORE=self.store, LOG_LEVEL="warn")
        for name in ("MONGODB_URL", "SCIENTIST_SERVER", "SCIENTIST_TOKEN", "SCIENTIST_TOKEN_FILE"):
            self.env.pop(name, None)
        self.port = free_port()
        self.process = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{self.port}"], env=self.env,
                                        stderr=open(os.path.join(work, "scientist-serve.log"), "w"))
        wait_healthy(f"http://127.0.0.1:{self.port}/health", self.process, 60)

    def create_runs(self, count):
        runs = [str(uuid.uuid4()) for _ in range(count)]
        lines = [json.dumps({"specversion": "1.0", "id": f"enqueue-{run}", "source": "pod://bench-peers",
                             "type": "ai.run.enqueued", "subject": f"run/{run}", "data": {}}) for run in runs]
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/ingest/events", data="\n".join(lines).encode(),
                                         headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(request, timeout=60) as response:
            if json.loads(response.read()).get("applied") != count:
                sys.exit("scientist did not create the benchmark's runs")
        return runs

    def stored(self):
        """{run id: metric events stored}."""
        with sqlite3.connect(self.store) as db:
            return dict(db.execute(
                "SELECT r.name, count(*) FROM events e JOIN names r ON r.key = e.run JOIN names t ON t.key = e.type "
                "WHERE t.name = 'ai.run.stage_metric' GROUP BY r.name"))

    def files(self):
        return [self.store]


class MLflow:
    name = "mlflow"

    def __init__(self, work):
        self.db = os.path.join(work, "mlflow.db")
        self.port = free_port()
        command = [os.path.join(VENV, "bin", "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}",
                   "--default-artifact-root", os.path.join(work, "mlflow-artifacts"), "--host", "127.0.0.1",
                   "--port", str(self.port)]
        self.command = " ".join(command[1:3]) + " --backend-store-uri sqlite:///… --host 127.0.0.1"
        env = dict(os.environ, MLFLOW_TRACKING_URI="")
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(work, "mlflow-server.log"), "w"))
        # The first start creates and migrates the database: tens of seconds here.
        wait_healthy(f"http://127.0.0.1:{self.port}/health", self.process, 300)
        self.experiment = post_json(self.port, "/api/2.0/mlflow/experiments/create", {"name": "bench-peers"})["experiment_id"]

    def workers(self):
        """The `--workers` `mlflow server` gave its HTTP server, and that server's name."""
        table = proc_table()
        for pid in descendants(table, self.process.pid):
            found = re.search(r"-m (uvicorn|gunicorn).*--workers[ =](\d+)", table[pid][3])
            if found:
                return f"{found.group(1)}, {found.group(2)} workers"
        return "workers unknown"

    def create_runs(self, count):
        body = {"experiment_id": self.experiment, "start_time": now_ms()}
        return [post_json(self.port, "/api/2.0/mlflow/runs/create", body)["run"]["info"]["run_id"] for _ in range(count)]

    def stored(self):
        with sqlite3.connect(self.db) as db:
            return dict(db.execute("SELECT run_uuid, count(*) FROM metrics GROUP BY run_uuid"))

    def files(self):
        return [self.db]


def bytes_per_point(files, points):
    """The store's size on disk over the points it holds, after folding any WAL back in."""
    total = 0
    for path in files:
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total += sum(os.path.getsize(p) for p in (path, path + "-wal", path + "-journal") if os.path.exists(p))
    return total / points if points else 0


# --- ingest --------------------------------------------------------------------------------

def ingest(binary, work, points):
    scientist = Scientist(binary, work)
    mlflow = MLflow(work)
    peers = (scientist, mlflow)
    try:
        idle = {peer.name: idle_cores(peer.process.pid, 10) for peer in peers}
        rows, sent = [], {scientist.name: {}, mlflow.name: {}}
        for batch in BATCHES:
            for clients in CLIENTS:
                per_client = points[batch, clients] // clients // batch * batch
                row = {"batch": batch, "clients": clients, "points": per_client * clients}
                # Cell by cell, one peer then the other, so both see the same machine state;
                # the other one is frozen meanwhile.
                for peer, other in ((scientist, mlflow), (mlflow, scientist)):
                    freeze(other.process.pid, True)
                    freeze(peer.process.pid, False)
                    runs = peer.create_runs(clients)
                    figure = drive(peer.name, peer.port, peer.process.pid, runs, batch, per_client)
                    sent[peer.name].update(figure.pop("acknowledged"))
                    row[peer.name] = figure
                    print(f"  {peer.name:>9}: {batch:>4} a request, {clients} client(s): {figure['rate']:>9,.0f} points/s",
                          file=sys.stderr)
                rows.append(row)
        checks = {}
        for peer in peers:
            freeze(peer.process.pid, False)
            stored = peer.stored()
            acknowledged = sum(sent[peer.name].values())
            held = sum(stored.get(run, 0) for run in sent[peer.name])
            checks[peer.name] = {"acknowledged": acknowledged, "stored": held,
                                 "runs_off": sum(stored.get(run, 0) != n for run, n in sent[peer.name].items())}
        workers = mlflow.workers()
    finally:
        for peer in peers:
            freeze(peer.process.pid, False)
            stop(peer.process)
    for peer in peers:
        checks[peer.name]["bytes_per_point"] = bytes_per_point(peer.files(), checks[peer.name]["stored"])
    return {"rows": rows, "checks": checks, "mlflow_workers": workers, "idle_cores": idle}

