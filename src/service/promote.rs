//! Promoting a shadow challenger (`POST /v1/policies/{id}/promote`, admin).
//!
//! A promotion is a change of the policy file, made by the service and
//! rolled out as any other: the file is rewritten (with `toml_edit`, so its
//! comments and layout survive) so that the challenger's `algorithm` and
//! `params` become the policy's, the policy's old ones become a challenger
//! named `<policy>-v<old version>` (so the two can still be compared), and
//! `version` goes up by one (every decision after it is logged under the
//! new version). Then the policy directory is reloaded
//! ([`super::reload::reload`]): the layout is the same, so the learned
//! model is kept, and every replica switches at the published generation.
//! If the reload is refused, the old file is put back and nothing changed.

use super::Service;
use super::reload::{ReloadError, ReloadReport, reload};
use crate::policy::load_paths_with_files;
use std::path::PathBuf;

/// Why a promotion changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The policy has no challenger of that id.
    #[error("policy {policy:?} has no challenger {challenger:?}")]
    UnknownChallenger {
        /// The policy.
        policy: String,
        /// The challenger asked for.
        challenger: String,
    },
    /// The policy file cannot be read back or rewritten.
    #[error("policy file {file}: {message}")]
    File {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The rewritten files were refused (the old file is back), or the
    /// store failed.
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

/// What a promotion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Promotion {
    /// The policy.
    pub policy: String,
    /// The challenger now live.
    pub promoted: String,
    /// The challenger id the previous definition now has.
    pub previous: String,
    /// The policy's new version.
    pub version: u32,
    /// The reload that rolled it out.
    pub reload: ReloadReport,
}

/// Promotes `challenger` of `policy` (see the module doc).
pub async fn promote(
    svc: &Service,
    policy: &str,
    challenger: &str,
) -> Result<Promotion, PromoteError> {
    let (files, _) = load_paths_with_files(std::slice::from_ref(&svc.settings.policies));
    let Some((file, spec)) = files.into_iter().find(|(_, s)| s.id == policy) else {
        return Err(PromoteError::UnknownChallenger {
            policy: policy.into(),
            challenger: challenger.into(),
        });
    };
    if !spec.challengers.iter().any(|c| c.id == challenger) {
        return Err(PromoteError::UnknownChallenger {
            policy: policy.into(),
            challenger: challenger.into(),
        });
    }
    let file_error = |message: String| PromoteError::File {
        file: file.clone(),
        message,
    };
    let old_text = std::fs::read_to_string(&file).map_err(|e| file_error(e.to_string()))?;
    let previous = format!("{policy}-v{}", spec.version);
    let version = spec.version + 1;
    let new_text = rewrite(&old_text, challenger, &previous, version).map_err(file_error)?;
    write_atomically(&file, &new_text).map_err(|e| file_error(e.to_string()))?;
    match reload(svc).await {
        Ok(report) => {
            svc.metrics.promotions.with_label_values(&[policy]).inc();
            tracing::info!(
                policy,
                promoted = challenger,
                previous,
                version,
                generation = report.generation,
                "challenger promoted"
            );
            Ok(Promotion {
                policy: policy.into(),
                promoted: challenger.into(),
                previous,
                version,
                reload: report,
            })
        }
        Err(e) => {
            if let Err(restore) = write_atomically(&file, &old_text) {
                tracing::error!(file = %file.display(), error = %restore, "could not restore the policy file after a refused promotion");
            }
            Err(e.into())
        }
    }
}

/// The declared rule, for policies with `promote = "auto"`: promotes the
/// promotable challenger with the highest IPW lower bound, if any (the
/// learner calls this a few times a second). Every replica folds the same
/// estimates, so several may try at once; the rewrite is deterministic and
/// a challenger already promoted is no longer one, so the second attempt
/// changes nothing. Returns the promotions made.
pub async fn auto(svc: &Service) -> Vec<Promotion> {
    let mut done = Vec::new();
    let set = svc.policies.load_full();
    for rt in set.live.values() {
        let spec = rt.policy.spec();
        if spec.promote != crate::policy::spec::Promote::Auto || rt.challengers.is_empty() {
            continue;
        }
        let report = rt.shadow().await;
        let best = report
            .challengers
            .iter()
            .filter(|c| c.promotable)
            .max_by(|a, b| {
                let low = |c: &crate::runtime::ChallengerEstimate| {
                    c.ipw
                        .and_then(|i| i.ci95)
                        .map_or(f64::NEG_INFINITY, |ci| ci[0])
                };
                low(a).total_cmp(&low(b))
            });
        let Some(best) = best else { continue };
        tracing::info!(
            policy = rt.id(),
            challenger = best.id,
            n = best.n,
            "promotion rule holds"
        );
        match promote(svc, rt.id(), &best.id).await {
            Ok(p) => done.push(p),
            Err(e) => {
                tracing::warn!(policy = rt.id(), challenger = best.id, error = %e, "automatic promotion did not happen")
            }
        }
    }
    done
}

/// The policy file with `challenger` promoted (see the module doc).
fn rewrite(text: &str, challenger: &str, previous: &str, version: u32) -> Result<String, String> {
    use toml_edit::{DocumentMut, Item, Table, value};
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let challengers = doc
        .get_mut("challengers")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("no [[challengers]]")?;
    let index = challengers
        .iter()
        .position(|t| t.get("id").and_then(Item::as_str) == Some(challenger))
        .ok_or("challenger not in the file")?;
    let promoted = challengers.get(index).expect("found above").clone();
    let live_algorithm = doc.get("algorithm").cloned().ok_or("no algorithm")?;
    let live_params = doc.get("params").cloned();

    // The old definition becomes a challenger, in the promoted one's place.
    let mut old = Table::new();
    old.insert("id", value(previous));
    old.insert("algorithm", live_algorithm);
    if let Some(params) = live_params.as_ref().and_then(params_table) {
        // Inline: a `[challengers.params]` header would be placed apart
        // from its `[[challengers]]` entry.
        old.insert("params", value(params.into_inline_table()));
    }
    let challengers = doc
        .get_mut("challengers")
        .and_then(Item::as_array_of_tables_mut)
        .expect("found above");
    *challengers.get_mut(index).expect("found above") = old;

    // The challenger's algorithm and params become the policy's.
    let algorithm = promoted
        .get("algorithm")
        .cloned()
        .unwrap_or_else(|| doc["algorithm"].clone());
    doc["algorithm"] = algorithm;
    match promoted.get("params").and_then(params_table) {
        Some(params) => doc["params"] = Item::Table(params),
        None => {
            doc.remove("params");
        }
    }
    doc["version"] = value(i64::from(version));
    Ok(doc.to_string())
}

/// A `params` item (a `[params]` table or an inline table) as a table.
fn params_table(item: &toml_edit::Item) -> Option<toml_edit::Table> {
    match item {
        toml_edit::Item::Table(t) => Some(t.clone()),
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => Some(t.clone().into_table()),
        _ => None,
    }
}

/// Replaces `path` by writing a temporary file beside it and renaming it,
/// so a reader never sees half a file.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.promoting");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn the_challenger_takes_the_policy_place_and_the_policy_becomes_one() {
        let text = r#"# the push policy
id = "push"
version = 3
algorithm = "linucb"
arms = ["a", "b"]

[params]
alpha = 1.5 # wide

[[challengers]]
id = "ts"
algorithm = "lin_ts"
params = { v = 0.3 }

[[challengers]]
id = "narrow"
params = { alpha = 0.1 }
"#;
        let out = rewrite(text, "ts", "push-v3", 4).unwrap();
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["algorithm"].as_str(), Some("lin_ts"));
        assert_eq!(v["version"].as_integer(), Some(4));
        assert_eq!(v["params"]["v"].as_float(), Some(0.3));
        assert!(v["params"].get("alpha").is_none());
        let c = v["challengers"].as_array().unwrap();
        assert_eq!(c[0]["id"].as_str(), Some("push-v3"));
        assert_eq!(c[0]["algorithm"].as_str(), Some("linucb"));
        assert_eq!(c[0]["params"]["alpha"].as_float(), Some(1.5));
        assert_eq!(c[1]["id"].as_str(), Some("narrow"));
        assert!(
            out.starts_with("# the push policy"),
            "comments survive:\n{out}"
        );
        // A challenger without an algorithm keeps the policy's.
        let out = rewrite(text, "narrow", "push-v3", 4).unwrap();
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["algorithm"].as_str(), Some("linucb"));
        assert_eq!(v["params"]["alpha"].as_float(), Some(0.1));
        assert!(rewrite(text, "nope", "push-v3", 4).is_err());
    }
}
