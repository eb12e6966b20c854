"""The Markdown the benchmark prints."""
import platform
import subprocess
import time


def limit(figure, cores):
    """What held a cell back, read from the CPU each side used."""
    if figure["machine_cores"] >= 0.85 * cores:
        ours = figure["server_cores"] + figure["generator_cores"]
        return "machine CPU" if ours >= figure["machine_cores"] - ours else "machine CPU, mostly others"
    if figure["busiest_client"] >= 0.85:
        return "generator"
    return "server waits (fsync, locks)"


def render_ingest(result, cores):
    rows = result["rows"]
    out = ["## Ingest: metric points over HTTP", "",
           "scientist: `ai.run.stage_metric` events to `/api/ingest/event` (1 a request) or `/api/ingest/events` "
           f"(NDJSON); MLflow ({result['mlflow_workers']}, its default): `runs/log-metric` (1) or `runs/log-batch`. "
           "Keep-alive, one process per client, the same generator for both; p50/p99 per request. Each peer's "
           "cells run with the other's process tree stopped (SIGSTOP). Idle, before any load: scientist "
           f"{result['idle_cores']['scientist']:.2f} cores, MLflow {result['idle_cores']['mlflow']:.2f} cores "
           "(its job runner's huey consumers poll; `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false` turns them off; "
           "left on, as `mlflow server` runs by default, and counted in its server cores below).", "",
           "| points a request | clients | points | scientist events/s | p50 / p99 ms | MLflow points/s | p50 / p99 ms "
           "| scientist / MLflow |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s, m = row["scientist"], row["mlflow"]
        out.append(f"| {row['batch']:,} | {row['clients']} | {row['points']:,} | {s['rate']:,.0f} | {s['p50']:.2f} / {s['p99']:.2f} "
                   f"| {m['rate']:,.0f} | {m['p50']:.2f} / {m['p99']:.2f} | {s['rate'] / m['rate']:.1f}× |")
    out += ["", f"What limited each figure ({cores} cores in all). Cores = CPU seconds over the cell's wall time: "
            "the server's process tree, the generator's clients, and everything else on the machine (other builds); "
            "busiest = the busiest client's CPU share; µs/pt = the server's CPU per point, which other load "
            "on the machine changes least. The machine busy (≥ 85 %) → its CPU was the limit; else a "
            "client near 1.0 → the generator; else the server was waiting (fsync, locks).", "",
            "| points a request | clients | scientist server / generator / other cores, busiest | µs/pt | limit "
            "| MLflow server / generator / other cores, busiest | µs/pt | limit | retried (sci / MLflow) |",
            "|---:|---:|---:|---:|---|---:|---:|---|---:|"]

    def cores_used(f):
        other = max(f["machine_cores"] - f["server_cores"] - f["generator_cores"], 0)
        return (f"{f['server_cores']:.2f} / {f['generator_cores']:.2f} / {other:.2f}, {f['busiest_client']:.2f} "
                f"| {f['server_cores'] / f['rate'] * 1e6:,.0f}")

    for row in rows:
        s, m = row["scientist"], row["mlflow"]
        out.append(f"| {row['batch']:,} | {row['clients']} | {cores_used(s)} | {limit(s, cores)} "
                   f"| {cores_used(m)} | {limit(m, cores)} | {s['retries']} / {m['retries']} |")
    errors = [f"{peer}, {row['batch']} a request, {row['clients']} client(s): {row[peer]['error']}"
              for row in rows for peer in ("scientist", "mlflow") if row[peer]["error"]]
    if errors:
        out += ["", "First refused answer per cell (retried up to 5 times, as MLflow's client does):", ""]
        out += [f"- {error}" for error in errors]
    out += ["", "Stored against acknowledged (counted in each peer's SQLite file: scientist's `events`, MLflow's "
            "`metrics`), and the file's size per point:", ""]
    for peer, label in (("scientist", "scientist"), ("mlflow", "MLflow")):
        check = result["checks"][peer]
        verdict = "all stored" if check["acknowledged"] == check["stored"] and not check["runs_off"] else \
            f"MISMATCH in {check['runs_off']} run(s)"
        out.append(f"- {label}: {check['acknowledged']:,} acknowledged, {check['stored']:,} stored ({verdict}); "
                   f"{check['bytes_per_point']:.0f} B on disk per point")
    return out


def render_relay(rows, rate, seconds):
    out = [f"## Relay: a child printing {rate:,} lines/s for {seconds:g} s", "",
           "CPU share = the relay's CPU seconds over its wall time (start to exit, flushing included), the child's own "
           "CPU aside (µs a line: the same CPU over the lines printed); for wandb, every process of its tree (wrapper Python, wandb-core, wandb-symon). Child took = "
           f"how long the child needed to print its lines (planned {seconds:g} s; longer = the relay held it back). "
           "Stored = distinct lines found whole in the store (scientist: `ai.run.log` events; wandb: the run's "
           "files/output.log).", "",
           "| relay | CPU, share of a core | CPU s / wall s | CPU µs a line | peak RSS MiB | child took s "
           "| child lines/s | lines stored / printed |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        out.append(f"| {row['relay']} | {row['cpu_seconds'] / row['wall_seconds']:.2f} "
                   f"| {row['cpu_seconds']:.1f} / {row['wall_seconds']:.1f} "
                   f"| {row['cpu_seconds'] / row['lines_printed'] * 1e6:.0f} | {row['peak_rss_mib']:.0f} "
                   f"| {row['child_print_seconds']:.1f} | {row['lines_printed'] / row['child_print_seconds']:,.0f} "
                   f"| {row['lines_delivered']:,} / {row['lines_printed']:,} |")
    for row in rows:
        if "processes" in row:
            out.append(f"\n{row['relay']}: processes counted: {', '.join(row['processes'])}; "
                       f"CPU {row['cpu_seconds']:.1f} s by wait4 of the tree ({row['cpu_seconds_sampled']:.1f} s sampled from /proc).")
    return out



def header(binary, args, cores, peers):
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return ["# scientist beside MLflow and W&B (`scripts/bench-peers`)", "",
            f"{time.strftime('%Y-%m-%d')}, {cores} cores ({model}), Linux {platform.release()}, Python "
            f"{platform.python_version()}; {version} (`{binary}`); {', '.join(peers)}. "
            f"Command: `{' '.join(['scripts/bench-peers', *args])}`.", ""]
