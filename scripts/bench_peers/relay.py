"""The relay runs: scripts/bench-worker for `scientist work`, and wandb offline relaying the
same child (wandb_child.py, under the peers' venv), its process tree sampled from /proc."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from . import FLOOD, ROOT, VENV
from .procs import descendants, proc_table

# One of flood.py's lines, whole: a line cut or run into another does not count as stored.
FLOOD_LINE = re.compile(r"line (\d+) loss=[0-9.]+ step=\1 some padding to look like a real log line\r?$")

# How wandb is made to capture the child's output: its console setting, and how the wrapper
# hands the child's pipe to it (wandb_child.py says why).
WANDB_MODES = {"wrap, a line a write": ("wrap", "lines"), "wrap, 64 KiB reads": ("wrap", "chunks"),
               "redirect (pty)": ("redirect", "inherit")}


def wandb_figures(mode, work, rate, seconds):
    work = tempfile.mkdtemp(prefix="wandb-", dir=work)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=work, SCIENTIST_RUN_DIR=work,
               FLOOD_RATE=str(rate), FLOOD_SECONDS=str(seconds))
    started = time.monotonic()
    console, copy = WANDB_MODES[mode]
    wrapper = subprocess.Popen([os.path.join(VENV, "bin", "python"), "-B", os.path.join(os.path.dirname(__file__), "wandb_child.py"),
                                console, copy, work, FLOOD], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(work, "wrapper.log"), "w"))
    # Each process of the tree but the child, sampled every 0.1 s: its highest CPU and peak
    # RSS readings (a zombie reads as empty), and its name.
    seen = {}
    while True:
        table = proc_table()
        for pid in descendants(table, wrapper.pid, skip=lambda command: command.split(" ")[1:2] == [FLOOD]):
            _, cpu, peak, command = table[pid]
            last = seen.get(pid, (0, 0, ""))
            seen[pid] = (max(cpu, last[0]), max(peak, last[1]), last[2] or os.path.basename(command.split(" ", 1)[0]))
        pid, status, usage = os.wait4(wrapper.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.1)
    wall = time.monotonic() - started
    if status != 0:
        sys.exit(f"the wandb {mode} wrapper failed ({status}); see {work}/wrapper.log")
    with open(os.path.join(work, "relay.json")) as file:
        report = json.load(file)
    with open(os.path.join(work, "flood.json")) as file:
        flood = json.load(file)
    with open(os.path.join(report["files_dir"], "output.log"), errors="replace") as file:
        delivered = len({found.group(1) for found in map(FLOOD_LINE.match, file) if found})
    return {
        "relay": f"wandb offline, console={mode}",
        "lines_printed": flood["printed"],
        "lines_delivered": delivered,
        "child_print_seconds": flood["seconds"],
        "wall_seconds": wall,
        # wait4 counts the wrapper and every process it reaped (wandb-core, wandb-symon); the
        # child's own CPU, which the wrapper read the same way, is taken out.
        "cpu_seconds": usage.ru_utime + usage.ru_stime - report["child_cpu"],
        "cpu_seconds_sampled": sum(entry[0] for entry in seen.values()),
        "peak_rss_mib": sum(entry[1] for entry in seen.values()) / 2**20,
        "processes": sorted({entry[2] for entry in seen.values() if entry[2]}),
    }


def relay(binary, work, rate, seconds):
    worker = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench-worker"), "--scientist", binary,
                             "--rate", str(rate), "--seconds", str(seconds)], check=True, capture_output=True, text=True)
    figures = json.loads(worker.stdout)
    rows = [{
        "relay": "scientist work (embedded store)",
        "lines_printed": figures["lines_printed"],
        "lines_delivered": figures["lines_delivered"],
        "child_print_seconds": figures["child_print_seconds"],
        "wall_seconds": figures["worker_wall_seconds"],
        "cpu_seconds": figures["worker_cpu_seconds"],
        "peak_rss_mib": figures["worker_peak_rss_mib"],
    }]
    for mode in WANDB_MODES:
        print(f"  wandb console={mode} …", file=sys.stderr)
        rows.append(wandb_figures(mode, work, rate, seconds))
    return rows

