//! MongoDB backend (being written).

use crate::store::Result;

/// The MongoDB store.
pub struct MongoStore;

impl MongoStore {
    pub async fn connect(_url: &str, _database: Option<&str>) -> Result<Self> {
        Ok(MongoStore)
    }
}
