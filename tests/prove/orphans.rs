//! An operator's cancel of a stage whose whole process tree ignores SIGTERM: the stage forks
//! children that fork grandchildren, one child exits and leaves its grandchild to init, and
//! one leaves the process group with `setsid`. The worker must stop the tree within its
//! grace period: SIGTERM to the group and to what left it, SIGKILL once the grace is over. Measured from the
//! cancel request to the moment every process of the tree is gone (read from /proc), against
//! grace + 1 s; the run must end CANCELED.

use std::path::Path;
use std::time::{Duration, Instant};

use scientist::run::{NewRun, RunStatus};
use scientist::time::Timestamp;
use serde_json::json;

use crate::support::{self, StoreSpec};
use crate::{Mode, Report};

/// Between SIGTERM and SIGKILL: short, so that every round is quick.
const GRACE: Duration = Duration::from_secs(2);
/// How often the worker looks for a cancel request (its part of the time to stop).
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The stage: every process ignores SIGTERM (the stage itself notes it in `termed`), and the
/// tree's pids are written to `pids` as `group PID` or `escaped PID` once all are running.
const TREE: &str = r#"
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by every fork
reports_r, reports_w = os.pipe()

def report(kind):
    os.write(reports_w, ("%s %d\n" % (kind, os.getpid())).encode())

def stay():
    while True:
        time.sleep(3600)

def spawn(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid

def grandchild():
    report("group")
    stay()

def child():
    spawn(grandchild)
    spawn(grandchild)
    report("group")
    stay()

def abandoner():
    # Exits at once: its child lives on, reparented, still in the stage's process group.
    spawn(grandchild)

def escapee():
    os.setsid()
    report("escaped")
    stay()

report("group")
for body in (child, child, abandoner, escapee):
    spawn(body)
expected, text = 1 + 3 + 3 + 1 + 1, b""
while text.count(b"\n") < expected:
    text += os.read(reports_r, 4096)
open("pids.tmp", "wb").write(text)
os.rename("pids.tmp", "pids")
signal.signal(signal.SIGTERM, lambda *_: open("termed", "w").close())
stay()
"#;

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in support::both_stores(dir.path()) {
        let rounds = mode.pick(3, 20);
        let mut worst = Worst::default();
        for round in 0..rounds {
            let pod = dir.path().join(format!("pod-{}-{round}", store.kind()));
            std::fs::create_dir_all(&pod).expect("the pod's directory");
            worst.add(cancel_once(&store, &pod).await);
        }
        let name = |figure: &str| format!("orphans {}: {figure}", store.kind());
        report.figure(&name("rounds"), rounds);
        report.figure(&name("grace, cancel poll"), format!("{:?}, {:?}", GRACE, CANCEL_POLL));
        report.figure(&name("processes in each tree"), worst.processes);
        report.figure(&name("worst cancel to SIGTERM"), format!("{:.2} s", worst.to_term.as_secs_f64()));
        report.figure(&name("worst cancel to all gone"), format!("{:.2} s", worst.to_gone.as_secs_f64()));
        report.figure(&name("worst cancel to CANCELED stored"), format!("{:.2} s", worst.to_canceled.as_secs_f64()));
        report.zero(&name("processes left after grace + 1 s"), worst.left);
        report.zero(&name("of which setsid escapees"), worst.escaped);
        report.zero(&name("trees gone before the grace period ended"), worst.early);
        report.zero(&name("runs not CANCELED"), worst.not_canceled);
        report.zero(&name("workers that did not exit 0"), worst.worker_failed);
        store.cleanup().await;
    }
}

/// The worst of the rounds (times) and their sums (counts).
#[derive(Default)]
struct Worst {
    processes: usize,
    to_term: Duration,
    to_gone: Duration,
    to_canceled: Duration,
    left: u64,
    early: u64,
    escaped: u64,
    not_canceled: u64,
    worker_failed: u64,
}

impl Worst {
    fn add(&mut self, round: Round) {
        self.processes = self.processes.max(round.processes);
        self.to_term = self.to_term.max(round.to_term);
        self.to_gone = self.to_gone.max(round.to_gone);
        self.to_canceled = self.to_canceled.max(round.to_canceled);
        self.left += round.left;
        self.early += u64::from(round.to_gone < round.to_term + GRACE.mul_f64(0.9));
        self.escaped += round.escaped;
        self.not_canceled += u64::from(!round.canceled);
        self.worker_failed += u64::from(!round.worker_ok);
    }
}

struct Round {
    processes: usize,
    to_term: Duration,
    to_gone: Duration,
    to_canceled: Duration,
    left: u64,
    escaped: u64,
    canceled: bool,
    worker_ok: bool,
}

async fn cancel_once(spec: &StoreSpec, pod: &Path) -> Round {
    let store = spec.open().await;
    let run = store.enqueue(NewRun::new(json!({"title": "orphans"})), Timestamp::now()).await.expect("enqueue").id;
    let script = pod.join("tree.py");
    std::fs::write(&script, TREE).expect("write the stage");
    let config =
        format!("[[stage]]\nname = \"Stage_1\"\ncommand = [\"python3\", {:?}]\n", script.display().to_string());
    let mut worker = support::worker(pod, &config)
        .args(["--once", "--grace", &format!("{}ms", GRACE.as_millis())])
        .env("SCIENTIST_CANCEL_POLL", format!("{}ms", CANCEL_POLL.as_millis()))
        .envs(spec.env())
        .spawn()
        .expect("start the worker");
    let dir = support::run_dir(pod, &run).await;
    let tree = support::poll_until("process tree of the stage", Duration::from_secs(60), async || {
        let text = std::fs::read_to_string(dir.join("pids")).ok()?;
        let mut tree = Tree::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("group", pid)) => tree.group.extend(pid.parse::<i32>().ok()),
                Some(("escaped", pid)) => tree.escaped.extend(pid.parse::<i32>().ok()),
                _ => {}
            }
        }
        Some(tree)
    })
    .await;

    let asked = Instant::now();
    store.request_cancel(&run, "prove", Some("orphans".into()), Timestamp::now()).await.expect("request the cancel");
    let termed = dir.join("termed");
    let mut to_term = None;
    let deadline = asked + GRACE + Duration::from_secs(1);
    let (mut left, mut escaped) = (None, 0);
    // Every process of the tree, escapees included; polled past the deadline too (up to the
    // worker's own SIGKILL wait), so that a slow stop is measured, not only counted.
    let to_gone = loop {
        if to_term.is_none() && termed.exists() {
            to_term = Some(asked.elapsed());
        }
        let alive = tree.group.iter().chain(&tree.escaped).filter(|pid| !gone(**pid)).count() as u64;
        if left.is_none() && Instant::now() >= deadline {
            left = Some(alive);
            escaped = tree.escaped.iter().filter(|pid| !gone(**pid)).count() as u64;
        }
        if alive == 0 {
            break asked.elapsed();
        }
        if asked.elapsed() > GRACE + Duration::from_secs(10) {
            break asked.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stopped = support::poll_until("terminal run", Duration::from_secs(30), async || {
        let stored = store.get(&run).await.ok()??;
        stored.status.is_terminal().then_some(stored.status)
    })
    .await;
    let to_canceled = asked.elapsed();
    let exited = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    let worker_ok = matches!(exited, Ok(Ok(status)) if status.success());
    if !worker_ok || stopped != RunStatus::Canceled {
        eprintln!("orphans: the worker's log:\n{}", support::worker_log(pod));
    }
    let processes = tree.group.len() + tree.escaped.len();
    drop(tree);
    Round {
        processes,
        to_term: to_term.unwrap_or(to_gone),
        to_gone,
        to_canceled,
        left: left.unwrap_or(0),
        escaped,
        canceled: stopped == RunStatus::Canceled,
        worker_ok,
    }
}

/// The stage's processes; whatever is still alive when this is dropped is killed, so that
/// no round leaves processes behind, whatever the worker did.
#[derive(Default)]
struct Tree {
    group: Vec<i32>,
    escaped: Vec<i32>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        for pid in self.group.iter().chain(&self.escaped) {
            if !gone(*pid) {
                // SAFETY: kill(2) of a process this round's stage started and that is still alive.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Whether a process is gone (a zombie waiting for its reaper counts as gone).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
