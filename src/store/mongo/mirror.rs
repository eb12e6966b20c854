//! The `stages` collection: one document per (run, stage), mirrored from each run write for
//! the seeds' frontend.

use std::collections::BTreeSet;

use mongodb::bson::{DateTime, Document, doc};

use super::MongoStore;
use super::bson::{is_duplicate_key, to_document, to_i64};
use crate::run::Run;
use crate::store::Result;

impl MongoStore {
    /// Mirrors the stages a run write changed into `stages`, one document per (run, stage),
    /// for the seeds' frontend. `runRev` keeps a slower writer from overwriting a newer state.
    pub(super) async fn mirror_stages(&self, before: Option<&Run>, run: &Run) -> Result<()> {
        let status_changed = before.is_none_or(|before| before.status != run.status);
        let mut names: BTreeSet<&str> = run
            .stage_timing
            .iter()
            .filter(|(name, timing)| status_changed || before.and_then(|b| b.stage_timing.get(*name)) != Some(timing))
            .map(|(name, _)| name.as_str())
            .collect();
        if let Some(current) = &run.current_stage
            && (status_changed || before.and_then(|b| b.current_stage.as_ref()) != Some(current))
        {
            names.insert(current.name.as_str());
        }
        let rev = to_i64(run.rev);
        for name in names {
            let fields = stage_document(run, name)?;
            let filter = doc! {
                "runId": run.id.as_str(),
                "name": name,
                "$or": [{ "runRev": { "$lt": rev } }, { "runRev": { "$exists": false } }],
            };
            // Two tries: a duplicate key means a newer write holds the document, or that a
            // concurrent first insert won the race, after which the second try updates it.
            for _ in 0..2 {
                match self.stages.update_one(filter.clone(), doc! { "$set": fields.clone() }).upsert(true).await {
                    Ok(_) => break,
                    Err(err) if is_duplicate_key(&err) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        // A reset clears the old attempt's stages.
        if let Some(before) = before {
            let gone: Vec<&str> = before
                .stage_timing
                .keys()
                .map(String::as_str)
                .chain(before.current_stage.as_ref().map(|current| current.name.as_str()))
                .filter(|name| {
                    !run.stage_timing.contains_key(*name)
                        && run.current_stage.as_ref().is_none_or(|current| current.name.as_str() != *name)
                })
                .collect();
            if !gone.is_empty() {
                self.stages
                    .delete_many(doc! { "runId": run.id.as_str(), "name": { "$in": gone }, "runRev": { "$lt": rev } })
                    .await?;
            }
        }
        Ok(())
    }
}

/// One `stages` document: the stage's timing, its progress while current, and a status.
fn stage_document(run: &Run, name: &str) -> Result<Document> {
    let timing = run.stage_timing.get(name);
    let mut fields = match timing {
        Some(timing) => to_document("stage timing", timing)?,
        None => Document::new(),
    };
    if let Some(current) = run.current_stage.as_ref().filter(|current| current.name.as_str() == name) {
        let mut progress = to_document("current stage", current)?;
        progress.remove("name");
        progress.remove("latest");
        fields.extend(progress);
    }
    let status = if timing.is_some_and(|timing| timing.completed_at.is_some()) {
        "COMPLETED"
    } else if run.status.is_terminal() {
        run.status.as_str()
    } else {
        "RUNNING"
    };
    fields.insert("runId", run.id.as_str());
    fields.insert("name", name);
    fields.insert("status", status);
    fields.insert("runRev", to_i64(run.rev));
    fields.insert("updatedAt", DateTime::from(run.updated_at));
    Ok(fields)
}
