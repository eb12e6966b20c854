"""Processes on this machine: their CPU and memory from /proc, servers started and stopped."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def proc_table():
    """{pid: (ppid, cpu seconds, peak rss bytes, cmdline)} of every process now."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/status") as status:
                peak = next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")), 0)
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration, IndexError):
            continue
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, peak, command)
    return table


def descendants(table, root, skip=lambda command: False):
    """`root` and every process below it, leaving out (with their trees) those `skip` names."""
    children = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table and not skip(table[pid][3]):
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def machine_busy():
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (int(field) for field in stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / TICK


def tree_cpu(root):
    table = proc_table()
    return sum(table[pid][1] for pid in descendants(table, root))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url, process, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{url}: the server exited ({process.returncode}) before it answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url}: no answer within {seconds} s")


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def freeze(root, frozen):
    """Stops (SIGSTOP) or resumes (SIGCONT) `root`'s whole process tree: a peer whose turn it
    is not takes no CPU from the other (MLflow's job consumers poll even when idle)."""
    table = proc_table()
    for pid in descendants(table, root):
        try:
            os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)
        except ProcessLookupError:
            pass


def idle_cores(root, seconds):
    """The CPU `root`'s tree takes while nobody talks to it."""
    before = tree_cpu(root)
    time.sleep(seconds)
    return (tree_cpu(root) - before) / seconds
