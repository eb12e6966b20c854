#!/usr/bin/env python3
"""One stage of the tour pipeline (`scientist up --example`; see pipeline.toml).

Each iteration it reports a tree-search node, the stage's progress and the LLM tokens its agent
spent through scientist_report.py (which posts them to the worker's local endpoint), prints a
log line, and sleeps TOUR_STEP_S. At the end it
writes a plot (SVG) and metrics.json under <run dir>/<stage>/, which the worker uploads as
artifacts. TOUR_PREEMPT=Stage_N makes that stage's first attempt end as a preempted process
(SIGTERM from outside, a retryable failure), so that the run is retried.
"""
import json
import os
import signal
import sys
import time

# The reporting helper: examples/python/scientist_report.py in the repo, beside this file
# where `scientist up` writes the tour out.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "python")]
from scientist_report import report  # noqa: E402

RUN_DIR = os.environ["SCIENTIST_RUN_DIR"]
STAGE = os.environ.get("SCIENTIST_STAGE", "Stage_1")
ATTEMPT = int(os.environ.get("SCIENTIST_ATTEMPT", "1"))
ITERATIONS = int(os.environ.get("TOUR_ITERATIONS", "5"))
STEP_S = float(os.environ.get("TOUR_STEP_S", "1.2"))


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
        report.node(node, "created")
        report.node(node, "completed", is_buggy=False, metric=1 - loss)
        report.llm_usage("gpt-5-mini", input_tokens=12000, output_tokens=3000, cached_tokens=4000, node_id=node)
        report.progress(STAGE, iteration, ITERATIONS, good_nodes=iteration, buggy_nodes=0,
                        total_nodes=iteration, best_metric=f"{1 - loss:.3f}")
        print(f"{STAGE}: iteration {iteration}/{ITERATIONS}, val_loss {loss:.3f}", flush=True)
    out = os.path.join(RUN_DIR, STAGE)
    os.makedirs(out, exist_ok=True)
    plot(os.path.join(out, "loss.svg"), losses)
    with open(os.path.join(out, "metrics.json"), "w") as metrics:
        json.dump({"stage": STAGE, "val_loss": losses[-1], "iterations": ITERATIONS}, metrics)
    report.metric("val_loss", losses[-1], step=ITERATIONS)
    report.flush()
    print(f"{STAGE}: done, val_loss {losses[-1]:.3f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
