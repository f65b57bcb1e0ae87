//! Reloading the policy directory without a restart, on every replica.
//!
//! A reload (the admin route or SIGHUP, on any one replica) reads and
//! validates the policy files, plans each policy's change against what is
//! live, applies the store side of the plan once, and publishes the new
//! set's manifest in the store under a new generation
//! ([`crate::store::ModelStore::publish_policies`]). Every replica's
//! learner polls the generation and, on a newer one, reads its own files:
//! if they give the published manifest it switches, otherwise it keeps
//! serving what it has and says so (`/readyz` detail and the
//! `nudge_policy_reload_mismatch` gauge), since two replicas must never
//! serve one policy id under two definitions unknowingly.
//!
//! Per policy:
//! - **unchanged** (the same validated spec): the live runtime stays;
//! - **kept**: the definition changed but its layout did not
//!   ([`PolicySpec::same_layout`]: arms, features and λ): the new runtime
//!   takes over the learned model and its place in the learned stream, so
//!   nothing learned is lost or folded twice;
//! - **fresh**: the layout changed, so the learned statistics mean nothing
//!   under the new features. The file must then declare a higher
//!   `version` (refused otherwise: a silent fresh start under the same
//!   version would make the log's versions lie). The replica that reloads
//!   keeps the old model's snapshot in the store under the old version
//!   (`GET /v1/policies/{id}/snapshot?version=N`) and resets the shared
//!   model to the new prior, which bumps the store epoch: every replica
//!   starts the new version from the same snapshot, so all of them switch
//!   at one model version;
//! - **new**: served from the switch on;
//! - **removed**: its callers get 410 `policy_removed` from the switch on.
//!
//! Events of a changed layout decided before the switch and rewarded after
//! it carry the old feature vectors: the learner skips (and counts, in
//! `nudge_skipped_entries_total`) every one whose dimension does not fit the
//! new model.

use super::Service;
use crate::model::codec;
use crate::policy::{Policy, PolicyError, PolicySpec, load_paths_with_files};
use crate::runtime::PolicyRuntime;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The policies a replica serves.
#[derive(Default)]
pub struct PolicySet {
    /// The published generation this set is (0: never published).
    pub generation: u64,
    /// Live policies by id.
    pub live: BTreeMap<String, Arc<PolicyRuntime>>,
    /// Ids a reload removed (their callers get 410 `policy_removed`).
    pub removed: BTreeSet<String>,
}

/// What one policy file says, as the store's manifest records it: the
/// reloading replica publishes it and every other replica compares its own
/// files with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The declared version.
    pub version: u32,
    /// xxh3 of the validated spec (not of the file's text: comments and
    /// formatting do not matter).
    pub digest: String,
}

/// Every policy of a set, by id.
pub type Manifest = BTreeMap<String, ManifestEntry>;

/// The manifest of validated specs.
pub fn manifest<'a>(specs: impl IntoIterator<Item = &'a PolicySpec>) -> Manifest {
    specs
        .into_iter()
        .map(|spec| {
            let digest = xxhash_rust::xxh3::xxh3_64(format!("{spec:?}").as_bytes());
            (
                spec.id.clone(),
                ManifestEntry {
                    version: spec.version,
                    digest: format!("{digest:016x}"),
                },
            )
        })
        .collect()
}

/// What a reload did to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Same definition: nothing changed.
    Unchanged,
    /// A new definition over the same layout: the learned model is kept.
    Kept,
    /// A new layout under a new version: a fresh model (the old one's
    /// snapshot is kept).
    Fresh,
    /// A policy not served before.
    New,
    /// No longer served.
    Removed,
}

/// One line of a reload's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// The policy.
    pub id: String,
    /// What happened to it.
    pub change: Change,
    /// The version served before (absent for a new policy).
    pub from_version: Option<u32>,
    /// The version served now (absent for a removed one).
    pub to_version: Option<u32>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadReport {
    /// The generation published (every replica switches to it).
    pub generation: u64,
    /// Every policy, by id.
    pub policies: Vec<Planned>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Files failed validation (the messages of `nudge check`), or a
    /// layout changed without a new version.
    #[error("invalid policy files:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyError>),
    /// No policy file was found.
    #[error("no policy files under {0}")]
    Empty(String),
    /// The store failed; nothing was published.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A plan: the new set's runtimes (built, not yet live) and the report.
struct Plan {
    live: BTreeMap<String, Arc<PolicyRuntime>>,
    lines: Vec<Planned>,
    /// Policies whose layout changed: (old runtime, new runtime).
    fresh: Vec<(Arc<PolicyRuntime>, Arc<PolicyRuntime>)>,
    manifest: Manifest,
}

fn read_files(svc: &Service) -> Result<Vec<(PathBuf, PolicySpec)>, ReloadError> {
    let (specs, errors) = load_paths_with_files(std::slice::from_ref(&svc.settings.policies));
    if !errors.is_empty() {
        return Err(ReloadError::Invalid(errors));
    }
    if specs.is_empty() {
        return Err(ReloadError::Empty(
            svc.settings.policies.display().to_string(),
        ));
    }
    Ok(specs)
}

async fn plan(
    svc: &Service,
    current: &PolicySet,
    files: Vec<(PathBuf, PolicySpec)>,
) -> Result<Plan, ReloadError> {
    let retention = Duration::from_secs(svc.settings.retention_secs);
    let manifest = manifest(files.iter().map(|(_, s)| s));
    let mut errors = Vec::new();
    let mut live = BTreeMap::new();
    let mut lines = Vec::new();
    let mut fresh = Vec::new();
    for (file, spec) in files {
        let id = spec.id.clone();
        let to_version = Some(spec.version);
        let Some(old) = current.live.get(&id) else {
            let rt = Arc::new(PolicyRuntime::new(Policy::new(spec), retention));
            live.insert(id.clone(), rt);
            lines.push(Planned {
                id,
                change: Change::New,
                from_version: None,
                to_version,
            });
            continue;
        };
        let was = old.policy.spec();
        let from_version = Some(was.version);
        let change = if *was == spec {
            live.insert(id.clone(), old.clone());
            Change::Unchanged
        } else if was.same_layout(&spec) {
            let rt = PolicyRuntime::carry(Policy::new(spec), retention, old).await;
            live.insert(id.clone(), Arc::new(rt));
            Change::Kept
        } else if spec.version <= was.version {
            errors.push(PolicyError {
                file,
                key: "version".into(),
                message: format!(
                    "the arms, features or lambda changed, so the learned model cannot carry \
                     over: declare a new version above {} (the served one) to start a fresh model",
                    was.version
                ),
            });
            continue;
        } else {
            let rt = Arc::new(PolicyRuntime::new(Policy::new(spec), retention));
            fresh.push((old.clone(), rt.clone()));
            live.insert(id.clone(), rt);
            Change::Fresh
        };
        lines.push(Planned {
            id,
            change,
            from_version,
            to_version,
        });
    }
    if !errors.is_empty() {
        return Err(ReloadError::Invalid(errors));
    }
    for (id, old) in &current.live {
        if !live.contains_key(id) {
            lines.push(Planned {
                id: id.clone(),
                change: Change::Removed,
                from_version: Some(old.policy.spec().version),
                to_version: None,
            });
        }
    }
    lines.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Plan {
        live,
        lines,
        fresh,
        manifest,
    })
}

fn switch(
    svc: &Service,
    current: &PolicySet,
    generation: u64,
    live: BTreeMap<String, Arc<PolicyRuntime>>,
) {
    let mut removed: BTreeSet<String> = current
        .removed
        .iter()
        .filter(|id| !live.contains_key(*id))
        .cloned()
        .collect();
    removed.extend(
        current
            .live
            .keys()
            .filter(|id| !live.contains_key(*id))
            .cloned(),
    );
    svc.policies.store(Arc::new(PolicySet {
        generation,
        live,
        removed,
    }));
    svc.metrics.policy_generation.set(generation as i64);
    svc.metrics.policy_reload_mismatch.set(0);
    *svc.reload_mismatch.lock().expect("not poisoned") = None;
}

/// Reloads the policy files on this replica and publishes them to every
/// other (the admin route and SIGHUP). Invalid files change nothing.
/// Reloads on one replica are serialised; two replicas reloading at once
/// both publish, and every replica ends on the later generation.
pub async fn reload(svc: &Service) -> Result<ReloadReport, ReloadError> {
    let _one = svc.reloading.lock().await;
    let files = read_files(svc)?;
    let current = svc.policies.load_full();
    let plan = plan(svc, &current, files).await?;
    for (old, new) in &plan.fresh {
        // Fold what the store has first: the kept snapshot is the old
        // model as complete as this replica can make it.
        let synced = old.sync(&svc.store, &svc.metrics).await;
        svc.store_result("sync", &synced);
        let blob = codec::encode(&old.model().state());
        svc.store
            .keep_snapshot(old.id(), old.policy.spec().version, &blob)
            .await?;
        let prior = codec::encode(&new.policy.new_model().state());
        svc.store.reset(new.id(), &prior).await?;
    }
    let manifest = serde_json::to_vec(&plan.manifest).expect("a manifest serialises");
    let generation = svc.store.publish_policies(&manifest).await?;
    for rt in plan.live.values() {
        let synced = rt.sync(&svc.store, &svc.metrics).await;
        svc.store_result("sync", &synced);
    }
    switch(svc, &current, generation, plan.live);
    for line in &plan.lines {
        tracing::info!(
            generation,
            policy = line.id,
            change = ?line.change,
            from_version = line.from_version,
            to_version = line.to_version,
            "policy reloaded"
        );
    }
    Ok(ReloadReport {
        generation,
        policies: plan.lines,
    })
}

/// Follows a reload published by another replica (the learner calls this
/// every tick): switches when the store holds a newer generation and this
/// replica's files give its manifest. Returns whether it switched.
pub async fn follow(svc: &Service) -> Result<bool, StoreError> {
    let current = svc.policies.load_full();
    let Some((generation, published)) = svc.store.policy_set().await? else {
        return Ok(false);
    };
    if generation <= current.generation {
        return Ok(false);
    }
    let _one = svc.reloading.lock().await;
    if generation <= svc.policies.load().generation {
        return Ok(false);
    }
    let published: Manifest = match serde_json::from_slice(&published) {
        Ok(m) => m,
        Err(e) => return Err(StoreError::Corrupt(format!("policy manifest: {e}"))),
    };
    let files = match read_files(svc) {
        Ok(files) => files,
        Err(e) => {
            mismatch(svc, generation, &e.to_string());
            return Ok(false);
        }
    };
    let ours = manifest(files.iter().map(|(_, s)| s));
    if ours != published {
        mismatch(
            svc,
            generation,
            "this replica's policy files differ from the published set",
        );
        return Ok(false);
    }
    let current = svc.policies.load_full();
    let plan = match plan(svc, &current, files).await {
        Ok(plan) => plan,
        Err(e) => {
            mismatch(svc, generation, &e.to_string());
            return Ok(false);
        }
    };
    // The reloading replica kept the old snapshots and reset the models;
    // the new runtimes load the new epoch's prior on their first sync.
    for rt in plan.live.values() {
        let synced = rt.sync(&svc.store, &svc.metrics).await;
        svc.store_result("sync", &synced);
    }
    switch(svc, &current, generation, plan.live);
    tracing::info!(generation, "policies switched to the published set");
    Ok(true)
}

/// At start: publishes this replica's set if it is not the one the store
/// holds (the first replica of a deployment, or a rollout of new files),
/// and takes the generation.
pub async fn adopt(svc: &Service) -> Result<(), StoreError> {
    let current = svc.policies.load_full();
    let ours = manifest(current.live.values().map(|rt| rt.policy.spec()));
    let published = svc.store.policy_set().await?;
    let generation = match published {
        Some((g, m)) if serde_json::from_slice::<Manifest>(&m).is_ok_and(|m| m == ours) => g,
        _ => {
            let manifest = serde_json::to_vec(&ours).expect("a manifest serialises");
            svc.store.publish_policies(&manifest).await?
        }
    };
    svc.policies.store(Arc::new(PolicySet {
        generation,
        live: current.live.clone(),
        removed: current.removed.clone(),
    }));
    svc.metrics.policy_generation.set(generation as i64);
    Ok(())
}

fn mismatch(svc: &Service, generation: u64, why: &str) {
    let before = svc.metrics.policy_reload_mismatch.get();
    svc.metrics.policy_reload_mismatch.set(generation as i64);
    if before != generation as i64 {
        tracing::error!(
            generation,
            why,
            "not switching to the published policy set; serving the current one"
        );
    }
    *svc.reload_mismatch.lock().expect("not poisoned") =
        Some(format!("generation {generation}: {why}"));
}

#[cfg(test)]
mod tests {
    use super::manifest;
    use crate::policy::parse_policy;
    use std::path::Path;

    #[test]
    fn a_manifest_is_the_same_for_the_same_file_in_any_parse() {
        // A vocabulary large enough that two hash maps of it iterate in
        // different orders: the digest must not depend on that order.
        let words: Vec<String> = (0..64).map(|i| format!("\"w{i}\"")).collect();
        let text = format!(
            "id = \"p\"\nalgorithm = \"linucb\"\narms = [\"a\", \"b\"]\n\
             [[features.context]]\nname = \"c\"\ntype = \"categorical\"\nvocabulary = [{}]\n",
            words.join(", ")
        );
        let first = manifest([&parse_policy(&text, Path::new("p.toml")).unwrap()]);
        for _ in 0..20 {
            let again = manifest([&parse_policy(&text, Path::new("p.toml")).unwrap()]);
            assert_eq!(again, first);
        }
        let other = text.replace("\"w63\"", "\"w64\"");
        let changed = manifest([&parse_policy(&other, Path::new("p.toml")).unwrap()]);
        assert_ne!(changed["p"].digest, first["p"].digest);
    }
}
