//! The rules of ARCHITECTURE.md that a program can check, checked: the dependency rules
//! (over `cargo metadata`), that no crate but `bus` spells a subject or a bus header (a
//! backstop to the types, which already make an envelope, an outgoing message and an
//! event's subject impossible to build elsewhere: see the `compile_fail` examples in
//! crates/bus), and that every path ARCHITECTURE.md names exists.
//!
//! Nothing here starts a process but `cargo metadata`; no NATS is needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

const BUS: &str = "relaycord-bus";
const SIM: &str = "relaycord-sim";
const DEVKIT: &str = "relaycord-devkit";
const BINARY: &str = "relaycord";
const TESTKIT: &str = "relaycord-testkit";
/// The role crates: siblings on top of the bus, composed only by the binary.
const ROLES: [&str; 3] = [
    "relaycord-ingest",
    "relaycord-interactions",
    "relaycord-sinks",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// One dependency of a workspace crate on another.
#[derive(Debug)]
struct Dep {
    from: String,
    to: String,
    /// `normal`, `dev` or `build`.
    kind: String,
    optional: bool,
}

/// The workspace's crates and their dependencies on each other, from `cargo metadata`.
fn workspace() -> (BTreeSet<String>, Vec<Dep>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect();
    let mut deps = Vec::new();
    for package in packages {
        let from = package["name"].as_str().expect("name");
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let to = dep["name"].as_str().expect("dependency name");
            if names.contains(to) {
                deps.push(Dep {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    kind: dep["kind"].as_str().unwrap_or("normal").to_owned(),
                    optional: dep["optional"].as_bool().unwrap_or(false),
                });
            }
        }
    }
    (names, deps)
}

/// Every broken dependency rule, one line each, saying the rule and where to look.
fn dependency_violations(names: &BTreeSet<String>, deps: &[Dep]) -> Vec<String> {
    let mut broken = Vec::new();
    for known in ROLES.iter().chain(&[BUS, SIM, DEVKIT, BINARY, TESTKIT]) {
        if !names.contains(*known) {
            broken.push(format!(
                "crate {known} is gone: update the rules here and ARCHITECTURE.md's code map"
            ));
        }
    }
    for dep in deps {
        let Dep { from, to, kind, .. } = dep;
        let runtime = kind != "dev";
        if ROLES.contains(&from.as_str()) {
            // A role's code sees only the bus; its own tests may also use the local
            // tools (a nats-server child, the simulator), never another role.
            let allowed: &[&str] = if runtime { &[BUS] } else { &[BUS, DEVKIT, SIM] };
            if !allowed.contains(&to.as_str()) {
                broken.push(format!(
                    "{from} depends on {to} ({kind}): a role crate depends only on {BUS}, \
                     its tests also on {DEVKIT} and {SIM}; compose roles in crates/relaycord"
                ));
            }
        }
        if from == BUS {
            broken.push(format!(
                "{BUS} depends on {to} ({kind}): the bus is at the bottom and depends on no \
                 workspace crate"
            ));
        }
        if from == SIM {
            broken.push(format!(
                "{SIM} depends on {to} ({kind}): the simulator speaks Discord's protocol and \
                 knows nothing of Relaycord's"
            ));
        }
        if from == BINARY && runtime && [SIM, DEVKIT].contains(&to.as_str()) && !dep.optional {
            broken.push(format!(
                "{BINARY} depends on {to} unconditionally: the simulator and the dev tools \
                 come only with the `dev` feature"
            ));
        }
    }
    // Only the binary (and the test kit, which runs the binary's own wiring) composes
    // roles: no other crate's code depends on two of them.
    for name in names {
        let roles: Vec<&str> = deps
            .iter()
            .filter(|d| &d.from == name && d.kind != "dev" && ROLES.contains(&d.to.as_str()))
            .map(|d| d.to.as_str())
            .collect();
        if roles.len() > 1 && name != BINARY && name != TESTKIT {
            broken.push(format!(
                "{name} depends on {}: only {BINARY} composes role crates",
                roles.join(" and ")
            ));
        }
    }
    broken
}

#[test]
fn crates_depend_only_as_the_layers_allow() {
    let (names, deps) = workspace();
    let broken = dependency_violations(&names, &deps);
    assert!(
        broken.is_empty(),
        "dependency rules broken (ARCHITECTURE.md, \"Invariants\"):\n  {}",
        broken.join("\n  ")
    );
}

/// The rules are not vacuous: the real graph has edges each rule looks at, and a made-up
/// edge of each forbidden kind is reported.
#[test]
fn each_dependency_rule_can_fail() {
    let (names, mut deps) = workspace();
    assert!(
        deps.iter()
            .any(|d| d.from == "relaycord-ingest" && d.to == BUS),
        "{deps:?}"
    );
    let edge = |from: &str, to: &str, kind: &str| Dep {
        from: from.to_owned(),
        to: to.to_owned(),
        kind: kind.to_owned(),
        optional: false,
    };
    deps.extend([
        edge("relaycord-ingest", "relaycord-sinks", "normal"),
        edge("relaycord-sinks", SIM, "normal"),
        edge("relaycord-interactions", TESTKIT, "dev"),
        edge(BUS, "relaycord-ingest", "normal"),
        edge(SIM, BUS, "normal"),
        edge(BINARY, SIM, "normal"),
        edge(DEVKIT, "relaycord-ingest", "normal"),
    ]);
    let broken = dependency_violations(&names, &deps);
    assert_eq!(broken.len(), 7, "{broken:#?}");
}

/// Text outside comments and `#[cfg(test)]` code: the string literals of a Rust file,
/// with the line each starts on. Tests (unit tests, tests/it, the test kit) spell
/// subjects on purpose: they check the contract from outside.
fn string_literals(source: &str) -> Vec<(usize, String)> {
    // By convention the test module ends the file.
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\n' => line += 1,
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if next == Some('*') => {
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
                i += 2;
                continue;
            }
            '\'' => {
                // A char literal ('"', '\'', '\n') or a lifetime ('a).
                if next == Some('\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 2;
                }
            }
            'r' if matches!(next, Some('"' | '#'))
                && !chars
                    .get(i.wrapping_sub(1))
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_') =>
            {
                let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                if chars.get(i + 1 + hashes) == Some(&'"') {
                    let start = i + 2 + hashes;
                    let mut end = start;
                    while end < chars.len()
                        && !(chars[end] == '"'
                            && chars[end + 1..].iter().take_while(|&&h| h == '#').count() >= hashes)
                    {
                        end += 1;
                    }
                    let text: String = chars[start..end.min(chars.len())].iter().collect();
                    out.push((line, text.clone()));
                    line += text.matches('\n').count();
                    i = end + 1 + hashes;
                    continue;
                }
            }
            '"' => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && chars[end] != '"' {
                    end += if chars[end] == '\\' { 2 } else { 1 };
                }
                let text: String = chars[start..end.min(chars.len())].iter().collect();
                out.push((line, text.clone()));
                line += text.matches('\n').count();
                i = end + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// What a literal outside crates/bus must not be: a subject being built or spelled (a
/// format string or a hard-coded `discord.`/`relaycord.` subject with a subject kind in
/// it; prose such as "allow `<prefix>.gateway.>`" is neither), or the name of a header
/// that only the bus sets.
fn bus_contract_in(literal: &str) -> Option<&'static str> {
    const KINDS: [&str; 5] = [
        ".gateway.",
        ".interactions.",
        ".replies.",
        ".webhooks.",
        "relaycord.dlq",
    ];
    const HEADERS: [&str; 4] = [
        "Nats-Msg-Id",
        "Relaycord-Type",
        "Relaycord-Shard",
        "traceparent",
    ];
    let subject = KINDS.iter().any(|kind| literal.contains(kind))
        && (literal.contains('{')
            || literal.starts_with("discord.")
            || literal.starts_with("relaycord."));
    if subject {
        return Some("a subject: build it with relaycord_bus::Subjects or relaycord_bus::subject");
    }
    if HEADERS.iter().any(|h| literal.eq_ignore_ascii_case(h)) {
        return Some("a bus header: use relaycord_bus::headers, or let OutgoingMessage set it");
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every literal of the crates' own code (not bus; not the test kit and benchmarks, which
/// check the contract from outside) that spells part of the bus contract.
fn contract_outside_bus() -> Vec<String> {
    let root = root();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let dir = entry.expect("crate directory").path();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !["bus", "testkit", "bench"].contains(&name) && dir.join("src").is_dir() {
            rust_files(&dir.join("src"), &mut files);
        }
    }
    assert!(files.len() > 100, "found only {} files", files.len());
    let mut found = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("source file");
        for (line, literal) in string_literals(&source) {
            if let Some(what) = bus_contract_in(&literal) {
                let path = file.strip_prefix(&root).unwrap_or(&file).display();
                found.push(format!("{path}:{line}: {literal:?} is {what}"));
            }
        }
    }
    found
}

#[test]
fn only_the_bus_spells_subjects_and_headers() {
    let found = contract_outside_bus();
    assert!(
        found.is_empty(),
        "the bus contract spelled outside crates/bus (ARCHITECTURE.md, \"Invariants\"):\n  {}",
        found.join("\n  ")
    );
}

/// The lines (1-based) of `source`'s code before its unit tests that call async-nats's
/// update-then-create.
fn update_first_calls(source: &str) -> Vec<usize> {
    // Unit tests sit at the end of a file: stop at them.
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or_default();
            code.contains(".create_or_update_stream(")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn streams_are_set_up_create_first() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    let mut found = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.components().any(|c| c.as_os_str() == "src"))
    {
        let source = std::fs::read_to_string(file).unwrap();
        for line in update_first_calls(&source) {
            let path = file.strip_prefix(root()).unwrap_or(file).display();
            found.push(format!("{path}:{line}"));
        }
    }
    assert!(
        found.is_empty(),
        "async-nats's create_or_update_stream called (use relaycord_bus::streams::create_or_update, ARCHITECTURE.md \"Invariants\"):\n  {}",
        found.join("\n  ")
    );
    // Not vacuous: the scan finds the reproduction's deliberate call.
    let reproduction = std::fs::read_to_string(root().join("tests/it/stream_setup.rs")).unwrap();
    assert_eq!(update_first_calls(&reproduction).len(), 1);
}

#[test]
fn the_literal_scan_sees_what_it_looks_for() {
    let source = r##"
        // "discord.gateway.READY.none" in a comment is fine
        let a = format!("{prefix}.gateway.{t}.{g}");
        let b = '"'; let c = "allow `<prefix>.gateway.>` in the permissions";
        let d = r#"relaycord.dlq.x"#; let e = "Nats-Msg-Id";
        let f = "discord.webhooks.PING.none";
        #[cfg(test)]
        let g = "discord.gateway.READY.none";
    "##;
    let flagged: Vec<(usize, String)> = string_literals(source)
        .into_iter()
        .filter(|(_, literal)| bus_contract_in(literal).is_some())
        .collect();
    let lines: Vec<usize> = flagged.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [3, 5, 5, 6], "{flagged:?}");
}

/// Backticked text that looks like a repository path (`crates/bus/src/subject.rs`,
/// `docs/bus.md#anchor`, `helm/relaycord/`), and the targets of relative Markdown links.
fn named_paths(markdown: &str) -> Vec<String> {
    let path_like = |text: &str| {
        let text = text.split('#').next().unwrap_or_default();
        let looks = !text.is_empty()
            && !text.starts_with('/')
            && !text.contains("//")
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
            && (text.contains('/')
                || [
                    ".rs", ".md", ".toml", ".sh", ".py", ".json", ".yaml", ".lock",
                ]
                .iter()
                .any(|ext| text.ends_with(ext)));
        looks.then(|| text.to_owned())
    };
    let mut paths = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 {
                paths.extend(path_like(span));
            }
        }
        for target in line.split("](").skip(1) {
            let target = target.split(')').next().unwrap_or_default();
            if !target.contains("://") {
                paths.extend(path_like(target));
            }
        }
    }
    paths
}

#[test]
fn every_path_architecture_md_names_exists() {
    let root = root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let paths = named_paths(&text);
    assert!(paths.len() > 30, "found only {paths:?}");
    let missing: Vec<&String> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
    // The code map covers every crate.
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let name = entry.expect("crate directory").file_name();
        let dir = format!("crates/{}", name.to_string_lossy());
        assert!(
            paths.iter().any(|p| p.trim_end_matches('/') == dir),
            "ARCHITECTURE.md's code map does not name `{dir}`"
        );
    }
    assert!(
        std::fs::read_to_string(root.join("README.md"))
            .expect("README.md")
            .contains("(ARCHITECTURE.md)"),
        "README.md links ARCHITECTURE.md"
    );
}
