//! Loading policy files from disk: one file, or every `*.toml` under a
//! directory, with duplicate ids across files refused.

use super::spec::{PolicyError, PolicySpec, parse_policy};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Reads and validates one policy file.
pub fn load_file(path: &Path) -> Result<PolicySpec, Vec<PolicyError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![PolicyError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    parse_policy(&text, path)
}

/// Loads every `*.toml` under each path (files or directories, recursively,
/// in name order), as the service does at start. Returns the valid
/// policies and every error, including duplicate ids across files.
pub fn load_paths(paths: &[PathBuf]) -> (Vec<PolicySpec>, Vec<PolicyError>) {
    let (specs, errors) = load_paths_with_files(paths);
    (specs.into_iter().map(|(_, spec)| spec).collect(), errors)
}

/// [`load_paths`], with the file each policy came from.
pub fn load_paths_with_files(paths: &[PathBuf]) -> (Vec<(PathBuf, PolicySpec)>, Vec<PolicyError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        collect_toml(path, &mut files, &mut errors);
    }
    let mut specs: Vec<(PathBuf, PolicySpec)> = Vec::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match load_file(&file) {
            Ok(spec) => {
                if let Some(first) = origin.get(&spec.id) {
                    errors.push(PolicyError {
                        file: file.clone(),
                        key: "id".into(),
                        message: format!(
                            "duplicate policy id {:?} (also in {})",
                            spec.id,
                            first.display()
                        ),
                    });
                } else {
                    origin.insert(spec.id.clone(), file.clone());
                    specs.push((file, spec));
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    (specs, errors)
}

fn collect_toml(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<PolicyError>) {
    let io_error = |e: std::io::Error| PolicyError {
        file: path.to_path_buf(),
        key: String::new(),
        message: format!("cannot read: {e}"),
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut children: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                for child in children {
                    if child.is_dir() || child.extension().is_some_and(|e| e == "toml") {
                        collect_toml(&child, files, errors);
                    }
                }
            }
            Err(e) => errors.push(io_error(e)),
        },
        Ok(_) => files.push(path.to_path_buf()),
        Err(e) => errors.push(io_error(e)),
    }
}
