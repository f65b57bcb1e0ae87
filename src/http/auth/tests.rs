use super::*;

const SECRET: &str = "0123456789abcdef";

fn settings(keys: &str) -> Settings {
    Settings {
        api_keys: Some(keys.into()),
        ..Settings::default()
    }
}

#[test]
fn env_keys_parse_name_role_rate_burst_and_a_secret_with_colons() {
    let keys = parse_env_keys(
        " checkout:decide:0123456789abcdef , :read@2.5:s3cr3t:with:colons, ops:admin@10/40:zzzzzzzzzzzzzzzz,",
    )
    .unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0].name.as_deref(), Some("checkout"));
    assert_eq!(keys[0].role, Role::Decide);
    assert_eq!(keys[0].secret, SECRET);
    assert_eq!((keys[0].rate, keys[0].burst), (None, None));
    assert_eq!(keys[1].name, None);
    assert_eq!(keys[1].role, Role::Read);
    assert_eq!(keys[1].secret, "s3cr3t:with:colons");
    assert_eq!((keys[1].rate, keys[1].burst), (Some(2.5), None));
    assert_eq!(keys[2].role, Role::Admin);
    assert_eq!((keys[2].rate, keys[2].burst), (Some(10.0), Some(40)));
}

#[test]
fn malformed_env_keys_are_rejected_naming_the_entry_and_never_the_secret() {
    let cases = [
        ("a:decide", "entry 1", "expected `name:role:secret`"),
        (
            "a:decide:0123456789abcdef,b:writer:0123456789abcdef",
            "entry 2",
            "unknown role \"writer\"",
        ),
        (
            "a:decide@fast:0123456789abcdef",
            "entry 1",
            "rate \"fast\" is not a number",
        ),
        (
            "a:decide@5/-1:0123456789abcdef",
            "entry 1",
            "burst \"-1\" is not a whole number",
        ),
        ("a:decide:0123456789 abcdef", "entry 1", "whitespace"),
    ];
    for (text, at, message) in cases {
        let e = parse_env_keys(text).unwrap_err();
        assert!(e.source_name.ends_with(at), "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
        assert!(
            !e.to_string().contains("0123456789"),
            "{e} leaks the secret"
        );
    }
}

#[test]
fn settings_with_unusable_keys_are_refused_at_startup() {
    let cases = [
        ("a:decide:short", "at least 16 bytes"),
        (
            "a:decide:0123456789abcdef,a:read:fedcba9876543210",
            "a second key named \"a\"",
        ),
        (
            "a:decide:0123456789abcdef,b:read:0123456789abcdef",
            "same secret as an earlier key",
        ),
        ("a b:decide:0123456789abcdef", "key names are"),
        ("a:decide@0:0123456789abcdef", "positive number"),
        ("a:decide@inf:0123456789abcdef", "positive number"),
        ("a:decide@1/0:0123456789abcdef", "burst must be at least 1"),
    ];
    for (text, message) in cases {
        let e = Auth::from_settings(&settings(text)).unwrap_err();
        assert!(e.message.contains(message), "{text}: {e}");
        assert!(
            !e.to_string().contains("0123456789"),
            "{e} leaks the secret"
        );
    }
    let empty_admin = Settings {
        admin_token: Some(String::new()),
        ..Settings::default()
    };
    assert!(Auth::from_settings(&empty_admin).is_err());
    let bad_default = Settings {
        rate_limit: Some(-1.0),
        ..Settings::default()
    };
    assert_eq!(
        Auth::from_settings(&bad_default).unwrap_err().source_name,
        "NUDGE_RATE_LIMIT"
    );
}

#[test]
fn a_key_file_is_read_and_its_errors_quote_no_line_of_it() {
    let keys = parse_key_file(
        r#"
[[keys]]
name = "ranker"
role = "decide"
secret = "0123456789abcdef"
rate = 100.0
burst = 20

[[keys]]
role = "read"
secret = "fedcba9876543210"
"#,
        "keys.toml",
    )
    .unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].name.as_deref(), Some("ranker"));
    assert_eq!((keys[0].rate, keys[0].burst), (Some(100.0), Some(20)));
    assert_eq!((keys[1].role, keys[1].name.as_deref()), (Role::Read, None));

    let e = parse_key_file(
        "[[keys]]\nrole = \"owner\"\nsecret = \"0123456789abcdef\"\n",
        "keys.toml",
    )
    .unwrap_err();
    assert_eq!(e.source_name, "keys.toml");
    assert!(e.message.contains("line 2"), "{e}");
    assert!(
        !e.to_string().contains("0123456789"),
        "{e} leaks the secret"
    );
}

#[test]
fn the_key_file_and_the_environment_and_the_admin_token_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        "[[keys]]\nname = \"f\"\nrole = \"read\"\nsecret = \"fedcba9876543210\"\n",
    )
    .unwrap();
    let auth = Auth::from_settings(&Settings {
        api_keys: Some(format!("e:decide:{SECRET}")),
        api_keys_file: Some(file),
        admin_token: Some("legacy".into()),
        ..Settings::default()
    })
    .unwrap();
    let names: Vec<&str> = auth.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["e", "f", "admin-token"]);
    assert!(auth.enforced());
    assert_eq!(auth.anonymous, 0);
    // Debug output names keys, never secrets.
    let shown = format!(
        "{auth:?} {:?}",
        parse_env_keys(&format!("e:decide:{SECRET}"))
    );
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn without_keys_everything_is_open_and_an_admin_token_alone_guards_admin_routes() {
    let open = Auth::from_settings(&Settings::default()).unwrap();
    assert!(!open.enforced());
    assert_eq!(open.anonymous, Role::Admin.grants());
    let legacy = Auth::from_settings(&Settings {
        admin_token: Some("s3cret".into()),
        ..Settings::default()
    })
    .unwrap();
    assert!(legacy.enforced());
    assert_eq!(legacy.anonymous & Role::Admin.bit(), 0);
    assert_ne!(legacy.anonymous & Role::Decide.bit(), 0);
    assert_ne!(legacy.anonymous & Role::Read.bit(), 0);
}

#[test]
fn roles_grant_their_own_routes_and_admin_grants_all() {
    for need in [Role::Decide, Role::Read, Role::Admin] {
        assert_ne!(Role::Admin.grants() & need.bit(), 0);
        assert_eq!(
            Role::Decide.grants() & need.bit() != 0,
            need == Role::Decide
        );
        assert_eq!(Role::Read.grants() & need.bit() != 0, need == Role::Read);
    }
}

#[test]
fn every_route_but_the_health_checks_needs_a_role() {
    assert_eq!(route_role("/v1/decide"), Some(Role::Decide));
    assert_eq!(route_role("/v1/policies/{id}/reset"), Some(Role::Admin));
    assert_eq!(route_role("/metrics"), Some(Role::Read));
    assert_eq!(route_role("/healthz"), None);
    assert_eq!(route_role("/readyz"), None);
}

#[test]
fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
    let secs = |d: Duration| {
        Rejection::rate_limited("k", d)
            .header
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(secs(Duration::ZERO), "1");
    assert_eq!(secs(Duration::from_millis(10)), "1");
    assert_eq!(secs(Duration::from_millis(1_001)), "2");
    assert_eq!(secs(Duration::from_secs(3)), "3");
}
