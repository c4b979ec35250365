//! The repository stands on its own: the README (and the contract it points at)
//! links only to files inside it, and the benchmark scripts that need the
//! reference harness, which is not in it, say so and stop when it is missing.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The targets of the Markdown links and images (`[text](target)`,
/// `[label]: target`) and HTML `href`/`src` attributes of `text`, outside fenced
/// code blocks, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push((n, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
        // Reference definitions: `[label]: target`.
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if let Some(at) = trimmed.find("]: ") {
                if let Some(target) = trimmed[at + 3..].split_whitespace().next() {
                    targets.push((n, target.to_string()));
                }
            }
        }
        for attr in ["href=\"", "src=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(attr) {
                let after = &rest[at + attr.len()..];
                let end = after.find('"').unwrap_or(after.len());
                targets.push((n, after[..end].to_string()));
                rest = &after[end..];
            }
        }
    }
    targets
}

/// `path` with `.` and `..` resolved lexically, or `None` when it climbs above
/// its start.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(s) => out.push(s.to_owned()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// Every local link of `file` (relative to the repository root) names a file or
/// directory inside the repository; `file`'s problems, one a line.
fn links_leaving_the_repository(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(file)).expect("read the document");
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for (line, target) in link_targets(&text) {
        let lower = target.to_ascii_lowercase();
        if target.is_empty()
            || target.starts_with('#')
            || ["http://", "https://", "mailto:"]
                .iter()
                .any(|s| lower.starts_with(s))
        {
            continue;
        }
        let path = target.split(['#', '?']).next().unwrap_or("");
        if path.starts_with('/') || lower.contains("://") {
            problems.push(format!(
                "{file}:{line}: {target} is not a link into the repository"
            ));
            continue;
        }
        match normalized(&dir.join(path)) {
            None => problems.push(format!("{file}:{line}: {target} leaves the repository")),
            Some(inside) if !root().join(&inside).exists() => problems.push(format!(
                "{file}:{line}: {target} names {}, which does not exist",
                inside.display()
            )),
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn the_link_scanner_finds_links_images_references_and_html() {
    let text = "See [`API`](docs/API.md#errors) and ![shot](a.png \"t\").\n\
                ```\n[not](a link)\n```\n[ref]: ../x.md\n<img src=\"b.png\">";
    let targets: Vec<String> = link_targets(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        targets,
        ["docs/API.md#errors", "a.png", "../x.md", "b.png"].map(String::from)
    );
    assert_eq!(
        normalized(Path::new("docs/../README.md")),
        Some("README.md".into())
    );
    assert_eq!(normalized(Path::new("docs/../../shared/API.md")), None);
}

#[test]
fn readme_and_the_contract_link_only_to_files_inside_the_repository() {
    let mut problems = Vec::new();
    for file in ["README.md", "docs/API.md"] {
        problems.extend(links_leaving_the_repository(file));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A directory of stand-ins for every tool the benchmark scripts run before or
/// around their work: each fails loudly, so a script that goes past a missing
/// harness neither builds, nor touches PostgreSQL, nor starts a load generator.
fn stub_tools(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for tool in ["cargo", "psql", "pgbench", "wrk", "curl"] {
        let path = dir.join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"stub {tool} called\" >&2\nexit 97\n"),
        )
        .expect("write stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn bench_scripts_that_need_the_reference_harness_stop_saying_so_when_it_is_missing() {
    let work = tempfile::tempdir().expect("tempdir");
    let stubs = work.path().join("stubs");
    std::fs::create_dir(&stubs).expect("mkdir");
    stub_tools(&stubs);
    // A copy of bench/ in a project with nothing beside it: ../shared is absent.
    let project = work.path().join("project");
    std::fs::create_dir_all(project.join("bench")).expect("mkdir");
    for entry in std::fs::read_dir(root().join("bench")).expect("bench/") {
        let entry = entry.expect("entry");
        // The scripts; `keyledger-bench`'s sources beside them are not needed.
        if !entry.file_type().expect("file type").is_file() {
            continue;
        }
        std::fs::copy(entry.path(), project.join("bench").join(entry.file_name()))
            .expect("copy a bench file");
    }
    let path = format!(
        "{}:{}",
        stubs.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let missing = work.path().join("no-harness-here");
    for script in ["create.sh", "verify.sh"] {
        let header = std::fs::read_to_string(root().join("bench").join(script)).expect("read");
        let top: String = header.lines().take(15).collect::<Vec<_>>().join("\n");
        assert!(
            top.contains("reference harness at ../shared/bench/limits")
                && top.contains("LIMITS=")
                && top.contains("not in this repository"),
            "bench/{script} must say at the top that it needs the reference harness \
             and how to get it:\n{top}"
        );
        // Neither the default place nor a LIMITS that names nothing.
        for limits in [None, Some(&missing)] {
            let mut command = Command::new("bash");
            command
                .arg(project.join("bench").join(script))
                .env("PATH", &path)
                .env_remove("DATABASE_URL");
            match limits {
                Some(dir) => command.env("LIMITS", dir),
                None => command.env_remove("LIMITS"),
            };
            let out = command.output().expect("run the script");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "bench/{script} (LIMITS {limits:?}) succeeded without the harness"
            );
            assert!(
                stderr.contains(
                    "needs the reference harness at ../shared/bench/limits (set LIMITS=path)"
                ) && stderr.contains("not in this repository"),
                "bench/{script} (LIMITS {limits:?}) must say what it needs:\n{stderr}"
            );
            assert!(
                !stderr.contains("stub "),
                "bench/{script} (LIMITS {limits:?}) went on without the harness:\n{stderr}"
            );
        }
    }
}
