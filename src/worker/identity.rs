//! Who this worker is: its pod id (`RUNPOD_POD_ID` or `--pod-id`, else the host name), which
//! becomes the run's `claimedBy` and the `source` of its events (`pod://<pod id>`).

use std::fmt;

/// A pod's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodId(String);

impl PodId {
    /// The id given (flag or `RUNPOD_POD_ID`), else the host name, else `unknown`.
    pub fn resolve(given: Option<&str>) -> PodId {
        let given = given.map(str::trim).filter(|id| !id.is_empty()).map(str::to_owned);
        PodId(given.or_else(host_name).unwrap_or_else(|| "unknown".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CloudEvents `source` of this pod's events.
    pub fn source(&self) -> String {
        format!("pod://{}", self.0)
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return None;
    }
    let end = buffer.iter().position(|byte| *byte == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_id_wins_else_host_name() {
        assert_eq!(PodId::resolve(Some(" pod-7 ")).as_str(), "pod-7");
        let fallback = PodId::resolve(Some(""));
        assert!(!fallback.as_str().is_empty());
        assert_eq!(PodId::resolve(Some("a")).source(), "pod://a");
    }
}
