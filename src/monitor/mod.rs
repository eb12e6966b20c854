//! Watching a run directory (notify), tailing logs and uploading artifacts through
//! object_store. Empty until the worker lands (issue 6).
