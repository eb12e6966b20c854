//! `apply_events` on MongoDB: dedup claims in `events_seen`, the events themselves, side
//! records (artifacts, hypotheses' ideas) and the one conditional write per run a batch makes.

use std::collections::{HashMap, HashSet};

use futures_util::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::ErrorKind;

use super::bson::{is_duplicate_key, parse_event_key, to_document};
use super::pages::{event_document, parse_stored_event};
use super::{DUPLICATE_KEY, EVENT_RUN_ID, EVENT_SEQ, MAX_CAS_TRIES, MongoStore};
use crate::event::Event;
use crate::run::{EventKey, RunId};
use crate::store::{Effect, Error, Outcome, Result, SideRecord, apply_new_event, replaces, replay, side_record};
use crate::time::Timestamp;

impl MongoStore {
    /// Per event: claim its pair in `events_seen` (a claim already marked applied is a
    /// duplicate; an unmarked one was left by a call that failed mid-way and is taken over),
    /// store it in `events`, write its side record, apply it to its run, then mark the claim
    /// applied. Every step may be repeated: inserts tolerate duplicate keys and the reducer
    /// is idempotent. Each step is done for the whole batch at once, and each run touched
    /// is written once.
    pub(super) async fn apply_batch(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        // A pair repeated within the batch is a duplicate of its first occurrence, as in SQLite.
        let mut in_batch = HashSet::new();
        for (outcome, event) in outcomes.iter_mut().zip(&events) {
            if !in_batch.insert(pair(event)) {
                *outcome = Some(Outcome::Duplicate);
            }
        }

        let pending = undecided(&outcomes);
        let claims = pending.iter().map(|&i| seen_document(&events[i], now));
        let refused = insert_all(&self.events_seen, claims.collect()).await?;
        let claimed_now: HashSet<usize> =
            pending.iter().enumerate().filter(|(position, _)| !refused.contains(position)).map(|(_, &i)| i).collect();
        let seen_before: Vec<usize> = refused.iter().map(|&position| pending[position]).collect();
        if !seen_before.is_empty() {
            let seen_events: Vec<&Event> = seen_before.iter().map(|&i| &events[i]).collect();
            let applied = self.applied_pairs(&seen_events).await?;
            for i in seen_before {
                if applied.contains(&pair(&events[i])) {
                    outcomes[i] = Some(Outcome::Duplicate);
                }
            }
        }

        let pending = undecided(&outcomes);
        let seqs = self.reserve_batch_seqs(&events, &pending).await?;
        let documents = pending.iter().zip(seqs).map(|(&i, seq)| event_document(&events[i], now, seq)).collect();
        for position in insert_all(&self.events, documents).await? {
            let i = pending[position];
            // Claimed just now, yet already stored: its claim expired (TTL) after an earlier
            // delivery, or a concurrent call is storing it (that call applies it). Either way
            // a duplicate. The claim is left unmarked so that, should that concurrent call
            // fail, its retry still applies the event.
            if claimed_now.contains(&i) {
                outcomes[i] = Some(Outcome::Duplicate);
            }
        }

        let pending = undecided(&outcomes);
        let mut by_run: Vec<(&RunId, Vec<usize>)> = Vec::new();
        let mut run_slot: HashMap<&RunId, usize> = HashMap::new();
        for &i in &pending {
            let event = &events[i];
            if let Some(record) = side_record(event) {
                self.save_side_record(record).await?;
            }
            match &event.run_id {
                None => outcomes[i] = Some(Outcome::Applied),
                Some(run_id) => {
                    let slot = *run_slot.entry(run_id).or_insert_with(|| {
                        by_run.push((run_id, Vec::new()));
                        by_run.len() - 1
                    });
                    by_run[slot].1.push(i);
                }
            }
        }
        for (run_id, indexes) in by_run {
            let run_events: Vec<&Event> = indexes.iter().map(|&i| &events[i]).collect();
            let effects = self.apply_to_run(run_id, &run_events, now).await?;
            for (i, effect) in indexes.into_iter().zip(effects) {
                outcomes[i] = Some(effect.outcome());
            }
        }

        if !pending.is_empty() {
            let ids: Vec<String> = pending.iter().map(|&i| seen_id(&events[i])).collect();
            self.events_seen.update_many(doc! { "_id": { "$in": ids } }, doc! { "$set": { "applied": true } }).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every event is decided above: duplicate, or applied to its run"))
            .collect())
    }

    /// The seq of each of `events[pending]` in its run's order (`None` for an event without a
    /// run), in batch order: one reservation per run.
    async fn reserve_batch_seqs(&self, events: &[Event], pending: &[usize]) -> Result<Vec<Option<i64>>> {
        let mut per_run: Vec<(&RunId, usize)> = Vec::new();
        for &i in pending {
            if let Some(run_id) = &events[i].run_id {
                match per_run.iter_mut().find(|(id, _)| *id == run_id) {
                    Some((_, count)) => *count += 1,
                    None => per_run.push((run_id, 1)),
                }
            }
        }
        let mut next: HashMap<&RunId, i64> = HashMap::with_capacity(per_run.len());
        for (run_id, count) in per_run {
            next.insert(run_id, self.reserve_seqs(run_id, count).await?);
        }
        Ok(pending
            .iter()
            .map(|&i| {
                let seq = next.get_mut(events[i].run_id.as_ref()?)?;
                *seq += 1;
                Some(*seq - 1)
            })
            .collect())
    }

    /// A run's stored events, oldest first.
    pub(super) async fn run_events(&self, id: &RunId) -> Result<Vec<Event>> {
        let documents: Vec<Document> = self
            .events
            .find(doc! { EVENT_RUN_ID: id.as_str() })
            .sort(doc! { EVENT_SEQ: 1, "_id": 1 })
            .await?
            .try_collect()
            .await?;
        documents.into_iter().map(|document| Ok(parse_stored_event(document)?.event)).collect()
    }

    /// The pairs among `events` whose `events_seen` claim is marked applied.
    async fn applied_pairs(&self, events: &[&Event]) -> Result<HashSet<(String, String)>> {
        let by_seen_id: HashMap<String, (String, String)> =
            events.iter().map(|event| (seen_id(event), pair(event))).collect();
        let ids: Vec<&String> = by_seen_id.keys().collect();
        let seen: Vec<Document> = self
            .events_seen
            .find(doc! { "_id": { "$in": ids }, "applied": true })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(seen.iter().filter_map(|seen| by_seen_id.get(seen.get_str("_id").ok()?).cloned()).collect())
    }

    /// Applies one run's new events from a batch, in order, with one conditional write
    /// (reloaded and redone when another writer got there first).
    async fn apply_to_run(&self, run_id: &RunId, events: &[&Event], now: Timestamp) -> Result<Vec<Effect>> {
        for _ in 0..MAX_CAS_TRIES {
            let before = self.runs.find_one(doc! { "_id": run_id.as_str() }).await?;
            let mut slot = before.clone();
            let mut effects = Vec::with_capacity(events.len());
            // Pairs already reflected in the run: the batch's, and those replayed on creation.
            let mut known: HashSet<(String, String)> = events.iter().map(|event| pair(event)).collect();
            for (position, event) in events.iter().enumerate() {
                let effect = apply_new_event(&mut slot, event, now, &self.rules);
                if effect == Effect::Created {
                    // Replay what was stored up to this event, as SQLite does; the batch's
                    // later events are applied next, by this loop.
                    let later: HashSet<_> = events[position + 1..].iter().map(|event| pair(event)).collect();
                    let stored: Vec<Event> =
                        self.run_events(run_id).await?.into_iter().filter(|e| !later.contains(&pair(e))).collect();
                    known.extend(stored.iter().map(pair));
                    if let Some(run) = slot.as_mut() {
                        replay(run, &stored);
                    }
                }
                effects.push(effect);
            }
            let Some(mut run) = slot else { return Ok(effects) };
            match &before {
                None => {
                    // As every run write (and SQLite's creation by events): its cost, budget
                    // and alerts, from what the batch and the replay made of it.
                    crate::store::before_save(&mut run, &self.rules, now);
                    run.updated_at = now;
                    match self.runs.insert_one(&run).await {
                        Ok(_) => {}
                        // Created concurrently (another replica, or `enqueue`): apply onto it.
                        Err(err) if is_duplicate_key(&err) => continue,
                        Err(err) => return Err(err.into()),
                    }
                    self.mirror_stages(None, &run).await?;
                    self.catch_up(run_id, &known, now).await?;
                    return Ok(effects);
                }
                Some(before) => {
                    if self.save_run(before, &mut run, now).await? {
                        return Ok(effects);
                    }
                }
            }
        }
        Err(Error::Contention(format!("run {run_id}")))
    }

    /// Applies events stored while the run was being created. Another call may have stored
    /// an event for it after we read its events but before the run existed (it answered
    /// Orphan); SQLite's single writer cannot interleave like that, MongoDB can.
    async fn catch_up(&self, run_id: &RunId, known: &HashSet<(String, String)>, now: Timestamp) -> Result<()> {
        let missed: Vec<Event> =
            self.run_events(run_id).await?.into_iter().filter(|event| !known.contains(&pair(event))).collect();
        if missed.is_empty() {
            return Ok(());
        }
        self.update_run(run_id, now, |mut run| {
            replay(&mut run, &missed);
            Ok(Some(run))
        })
        .await
        .map(drop)
    }

    async fn save_side_record(&self, record: SideRecord) -> Result<()> {
        match record {
            SideRecord::Artifact(artifact) => {
                let key = doc! { "runId": artifact.run_id.as_str(), "key": artifact.key.as_str() };
                let fields = to_document("artifact", &artifact)?;
                if !keep_latest(&self.artifacts, key, &artifact.at, fields).await? {
                    return Err(Error::Contention(format!("artifact {} of run {}", artifact.key, artifact.run_id)));
                }
            }
            SideRecord::Hypothesis(ideas) => {
                let key = doc! { "_id": ideas.id.as_str() };
                // `$set` of our fields only: the frontend's own fields of the hypothesis stay.
                let mut fields = to_document("hypothesis", &ideas)?;
                fields.remove("_id");
                if !keep_latest(&self.hypotheses, key, &ideas.at, fields).await? {
                    return Err(Error::Contention(format!("hypothesis {}", ideas.id)));
                }
            }
        }
        Ok(())
    }
}

/// Stores `fields` in the document matching `key` unless it holds a later fact already
/// ([`replaces`]): read, compare, then a write conditional on what was read, retried when
/// another writer changed it in between. False when it kept losing that race.
async fn keep_latest(
    collection: &Collection<Document>,
    key: Document,
    at: &EventKey,
    fields: Document,
) -> Result<bool> {
    for _ in 0..MAX_CAS_TRIES {
        let existing = collection.find_one(key.clone()).projection(doc! { "at": 1 }).await?;
        let Some(existing) = existing else {
            let mut document = key.clone();
            document.extend(fields.clone());
            match collection.insert_one(document).await {
                Ok(_) => return Ok(true),
                Err(err) if is_duplicate_key(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        };
        let existing_at = match existing.get("at") {
            None | Some(Bson::Null) => None,
            Some(stored) => Some(parse_event_key(stored)?),
        };
        if !replaces(existing_at.as_ref(), at) {
            return Ok(true);
        }
        let mut filter = key.clone();
        match &existing_at {
            // A document we have not written yet (a hypothesis the frontend created).
            None => {
                filter.insert("at", Bson::Null);
            }
            Some(existing_at) => {
                filter.insert("at.time", DateTime::from(existing_at.time));
                filter.insert("at.id", existing_at.id.as_str());
                filter.insert("at.source", existing_at.source.as_str());
            }
        }
        if collection.update_one(filter, doc! { "$set": fields.clone() }).await?.matched_count == 1 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The (source, id) pair that identifies an event (the CloudEvents dedup key).
fn pair(event: &Event) -> (String, String) {
    (event.source.clone(), event.id.0.clone())
}

/// The `events_seen` key of an event's (source, id) pair. The length prefix makes it
/// unambiguous whatever the source contains; a string (not a sub-document) keeps `$in`
/// lookups on the `_id` index everywhere (SecantusDB scans for sub-document `$in`).
fn seen_id(event: &Event) -> String {
    format!("{}|{}|{}", event.source.len(), event.source, event.id)
}

pub(super) fn seen_document(event: &Event, now: Timestamp) -> Document {
    doc! {
        "_id": seen_id(event),
        "runId": event.run_id.as_ref().map(RunId::as_str),
        "processedAt": DateTime::from(now),
        "applied": false,
    }
}

/// Inserts `documents` in one unordered round trip; returns the positions refused with a
/// duplicate key. Any other failure is an error.
async fn insert_all(collection: &Collection<Document>, documents: Vec<Document>) -> Result<HashSet<usize>> {
    if documents.is_empty() {
        return Ok(HashSet::new());
    }
    let err = match collection.insert_many(documents).ordered(false).await {
        Ok(_) => return Ok(HashSet::new()),
        Err(err) => err,
    };
    if let ErrorKind::InsertMany(failure) = err.kind.as_ref()
        && let (Some(errors), None) = (&failure.write_errors, &failure.write_concern_error)
        && errors.iter().all(|error| error.code == DUPLICATE_KEY)
    {
        return Ok(errors.iter().map(|error| error.index).collect());
    }
    Err(err.into())
}

fn undecided(outcomes: &[Option<Outcome>]) -> Vec<usize> {
    outcomes.iter().enumerate().filter(|(_, outcome)| outcome.is_none()).map(|(i, _)| i).collect()
}
