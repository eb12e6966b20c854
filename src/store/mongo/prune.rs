//! `prune_logs` on MongoDB: old log events found in `_id` order, then deleted by `_id` with
//! the same conditions checked again.

use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};

use super::bson::corrupt;
use super::{EVENT_RECEIVED_AT, MongoStore};
use crate::store::{Error, LOG_EVENT_TYPE, Pruned, Result};
use crate::time::Timestamp;

impl MongoStore {
    /// The receipt time of the newest `_id` (ids grow with the time they were made).
    pub(super) async fn newest_received_at(&self) -> Result<Option<Timestamp>> {
        let newest =
            self.events.find_one(doc! {}).sort(doc! { "_id": -1 }).projection(doc! { EVENT_RECEIVED_AT: 1 }).await?;
        newest
            .map(|document| {
                let at = document.get_datetime(EVENT_RECEIVED_AT).map_err(|err| corrupt("stored event", err))?;
                Ok(Timestamp::from_millis(at.timestamp_millis()))
            })
            .transpose()
    }

    pub(super) async fn prune_old_logs(&self, cutoff: Timestamp, from: Option<String>, limit: usize) -> Result<Pruned> {
        let old = doc! { "type": LOG_EVENT_TYPE, EVENT_RECEIVED_AT: { "$lt": DateTime::from(cutoff) } };
        let mut filter = old.clone();
        if let Some(cursor) = &from {
            let after = ObjectId::parse_str(cursor).map_err(|_| Error::InvalidCursor(cursor.clone()))?;
            filter.insert("_id", doc! { "$gt": after });
        }
        let found: Vec<Document> = self
            .events
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit as i64)
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let ids = found
            .iter()
            .map(|document| document.get_object_id("_id").map_err(|err| corrupt("stored event", err)))
            .collect::<Result<Vec<ObjectId>>>()?;
        let Some(last) = ids.last() else { return Ok(Pruned { deleted: 0, next: None }) };
        let next = (ids.len() == limit).then(|| last.to_hex());
        let mut delete = old;
        delete.insert("_id", doc! { "$in": &ids });
        let deleted = self.events.delete_many(delete).await?.deleted_count;
        Ok(Pruned { deleted, next })
    }
}
