//! Listings on MongoDB: runs newest first, and a run's events in stored order.

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::bson::{corrupt, json_to_bson};
use super::sequence::{EventCursor, stored_seq};
use super::{EVENT_RECEIVED_AT, EVENT_RUN_ID, EVENT_SEQ, EVENT_TIME_AT, MongoStore};
use crate::event::{self, Event};
use crate::run::{Run, RunId};
use crate::store::{
    EventFilter, LOG_EVENT_TYPE, Page, PageFill, Result, RunFilter, StoredEvent, level_names_at_or_above,
    parse_run_cursor, run_cursor,
};
use crate::time::Timestamp;

impl MongoStore {
    pub(super) async fn list_runs(&self, filter: &RunFilter) -> Result<Page<Run>> {
        let page = PageFill::new(filter.limit);
        let mut query = Document::new();
        if !filter.statuses.is_empty() {
            let statuses: Vec<&str> = filter.statuses.iter().map(|status| status.as_str()).collect();
            query.insert("status", doc! { "$in": statuses });
        }
        if let Some(queue) = &filter.queue {
            query.insert("queue", queue.as_str());
        }
        if let Some(cursor) = &filter.cursor {
            let (millis, id) = parse_run_cursor(cursor)?;
            let created_at = DateTime::from_millis(millis);
            let older = doc! { "createdAt": { "$lt": created_at } };
            let same_time_lower_id = doc! { "createdAt": created_at, "_id": { "$lt": id } };
            query.insert("$or", vec![older, same_time_lower_id]);
        }
        let found = self.runs.find(query).sort(doc! { "createdAt": -1, "_id": -1 }).limit(page.rows_to_read() as i64);
        let page = fill(page, found.await?, |run| {
            let size = crate::limits::json_len(&run);
            Ok((run, size))
        })
        .await?;
        Ok(page.finish(run_cursor))
    }

    /// One page of a run's events in stored order (`forward`) or newest first, after or
    /// before `filter.cursor`: by `storeSeq` (see `sequence`), the events without one first,
    /// by `_id`. A forward page ends before a gap in the order that is still in its grace
    /// period, and one that would be empty because of it waits for the gap to fill (at most
    /// `GAP_GRACE`). The first newest-first page, where a live tail starts, also ends below
    /// such a gap.
    pub(super) async fn events_page(
        &self,
        run_id: &RunId,
        filter: &EventFilter,
        forward: bool,
    ) -> Result<Page<StoredEvent>> {
        let cursor = filter.cursor.as_deref().map(EventCursor::parse).transpose()?;
        if !forward && cursor.is_some() {
            // Paging back through history: everything below the cursor is settled or passed.
            return self.read_events(run_id, filter, cursor, forward, None).await;
        }
        let floor = if forward { EventCursor::seq_floor(cursor) } else { 0 };
        loop {
            let horizon = self.horizon(run_id, floor).await?;
            let page = self.read_events(run_id, filter, cursor, forward, Some(horizon.seq)).await?;
            match horizon.held_for {
                Some(wait) if forward && page.items.is_empty() => tokio::time::sleep(wait).await,
                // Cut short at a gap that may still fill: there is more, so say where to go on
                // from (a reader that pages until `next` is None must not stop at the gap).
                Some(_) if forward && page.next.is_none() => {
                    let next = page.items.last().map(|event| event.cursor.clone());
                    return Ok(Page { next, ..page });
                }
                _ => return Ok(page),
            }
        }
    }

    /// One page of a run's events as stored now, in the listing's order, none with a seq
    /// above `up_to_seq`.
    async fn read_events(
        &self,
        run_id: &RunId,
        filter: &EventFilter,
        cursor: Option<EventCursor>,
        forward: bool,
        up_to_seq: Option<i64>,
    ) -> Result<Page<StoredEvent>> {
        let page = PageFill::new(filter.limit);
        let mut conditions = Vec::new();
        if let Some(cursor) = cursor {
            conditions.push(cursor.beyond(forward));
        }
        if let Some(horizon) = up_to_seq {
            // `$lt`, never `$lte`: see `MongoStore::stored_between`.
            conditions
                .push(doc! { "$or": [{ EVENT_SEQ: { "$exists": false } }, { EVENT_SEQ: { "$lt": horizon + 1 } }] });
        }
        if !filter.types.is_empty() {
            conditions.push(doc! { "type": { "$in": &filter.types } });
        }
        if let Some(min_level) = filter.min_level {
            let mut names: Vec<Bson> = level_names_at_or_above(min_level).into_iter().map(Bson::from).collect();
            // `$in` with null also matches a missing field: a line without a level is info.
            if names.contains(&Bson::from("info")) {
                names.push(Bson::Null);
            }
            conditions.push(doc! { "type": LOG_EVENT_TYPE, "data.level": { "$in": names } });
        }
        let mut query = doc! { EVENT_RUN_ID: run_id.as_str() };
        if !conditions.is_empty() {
            query.insert("$and", conditions);
        }
        let direction = if forward { 1 } else { -1 };
        let order = doc! { EVENT_SEQ: direction, "_id": direction };
        let found = self.events.find(query).sort(order).limit(page.rows_to_read() as i64);
        let page = fill(page, found.await?, |document| {
            let event = parse_stored_event(document)?;
            let size = crate::limits::json_len(&event.event.data);
            Ok((event, size))
        })
        .await?;
        Ok(page.finish(|event| event.cursor.clone()))
    }
}

/// The stored form of an event: its JSON form (so `time` stays an RFC 3339 string that
/// `from_json_object` re-parses) plus the run, and both times as BSON Dates for queries.
/// `seq` is its place in its run's order, when it has a run.
pub(super) fn event_document(event: &Event, now: Timestamp, seq: Option<i64>) -> Document {
    let mut document: Document = event.to_json().into_iter().map(|(name, value)| (name, json_to_bson(value))).collect();
    document.insert(EVENT_RUN_ID, event.run_id.as_ref().map(RunId::as_str));
    document.insert(EVENT_TIME_AT, DateTime::from(event.time));
    document.insert(EVENT_RECEIVED_AT, DateTime::from(now));
    if let Some(seq) = seq {
        document.insert(EVENT_SEQ, seq);
    }
    document
}

pub(super) fn parse_stored_event(mut document: Document) -> Result<StoredEvent> {
    let position = document.get_object_id("_id").map_err(|err| corrupt("stored event", err))?;
    let what = || format!("event {position}");
    let cursor = match stored_seq(&document) {
        Some(seq) => EventCursor::Seq(seq),
        None => EventCursor::Legacy(position),
    };
    let received_at = document.get_datetime(EVENT_RECEIVED_AT).map_err(|err| corrupt(what(), err))?;
    let received_at = Timestamp::from_millis(received_at.timestamp_millis());
    for added in ["_id", EVENT_RUN_ID, EVENT_TIME_AT, EVENT_RECEIVED_AT, EVENT_SEQ] {
        document.remove(added);
    }
    let object: Map<String, Value> =
        document.into_iter().map(|(name, value)| (name, value.into_relaxed_extjson())).collect();
    let event = event::from_json_object(object, received_at).map_err(|err| corrupt(what(), err))?;
    Ok(StoredEvent { cursor: cursor.render(), received_at, event })
}

/// Fills `page` from `found`, reading no further than the page can use (one row past its
/// limit or past its byte bound), never the whole result first.
async fn fill<D, T>(
    mut page: PageFill<T>,
    mut found: mongodb::Cursor<D>,
    row: impl Fn(D) -> Result<(T, usize)>,
) -> Result<PageFill<T>>
where
    D: DeserializeOwned + Send + Sync + Unpin,
{
    while let Some(document) = found.try_next().await? {
        let (item, size) = row(document)?;
        if !page.push(item, size) {
            break;
        }
    }
    Ok(page)
}
