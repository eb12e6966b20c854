#!/usr/bin/env python3
"""A stage that prints FLOOD_RATE lines a second for FLOOD_SECONDS seconds (paced every 10 ms),
then reports how long printing took: if reporting ever blocked the pipe, it took longer.
Used by scripts/bench-worker."""
import os
import sys
import time

rate = int(os.environ.get("FLOOD_RATE", "10000"))
seconds = float(os.environ.get("FLOOD_SECONDS", "20"))
total = int(rate * seconds)
out = sys.stdout
start = time.monotonic()
printed = 0
while printed < total:
    due = min(total, int((time.monotonic() - start) * rate) + rate // 100)
    while printed < due:
        printed += 1
        out.write(f"line {printed} loss={1.0 / printed:.6f} step={printed} some padding to look like a real log line\n")
    out.flush()
    time.sleep(0.01)
elapsed = time.monotonic() - start
with open(os.path.join(os.environ["SCIENTIST_RUN_DIR"], "flood.json"), "w") as report:
    report.write(f'{{"printed": {printed}, "seconds": {elapsed:.3f}}}\n')
