//! Run artifacts as objects: where they are kept and how they are read (`store`: a local
//! directory or S3 through object_store), one file's upload (`upload`, the worker's), and
//! fetching a run's artifacts into a directory with their sha256 checked (`pull`, from the
//! store directly or through `serve`'s API, `sources`). The records of what was stored are
//! the store's (`store::Artifact`); nothing here knows about runs' states or HTTP routes.

mod partial;
pub mod pull;
pub mod sources;
pub mod store;
pub mod upload;

pub use pull::{Fetched, PullError, PullOptions, PullReport, Pulled, Source, SourceError};
pub use sources::ApiSource;
pub use store::{ArtifactStore, KeyError, ObjectInfo, ObjectRead, OpenError, ReadError, relative_to_run, run_object};
pub use upload::{UploadError, Uploaded, hex, sha256_file};
