#!/usr/bin/env python3
"""A toy stage of an experiment pipeline, run by `scientist work` (see ../pipeline.toml).

It reports node and progress events to the worker's local endpoint over plain HTTP (and one
through `scientist emit` when that is on PATH), prints log lines and a carriage-return
progress bar, and writes a result file into the run directory. TOY_FAIL_STAGE=Stage_N makes
that stage raise an exception, for trying out failure reports.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid

RUN_ID = os.environ["SCIENTIST_RUN_ID"]
RUN_DIR = os.environ["SCIENTIST_RUN_DIR"]
STAGE = os.environ.get("SCIENTIST_STAGE", "Stage_1")
EMIT_URL = os.environ["SCIENTIST_EMIT_URL"]
TOKEN = os.environ.get("SCIENTIST_TOKEN", "")
ITERATIONS = int(os.environ.get("TOY_ITERATIONS", "3"))


def emit(event_type, data):
    """POST one structured CloudEvent; the worker adds seq and attempt and spools it."""
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "toy://pipeline",
        "type": event_type,
        "subject": f"run/{RUN_ID}",
        "datacontenttype": "application/json",
        "data": dict(data, run_id=RUN_ID),
    }
    request = urllib.request.Request(
        EMIT_URL + "/api/ingest/event",
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/cloudevents+json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202, answer.status


def main():
    print(f"{STAGE}: starting with {ITERATIONS} iterations in {RUN_DIR}")
    print(f"{STAGE}: using OPENAI_API_KEY=sk-toy-{STAGE.lower()} for the agent")
    good = 0
    for iteration in range(1, ITERATIONS + 1):
        node = f"{STAGE}-node-{iteration}"
        emit("ai.node.created", {"stage": STAGE, "node_id": node})
        for percent in range(0, 101, 10):
            sys.stderr.write(f"\r{STAGE} iter {iteration}: {percent:3d}%|{'#' * (percent // 10):<10}|")
            sys.stderr.flush()
            time.sleep(0.005)
        sys.stderr.write("\n")
        if os.environ.get("TOY_FAIL_STAGE") == STAGE and iteration == 2:
            print(f"WARNING {STAGE}: the loss diverged, giving up", flush=True)
            1 / 0
        good += 1
        emit("ai.node.completed", {"stage": STAGE, "node_id": node, "is_buggy": False, "metric": 0.5 + iteration / 10})
        emit("ai.run.stage_progress", {
            "stage": STAGE, "iteration": iteration, "max_iterations": ITERATIONS,
            "progress": iteration / ITERATIONS, "good_nodes": good, "buggy_nodes": 0, "total_nodes": iteration,
            "best_metric": str(0.5 + iteration / 10),
        })
        print(f"{STAGE}: iteration {iteration}/{ITERATIONS} done, metric {0.5 + iteration / 10:.2f}")
    scientist = shutil.which("scientist")
    if scientist:
        data = json.dumps({"stage": STAGE, "name": "val_loss", "value": 0.25, "step": ITERATIONS, "via": "scientist emit"})
        subprocess.run([scientist, "emit", "ai.run.stage_metric", "--run", RUN_ID, "--data", data], check=True)
    os.makedirs(os.path.join(RUN_DIR, STAGE), exist_ok=True)
    with open(os.path.join(RUN_DIR, STAGE, "result.json"), "w") as result:
        json.dump({"stage": STAGE, "good_nodes": good}, result)
    print(f"{STAGE}: done")


if __name__ == "__main__":
    main()
