//! Heartbeats: every `--heartbeat` (15 s by default) while a run goes, an `ai.run.heartbeat`
//! with the GPUs' figures (NVML, see `gpu`) and the CPU and memory of the run's process
//! group (sysinfo). The first beat goes out as the run starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::emit::{Draft, RunStream};
use crate::event::payload::{Heartbeat, Started};
use crate::gpu::{GpuFacts, Gpus};

/// What the pod is, measured once, and its GPUs for sampling. Cheap to clone.
#[derive(Clone)]
pub struct PodFacts {
    gpus: Arc<Gpus>,
    facts: GpuFacts,
}

impl PodFacts {
    pub fn detect(gpus: Gpus) -> PodFacts {
        let facts = gpus.facts();
        PodFacts { gpus: Arc::new(gpus), facts }
    }

    pub fn gpu_facts(&self) -> &GpuFacts {
        &self.facts
    }

    /// `ai.run.started` from pod `pod_id`: `gpu`, `region`, `image`, and (untyped) the driver
    /// and CUDA versions, where known.
    pub fn started(&self, pod_id: &str) -> Started {
        let mut extra = Map::new();
        if let Some(driver) = &self.facts.driver {
            extra.insert("driver".into(), Value::from(driver.clone()));
        }
        if let Some(cuda) = &self.facts.cuda {
            extra.insert("cuda".into(), Value::from(cuda.clone()));
        }
        // RunPod describes the pod in its environment; other hosts may set these.
        let described = |variables: [&str; 2]| {
            variables.iter().find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        };
        Started {
            pod_id: Some(pod_id.to_owned()),
            gpu: self.facts.summary(),
            gpu_model: self.facts.names.first().cloned(),
            gpu_count: u32::try_from(self.facts.names.len()).ok().filter(|count| *count > 0),
            region: described(["SCIENTIST_REGION", "RUNPOD_DC_ID"]),
            image: described(["SCIENTIST_IMAGE", "RUNPOD_POD_IMAGE"]),
            extra,
        }
    }
}

/// Sends heartbeats for `stream`'s run until aborted. `group` holds the running step's
/// process group (0 between steps).
pub async fn beat(stream: RunStream, every: Duration, facts: PodFacts, group: Arc<AtomicI32>) {
    let mut processes = match sysinfo::System::new() {
        Ok(system) => Some(system),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read process figures; heartbeats carry none");
            None
        }
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let pgid = group.load(Ordering::Relaxed);
        let gpus = facts.gpus.clone();
        // NVML and /proc are blocking calls: off the async threads.
        let sampled = tokio::task::spawn_blocking(move || {
            let usage = processes.as_mut().map(|system| group_usage(system, pgid));
            (gpus.sample(), usage, processes)
        })
        .await;
        let Ok((gpu_samples, usage, system)) = sampled else { return };
        processes = system;
        if stream.emit(Draft::of(&heartbeat(&gpu_samples, usage))).await.is_err() {
            return;
        }
    }
}

/// CPU (percent of one core, summed) and resident memory (bytes) of a process group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub processes: usize,
}

fn group_usage(system: &mut sysinfo::System, pgid: i32) -> Usage {
    if pgid <= 0 {
        return Usage { cpu_percent: 0.0, rss_bytes: 0, processes: 0 };
    }
    let pids: Vec<sysinfo::Pid> = super::child::group_pids(pgid)
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .map(sysinfo::Pid::from_u32)
        .collect();
    // CPU usage is measured between two refreshes of a process: the System lives across beats.
    system.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&pids),
        true,
        sysinfo::ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    let mut usage = Usage { cpu_percent: 0.0, rss_bytes: 0, processes: 0 };
    for pid in &pids {
        if let Some(process) = system.process(*pid) {
            usage.cpu_percent += f64::from(process.cpu_usage());
            usage.rss_bytes += process.memory();
            usage.processes += 1;
        }
    }
    usage
}

/// The heartbeat: `gpu_util` and `gpu_mem` (fractions, averaged over the devices), `cpu`
/// (percent of one core) and `rss` (bytes) of the run's processes, and, untyped, `gpus` per
/// device and the number of `processes`.
fn heartbeat(gpus: &[crate::gpu::GpuSample], usage: Option<Usage>) -> Heartbeat {
    let average = |values: Vec<f64>| (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    let memory = gpus
        .iter()
        .filter_map(|gpu| Some(gpu.mem_used_bytes? as f64 / gpu.mem_total_bytes.filter(|total| *total > 0)? as f64))
        .collect();
    let mut beat = Heartbeat {
        gpu_util: average(gpus.iter().filter_map(|gpu| gpu.util).collect()),
        gpu_mem: average(memory),
        cpu: usage.map(|usage| usage.cpu_percent),
        rss: usage.map(|usage| usage.rss_bytes as f64),
        extra: Map::new(),
    };
    if !gpus.is_empty() {
        beat.extra.insert("gpus".into(), serde_json::to_value(gpus).unwrap_or(Value::Null));
    }
    if let Some(usage) = usage {
        beat.extra.insert("processes".into(), Value::from(usage.processes));
    }
    beat
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::EventData;
    use crate::gpu::GpuSample;

    #[test]
    fn data_averages_devices_and_leaves_out_what_is_unknown() {
        let gpus = [
            GpuSample {
                index: 0,
                util: Some(0.5),
                mem_used_bytes: Some(1),
                mem_total_bytes: Some(4),
                ..Default::default()
            },
            GpuSample {
                index: 1,
                util: Some(1.0),
                mem_used_bytes: Some(3),
                mem_total_bytes: Some(4),
                ..Default::default()
            },
        ];
        let data = heartbeat(&gpus, Some(Usage { cpu_percent: 150.0, rss_bytes: 1024, processes: 2 })).to_data();
        assert_eq!(data["gpu_util"], json!(0.75));
        assert_eq!(data["gpu_mem"], json!(0.5));
        assert_eq!(data["cpu"], json!(150.0));
        assert_eq!(data["gpus"].as_array().map(Vec::len), Some(2));
        let bare = heartbeat(&[], None).to_data();
        assert!(bare.is_empty(), "{bare:?}");
    }

    #[test]
    fn usage_of_a_real_process_group() {
        let mut child = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut child, 0);
        let mut child = child.arg("30").spawn().expect("spawn sleep");
        let pgid = i32::try_from(child.id()).expect("pid");
        let mut system = sysinfo::System::new().expect("sysinfo");
        let usage = group_usage(&mut system, pgid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(usage.processes, 1);
        assert!(usage.rss_bytes > 0);
    }
}
