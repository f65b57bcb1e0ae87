//! `nudge check` validates policy files the way the service loads them,
//! prints every error and exits non-zero if there is any.

use std::fs;
use std::process::Command;

fn check(args: &[&std::path::Path]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nudge"))
        .arg("check")
        .args(args)
        .output()
        .expect("run nudge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_policies_pass_the_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let (ok, stdout, stderr) = check(&[&dir]);
    assert!(ok, "{stderr}");
    for id in ["push_send", "notification_channel", "discovery_ranking"] {
        assert!(stdout.contains(&format!("ok    {id} ")), "{stdout}");
    }
}

#[test]
fn every_error_in_every_file_is_printed_and_the_exit_code_fails() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("a.toml"),
        "id = \"a\"\nalgorithm = \"linucb\"\narms = [\"x\", \"x\"]\n[params]\nalpha = -1.0\n",
    )
    .unwrap();
    fs::create_dir(dir.path().join("nested")).unwrap();
    fs::write(
        dir.path().join("nested/b.toml"),
        "id = \"b\"\nalgorithm = \"greedy\"\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("good.toml"),
        "id = \"a\"\nalgorithm = \"uniform\"\narms = [\"x\"]\n",
    )
    .unwrap();
    fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let (ok, _, stderr) = check(&[dir.path()]);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error ")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a.toml: `params.alpha`: expected a finite number >= 0")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a.toml: `arms[1]`: duplicate arm")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("b.toml: `algorithm`") && l.contains("unknown variant `greedy`")),
        "{stderr}"
    );
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

#[test]
fn duplicate_policy_ids_across_files_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["one.toml", "two.toml"] {
        fs::write(
            dir.path().join(f),
            "id = \"same\"\nalgorithm = \"uniform\"\narms = [\"x\"]\n",
        )
        .unwrap();
    }
    let (ok, _, stderr) = check(&[dir.path()]);
    assert!(!ok);
    assert!(
        stderr.contains("two.toml: `id`: duplicate policy id \"same\""),
        "{stderr}"
    );
}

#[test]
fn a_missing_path_is_an_error_not_an_empty_success() {
    let (ok, _, stderr) = check(&[std::path::Path::new("/nonexistent/policies")]);
    assert!(!ok);
    assert!(stderr.contains("cannot read"), "{stderr}");
}
