"""The parts of scripts/bench-peers: processes and their CPU (procs), the load generator and
both peers' wire formats (load), the servers and the ingest cells (ingest), the relay runs
(relay; wandb_child.py runs under the peers' venv), and the Markdown (report)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(ROOT, "target", "bench-peers-venv")
FLOOD = os.path.join(ROOT, "examples", "pipeline", "flood.py")
