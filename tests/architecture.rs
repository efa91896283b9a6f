//! The rules of direction between Parley's crates (docs/architecture.md), checked against the
//! real dependency graph so a stray `use` of a forbidden crate fails the build's tests.

use cargo_metadata::{DependencyKind, MetadataCommand};
use std::collections::{BTreeMap, BTreeSet};

/// Internal crates each crate may depend on (normal dependencies; dev-dependencies are free).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("parley-proto", &[][..]),
        ("parley-config", &[][..]),
        ("parley-storage", &["parley-config"][..]),
        ("parley-directory", &["parley-proto", "parley-config"][..]),
        ("parley-router", &["parley-proto", "parley-config"][..]),
        (
            "parley-c2s",
            &[
                "parley-proto",
                "parley-router",
                "parley-directory",
                "parley-config",
            ][..],
        ),
        (
            "parley-roster",
            &[
                "parley-proto",
                "parley-router",
                "parley-storage",
                "parley-directory",
                "parley-config",
            ][..],
        ),
        (
            "parley-im",
            &[
                "parley-proto",
                "parley-router",
                "parley-storage",
                "parley-directory",
                "parley-config",
            ][..],
        ),
        (
            "parley-archive",
            &[
                "parley-proto",
                "parley-router",
                "parley-storage",
                "parley-directory",
                "parley-config",
            ][..],
        ),
        (
            "parley-server",
            &[
                "parley-proto",
                "parley-config",
                "parley-storage",
                "parley-directory",
                "parley-router",
                "parley-c2s",
                "parley-roster",
                "parley-im",
                "parley-archive",
            ][..],
        ),
        (
            "parley-testkit",
            &[
                "parley-server",
                "parley-proto",
                "parley-config",
                "parley-storage",
                "parley-directory",
                "parley-router",
            ][..],
        ),
    ])
}

/// External crates that mean sockets, TLS or LDAP, which the protocol, config and storage
/// crates must never see, and storage/LDAP, which the router must never see.
const FORBIDDEN_EXTERNAL: &[(&str, &[&str])] = &[
    (
        "parley-proto",
        &["tokio", "rustls", "tokio-rustls", "ldap3", "redb"],
    ),
    (
        "parley-config",
        &["tokio", "rustls", "tokio-rustls", "ldap3", "redb"],
    ),
    (
        "parley-storage",
        &[
            "rustls",
            "tokio-rustls",
            "ldap3",
            "rxml",
            "minidom",
            "xmpp-parsers",
        ],
    ),
    ("parley-router", &["redb", "ldap3", "rustls", "tokio-rustls"]),
];

#[test]
fn internal_dependencies_follow_the_rules_of_direction() {
    let metadata = MetadataCommand::new().no_deps().exec().expect("cargo metadata");
    let allowed = allowed();
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for package in &metadata.packages {
        let name = package.name.as_str();
        if !name.starts_with("parley-") || name == "parley-tests" || name == "parley-bench" {
            continue;
        }
        seen.insert(name.to_owned());
        let Some(permitted) = allowed.get(name) else {
            violations.push(format!(
                "{name} is not in the architecture's table; add it with its rules"
            ));
            continue;
        };
        for dependency in &package.dependencies {
            if dependency.kind != DependencyKind::Normal {
                continue;
            }
            let dep = dependency.name.as_str();
            if dep.starts_with("parley-") && !permitted.contains(&dep) {
                violations.push(format!("{name} depends on {dep}"));
            }
            if dep == "parley-testkit" {
                violations.push(format!("{name} has parley-testkit as a normal dependency"));
            }
            for (crate_name, forbidden) in FORBIDDEN_EXTERNAL {
                if *crate_name == name && forbidden.contains(&dep) {
                    violations.push(format!("{name} must not depend on {dep}"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency rules broken:\n{}",
        violations.join("\n")
    );
    for expected in allowed.keys() {
        assert!(
            seen.contains(*expected),
            "{expected} is missing from the workspace"
        );
    }
}

#[test]
fn every_crate_starts_with_a_doc_comment_saying_what_it_owns_and_must_not_touch() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    for entry in std::fs::read_dir(&root).expect("the crates directory") {
        let dir = entry.expect("a crate directory").path();
        let lib = dir.join("src/lib.rs");
        let Ok(text) = std::fs::read_to_string(&lib) else {
            continue;
        };
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            doc.contains("Owns") || doc.contains("owns"),
            "{} lacks an 'Owns' doc comment",
            lib.display()
        );
        assert!(
            doc.contains("Must not") || doc.contains("must not"),
            "{} lacks a 'Must not' doc comment",
            lib.display()
        );
    }
}
