//! Ideation requests on MongoDB, in the collection the web frontend writes too: its own
//! fields are kept, and the hypothesis's `ideation.status` follows each change.

use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use serde_json::Value;

use super::bson::{corrupt, from_raw, is_duplicate_key, plain_json, to_document};
use super::{MAX_CAS_TRIES, MongoStore};
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::store::{Error, IdeationChange, Result, clamp_limit};
use crate::time::Timestamp;

impl MongoStore {
    pub(super) async fn insert_ideation(&self, new: NewIdeation, now: Timestamp) -> Result<IdeationRequest> {
        let request = IdeationRequest::queued(new, now);
        let mut document = to_document("ideation request", &request.document)?;
        document.extend(to_document("ideation request", &request)?);
        match self.ideation.insert_one(document).await {
            Ok(_) => Ok(request),
            Err(err) if is_duplicate_key(&err) => Err(Error::IdeationExists(request.id)),
            Err(err) => Err(err.into()),
        }
    }

    /// The stored request with id `id` (a string, or the hex of a frontend's ObjectId), with
    /// its raw `_id` for conditional writes.
    pub(super) async fn load_ideation(&self, id: &str) -> Result<Option<(Bson, IdeationRequest)>> {
        let found = self.ideation.find_one(doc! { "_id": { "$in": id_forms(id) } }).await?;
        found.map(ideation_from).transpose()
    }

    pub(super) async fn list_ideation_requests(
        &self,
        statuses: &[IdeationStatus],
        limit: usize,
    ) -> Result<Vec<IdeationRequest>> {
        let mut filter = Document::new();
        if !statuses.is_empty() {
            let names: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
            filter.insert("status", doc! { "$in": names });
        }
        let documents: Vec<Document> = self
            .ideation
            .find(filter)
            .sort(doc! { "createdAt": 1, "_id": 1 })
            .limit(clamp_limit(limit) as i64)
            .await?
            .try_collect()
            .await?;
        documents.into_iter().map(|document| Ok(ideation_from(document)?.1)).collect()
    }

    pub(super) async fn claim_oldest_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>> {
        for _ in 0..MAX_CAS_TRIES {
            let oldest = self
                .ideation
                .find_one(doc! { "status": IdeationStatus::Queued.as_str() })
                .sort(doc! { "createdAt": 1, "_id": 1 })
                .await?;
            let Some((raw_id, mut request)) = oldest.map(ideation_from).transpose()? else { return Ok(None) };
            let before = request.clone();
            request.claim(worker, now);
            if self.save_ideation(&raw_id, &before, &request).await? {
                return Ok(Some(request));
            }
        }
        Err(Error::Contention("the ideation queue".into()))
    }

    pub(super) async fn update_ideation(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>> {
        for _ in 0..MAX_CAS_TRIES {
            let Some((raw_id, before)) = self.load_ideation(id).await? else { return Ok(None) };
            let mut request = before.clone();
            if !change(&mut request) {
                return Ok(None);
            }
            if self.save_ideation(&raw_id, &before, &request).await? {
                return Ok(Some(request));
            }
        }
        Err(Error::Contention(format!("ideation request {id}")))
    }

    /// Writes our fields of `request` over the stored document with raw id `raw_id`, only if
    /// it is still as `before` was read (status, attempt, heard at). False when another
    /// writer changed it first.
    async fn save_ideation(&self, raw_id: &Bson, before: &IdeationRequest, request: &IdeationRequest) -> Result<bool> {
        let mut fields = to_document("ideation request", request)?;
        fields.remove("_id");
        // A request the frontend just created has no `attempt` yet: that is attempt 0.
        let attempt = if before.attempt == 0 {
            doc! { "$in": [0_i64, Bson::Null] }
        } else {
            doc! { "$eq": i64::from(before.attempt) }
        };
        // Null also matches a document without the field.
        let heard_at = to_document("ideation request", before)?.get("heardAt").cloned().unwrap_or(Bson::Null);
        let filter =
            doc! { "_id": raw_id.clone(), "status": before.status.as_str(), "attempt": attempt, "heardAt": heard_at };
        let matched = self.ideation.update_one(filter, doc! { "$set": fields }).await?.matched_count;
        if matched == 0 {
            return Ok(false);
        }
        if before.status == request.status {
            return Ok(true);
        }
        // The frontend reads a hypothesis's ideation progress from the hypothesis itself.
        let mirror = doc! { "ideation.status": request.status.as_str(), "ideation.requestId": request.id.as_str() };
        self.hypotheses
            .update_one(doc! { "_id": { "$in": id_forms(&request.hypothesis_id) } }, doc! { "$set": mirror })
            .await?;
        Ok(true)
    }
}

/// The forms a document id may take: the string, and the ObjectId it spells if it is one
/// (documents the web frontend creates have ObjectId ids).
fn id_forms(id: &str) -> Vec<Bson> {
    let mut forms = vec![Bson::from(id)];
    if let Ok(object_id) = ObjectId::parse_str(id) {
        forms.push(Bson::ObjectId(object_id));
    }
    forms
}

/// Reads an `ideation_requests` document: its raw `_id`, and the request with an ObjectId
/// id spelled as hex.
fn ideation_from(mut document: Document) -> Result<(Bson, IdeationRequest)> {
    let raw_id = document.get("_id").cloned().unwrap_or(Bson::Null);
    if let Bson::ObjectId(object_id) = &raw_id {
        document.insert("_id", object_id.to_hex());
    }
    let what = || format!("ideation request {raw_id}");
    // Through raw BSON, as the driver reads runs: dates stay dates (not extended JSON).
    let raw = bson::to_raw_document_buf(&document)
        .map_err(|source| Error::Encode { what: what(), source: Box::new(source) })?;
    let typed: IdeationRequest = from_raw(&what(), raw.as_bytes())?;
    let Value::Object(whole) = plain_json(Bson::Document(document)) else {
        return Err(corrupt(what(), "not a document"));
    };
    Ok((raw_id, IdeationRequest { document: whole, ..typed }))
}
