#!/usr/bin/env python3
"""One stage of the tour pipeline (`scientist up --example`; see pipeline.toml).

Each iteration it reports a tree-search node, the stage's progress, the LLM tokens its agent
spent and a log line to the worker's local endpoint, then sleeps TOUR_STEP_S. At the end it
writes a plot (SVG) and metrics.json under <run dir>/<stage>/, which the worker uploads as
artifacts. TOUR_PREEMPT=Stage_N makes that stage's first attempt end as a preempted process
(SIGTERM from outside, a retryable failure), so that the run is retried.
"""
import json
import os
import signal
import sys
import time
import urllib.request
import uuid

RUN_ID = os.environ["SCIENTIST_RUN_ID"]
RUN_DIR = os.environ["SCIENTIST_RUN_DIR"]
STAGE = os.environ.get("SCIENTIST_STAGE", "Stage_1")
ATTEMPT = int(os.environ.get("SCIENTIST_ATTEMPT", "1"))
EMIT_URL = os.environ["SCIENTIST_EMIT_URL"]
TOKEN = os.environ.get("SCIENTIST_TOKEN", "")
ITERATIONS = int(os.environ.get("TOUR_ITERATIONS", "5"))
STEP_S = float(os.environ.get("TOUR_STEP_S", "1.2"))


def emit(event_type, data):
    """POST one CloudEvent to the worker, which spools and forwards it."""
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "tour://pipeline",
        "type": event_type,
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


def plot(path, losses):
    """A loss curve as a small SVG."""
    width, height = 240, 120
    top = max(losses)
    points = " ".join(
        f"{10 + i * (width - 20) / max(len(losses) - 1, 1):.1f},{height - 10 - (height - 20) * loss / top:.1f}"
        for i, loss in enumerate(losses)
    )
    with open(path, "w") as svg:
        svg.write(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<polyline fill="none" stroke="black" points="{points}"/></svg>\n'
        )


def main():
    print(f"{STAGE}: attempt {ATTEMPT}, {ITERATIONS} iterations", flush=True)
    losses = []
    for iteration in range(1, ITERATIONS + 1):
        if os.environ.get("TOUR_PREEMPT") == STAGE and ATTEMPT == 1 and iteration == 3:
            print(f"{STAGE}: the spot instance is being reclaimed", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STEP_S)
        node = f"{STAGE}-node-{iteration}"
        loss = 1.0 / (iteration + 1)
        losses.append(loss)
        emit("ai.node.created", {"stage": STAGE, "node_id": node})
        emit("ai.node.completed", {"stage": STAGE, "node_id": node, "is_buggy": False, "metric": 1 - loss})
        emit("ai.llm.usage", {
            "model": "gpt-5-mini", "input_tokens": 12000, "output_tokens": 3000, "cached_tokens": 4000,
            "stage": STAGE, "node_id": node,
        })
        emit("ai.run.stage_progress", {
            "stage": STAGE, "iteration": iteration, "max_iterations": ITERATIONS,
            "progress": iteration / ITERATIONS, "good_nodes": iteration, "buggy_nodes": 0,
            "total_nodes": iteration, "best_metric": f"{1 - loss:.3f}",
        })
        print(f"{STAGE}: iteration {iteration}/{ITERATIONS}, val_loss {loss:.3f}", flush=True)
    out = os.path.join(RUN_DIR, STAGE)
    os.makedirs(out, exist_ok=True)
    plot(os.path.join(out, "loss.svg"), losses)
    with open(os.path.join(out, "metrics.json"), "w") as metrics:
        json.dump({"stage": STAGE, "val_loss": losses[-1], "iterations": ITERATIONS}, metrics)
    print(f"{STAGE}: done, val_loss {losses[-1]:.3f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
