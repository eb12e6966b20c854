//! Where a run is (`RunStatus`) and which pipeline stage it is in (`Stage`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a run is in its life. `rank` orders the non-terminal states; terminal states are sticky.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Queued,
    Scheduled,
    Running,
    AwaitingHuman,
    Completed,
    Failed,
    Canceled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Scheduled,
        RunStatus::Running,
        RunStatus::AwaitingHuman,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled)
    }

    /// Position in `QUEUED → SCHEDULED → RUNNING → AWAITING_HUMAN → terminal`; a run only moves up.
    pub fn rank(self) -> u8 {
        match self {
            RunStatus::Queued => 0,
            RunStatus::Scheduled => 1,
            RunStatus::Running => 2,
            RunStatus::AwaitingHuman => 3,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "QUEUED",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Running => "RUNNING",
            RunStatus::AwaitingHuman => "AWAITING_HUMAN",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Failed => "FAILED",
            RunStatus::Canceled => "CANCELED",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let wanted = value.trim().to_ascii_uppercase().replace('-', "_");
        RunStatus::ALL.into_iter().find(|status| status.as_str() == wanted).ok_or_else(|| {
            let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {value:?}; expected one of {}", names.join(", "))
        })
    }
}

/// A pipeline stage, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Stage {
    Stage1,
    Stage2,
    Stage3,
    Stage4,
    Plots,
    Paper,
    Validation,
}

impl Stage {
    pub const ALL: [Stage; 7] =
        [Stage::Stage1, Stage::Stage2, Stage::Stage3, Stage::Stage4, Stage::Plots, Stage::Paper, Stage::Validation];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stage1 => "Stage_1",
            Stage::Stage2 => "Stage_2",
            Stage::Stage3 => "Stage_3",
            Stage::Stage4 => "Stage_4",
            Stage::Plots => "plots",
            Stage::Paper => "paper",
            Stage::Validation => "validation",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Stage::Stage1 => "initial implementation",
            Stage::Stage2 => "baseline tuning",
            Stage::Stage3 => "creative research",
            Stage::Stage4 => "ablation studies",
            Stage::Plots => "plots",
            Stage::Paper => "paper",
            Stage::Validation => "auto-validation",
        }
    }
}

/// Serialized through `String`: the schema lists the names `as_str` writes.
impl utoipa::PartialSchema for Stage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(Stage::ALL.map(Stage::as_str))).into()
    }
}

impl utoipa::ToSchema for Stage {}

impl TryFrom<String> for Stage {
    type Error = String;

    /// Accepts the canonical names and the long forms pipelines print, such as
    /// `Stage_2_baseline_tuning` or `auto-validation`.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let lower = value.trim().to_ascii_lowercase().replace('-', "_");
        let found = Stage::ALL.into_iter().find(|stage| {
            let name = stage.as_str().to_ascii_lowercase();
            lower == name || lower.starts_with(&format!("{name}_"))
        });
        match (found, lower.as_str()) {
            (Some(stage), _) => Ok(stage),
            (None, "auto_validation") => Ok(Stage::Validation),
            (None, _) => {
                let names: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
                Err(format!("unknown stage {value:?}; expected one of {}", names.join(", ")))
            }
        }
    }
}

impl From<Stage> for String {
    fn from(value: Stage) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
