//! The pod's GPUs through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1` at run
//! time): their names, driver and CUDA version once, and utilisation, memory, temperature
//! and power per device on each heartbeat. Where there is no library or no device it says so
//! in one log line and reports no GPU; nothing else changes.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use serde::Serialize;

/// What a pod says about its GPUs once.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuFacts {
    /// Device names, by index.
    pub names: Vec<String>,
    pub memory_total_bytes: Vec<u64>,
    pub driver: Option<String>,
    /// e.g. "12.4".
    pub cuda: Option<String>,
}

impl GpuFacts {
    /// "NVIDIA H100 80GB HBM3" or "2x NVIDIA A100-SXM4-40GB"; `None` without a GPU.
    pub fn summary(&self) -> Option<String> {
        let first = self.names.first()?;
        Some(match self.names.len() {
            1 => first.clone(),
            count => format!("{count}x {first}"),
        })
    }
}

/// One device's figures at one moment; a figure the device does not report is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    /// Fraction of time a kernel ran over the last sample period (0..1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub util: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
}

/// NVML when it could be loaded.
pub struct Gpus {
    nvml: Option<Nvml>,
}

impl Gpus {
    /// Loads NVML; without it (no driver, no device) logs one line and carries on.
    pub fn open() -> Gpus {
        match Nvml::init() {
            Ok(nvml) => {
                if matches!(nvml.device_count(), Ok(0)) {
                    tracing::warn!("NVML found no GPU on this machine; heartbeats carry no GPU figures");
                }
                Gpus { nvml: Some(nvml) }
            }
            Err(err) => {
                tracing::warn!(reason = %err, "no NVIDIA driver (NVML) on this machine; heartbeats carry no GPU figures");
                Gpus { nvml: None }
            }
        }
    }

    /// No GPU at all, for tests and machines told not to look.
    pub fn none() -> Gpus {
        Gpus { nvml: None }
    }

    pub fn facts(&self) -> GpuFacts {
        let Some(nvml) = &self.nvml else { return GpuFacts::default() };
        let mut facts = GpuFacts {
            driver: nvml.sys_driver_version().ok(),
            cuda: nvml.sys_cuda_driver_version().ok().map(|version| {
                format!(
                    "{}.{}",
                    nvml_wrapper::cuda_driver_version_major(version),
                    nvml_wrapper::cuda_driver_version_minor(version)
                )
            }),
            ..GpuFacts::default()
        };
        for index in 0..nvml.device_count().unwrap_or(0) {
            let Ok(device) = nvml.device_by_index(index) else { continue };
            facts.names.push(device.name().unwrap_or_else(|_| "unknown GPU".into()));
            facts.memory_total_bytes.push(device.memory_info().map(|memory| memory.total).unwrap_or(0));
        }
        facts
    }

    pub fn sample(&self) -> Vec<GpuSample> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        (0..nvml.device_count().unwrap_or(0))
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok();
                Some(GpuSample {
                    index,
                    name: device.name().unwrap_or_default(),
                    util: device.utilization_rates().ok().map(|rates| f64::from(rates.gpu) / 100.0),
                    mem_used_bytes: memory.as_ref().map(|memory| memory.used),
                    mem_total_bytes: memory.as_ref().map(|memory| memory.total),
                    temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                    power_w: device.power_usage().ok().map(|milliwatts| f64::from(milliwatts) / 1000.0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI has no GPU: opening NVML must fall back, not fail, and report nothing.
    #[test]
    fn without_a_driver_nothing_is_reported() {
        let gpus = Gpus::open();
        if gpus.nvml.is_none() {
            assert_eq!(gpus.facts(), GpuFacts::default());
            assert!(gpus.sample().is_empty());
            assert_eq!(gpus.facts().summary(), None);
        }
        assert!(Gpus::none().sample().is_empty());
    }

    #[test]
    fn summary_counts_devices() {
        let facts = GpuFacts { names: vec!["A100".into(), "A100".into()], ..GpuFacts::default() };
        assert_eq!(facts.summary().as_deref(), Some("2x A100"));
    }
}
