"""What a user writes to have wandb (offline) capture a child's output; run by relay.py under
the peers' venv as `wandb_child.py CONSOLE COPY WORK_DIR FLOOD_PY`, with FLOOD_* and
SCIENTIST_RUN_DIR set for the child (examples/pipeline/flood.py).

`wrap` (wandb's default console capture) sees only writes to sys.stdout, so the child's pipe
is copied there: a line a write (`lines`, as a user's loop would) or as read (`chunks`, up to
64 KiB a write, the least work a wrapper can do). `redirect` puts a pty on fd 1, which the
child inherits (`inherit`). Writes relay.json: the child's exit status and CPU (wait4), and
the run's files directory."""
import json
import os
import subprocess
import sys

import wandb

def main():
    console, copy, work, flood = sys.argv[1:5]
    run = wandb.init(mode="offline", project="bench-peers", dir=work, settings=wandb.Settings(console=console))
    piped = copy != "inherit"
    child = subprocess.Popen(["python3", flood], stdout=subprocess.PIPE if piped else None, text=copy == "lines")
    if copy == "lines":
        for line in child.stdout:
            sys.stdout.write(line)
    elif copy == "chunks":
        while chunk := os.read(child.stdout.fileno(), 1 << 16):
            sys.stdout.write(chunk.decode())
    _, status, usage = os.wait4(child.pid, 0)
    files_dir = run.settings.files_dir
    run.finish()
    with open(os.path.join(work, "relay.json"), "w") as report:
        json.dump({"child_status": status, "child_cpu": usage.ru_utime + usage.ru_stime, "files_dir": files_dir}, report)


if __name__ == "__main__":
    main()
