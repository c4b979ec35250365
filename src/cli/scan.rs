//! `keyledger scan`: finds keyledger keys in files, directories and (with
//! `--git`) a repository's whole history. Prints `path:line: <display
//! prefix>...` per key, never a whole key, and exits 1 when any is found, so
//! it works as a pre-commit hook. With `--server` and `--token` it also says
//! whether each key is still live (by its display prefix, so asking counts no
//! use). `--rules` prints a rule for other scanners instead.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use keyledger_domain::scan::{find_keys, rule};
use serde::Serialize;

use crate::error::Error;

/// Files larger than this are skipped (said on stderr): keys live in source
/// and configuration, not in disk images.
const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files or directories to scan [default: the current directory].
    paths: Vec<PathBuf>,
    /// Scan every commit of the repository at each path (`git log -p --all`).
    #[arg(long)]
    git: bool,
    /// One JSON object per key found, on a line each.
    #[arg(long)]
    json: bool,
    /// A keyledger server to ask whether each key found is still live.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// Management token for --server.
    #[arg(
        long,
        env = "KEYLEDGER_TOKEN",
        requires = "server",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print a rule for another scanner (`gitleaks` or `regex`) and exit.
    #[arg(long, value_name = "KIND")]
    rules: Option<String>,
}

/// A key found: where, and which (by its display prefix only).
#[derive(Debug, Serialize)]
struct Finding {
    path: String,
    /// The commit it was added in (with --git).
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    line: usize,
    display_prefix: String,
    /// With --server: `live`, `inactive`, `expired` or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

pub async fn run(args: ScanArgs) -> Result<ExitCode, Error> {
    if let Some(kind) = &args.rules {
        let text =
            rule(kind).ok_or_else(|| Error::validation("rules", "must be gitleaks or regex"))?;
        println!("{}", text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut findings = Vec::new();
    for path in &paths {
        if args.git {
            scan_history(path, &mut findings)?;
        } else {
            scan_path(path, &mut findings)?;
        }
    }
    if let (Some(server), Some(token)) = (&args.server, &args.token) {
        let client = keyledger_client::Client::new(server.as_str())
            .map_err(|e| Error::Config(format!("--server {server}: {e}")))?
            .with_token(token.as_str());
        for f in &mut findings {
            f.status = Some(status_of(&client, server, &f.display_prefix).await?);
        }
    }
    for f in &findings {
        if args.json {
            println!(
                "{}",
                serde_json::to_string(f).map_err(|e| Error::internal_from("a finding", e))?
            );
        } else {
            let at = match &f.commit {
                Some(c) => format!("{c}:{}", f.path),
                None => f.path.clone(),
            };
            let status = f
                .status
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            println!("{at}:{}: {}...{status}", f.line, f.display_prefix);
        }
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Config(format!("{}: {e}", path.display()))
}

/// Scans a file, or a directory's files recursively (`.git` left out: its
/// history is what `--git` is for).
fn scan_path(path: &Path, findings: &mut Vec<Finding>) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_error(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            scan_path(&entry, findings)?;
        }
    } else if meta.is_file() {
        if meta.len() > MAX_FILE_BYTES {
            eprintln!(
                "keyledger scan: {} skipped (larger than 64 MiB)",
                path.display()
            );
            return Ok(());
        }
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            for found in find_keys(line) {
                findings.push(Finding {
                    path: path.display().to_string(),
                    commit: None,
                    line: n + 1,
                    display_prefix: found.key.display_prefix(),
                    status: None,
                });
            }
        }
    }
    // Symlinks and special files are not followed.
    Ok(())
}

/// Scans every line any commit of the repository at `repo` added, with the
/// commit, path and line number it got there.
fn scan_history(repo: &Path, findings: &mut Vec<Finding>) -> Result<(), Error> {
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "log",
            "-p",
            "--all",
            "--full-history",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--unified=0",
            "--format=commit %H",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Config(format!("git: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("git's output"))?;
    let (mut commit, mut path, mut line) = (String::new(), String::new(), 0usize);
    for raw in std::io::BufReader::new(stdout).split(b'\n') {
        let raw = raw.map_err(|e| io_error(repo, e))?;
        if let Some(c) = raw.strip_prefix(b"commit ") {
            commit = String::from_utf8_lossy(c).into_owned();
        } else if let Some(p) = raw.strip_prefix(b"+++ ") {
            // `+++ b/<path>`, or /dev/null for a deletion.
            path = String::from_utf8_lossy(p.strip_prefix(b"b/").unwrap_or(p)).into_owned();
        } else if raw.starts_with(b"@@ ") {
            // `@@ -a,b +c,d @@`: the next added line is line c.
            line = hunk_start(&raw).unwrap_or(0);
        } else if let Some(added) = raw.strip_prefix(b"+") {
            for found in find_keys(added) {
                findings.push(Finding {
                    path: path.clone(),
                    commit: Some(commit.clone()),
                    line,
                    display_prefix: found.key.display_prefix(),
                    status: None,
                });
            }
            line += 1;
        }
    }
    let status = child.wait().map_err(|e| io_error(repo, e))?;
    if !status.success() {
        return Err(Error::Config(format!(
            "git log failed in {} ({status})",
            repo.display()
        )));
    }
    Ok(())
}

/// The first line number of a hunk's new side.
fn hunk_start(header: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(header).ok()?;
    let new = text.split_whitespace().find(|w| w.starts_with('+'))?;
    new[1..].split(',').next()?.parse().ok()
}

/// Whether the key with `display_prefix` is still live, by the management API.
async fn status_of(
    client: &keyledger_client::Client,
    server: &str,
    display_prefix: &str,
) -> Result<String, Error> {
    use keyledger_client::{Error as E, KeyStatus};
    match client.get_key(display_prefix).await {
        Ok(key) => Ok(match key.status {
            KeyStatus::Active => "live".into(),
            other => other.to_string(),
        }),
        Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok("unknown".into()),
        Err(e @ (E::Api { .. } | E::UnexpectedStatus { .. })) => Err(Error::Config(format!(
            "{server} answered {} (is the token right?)",
            e.status().map(|s| s.to_string()).unwrap_or_default()
        ))),
        Err(e) => Err(Error::Config(format!("{server}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hunk_header_gives_its_new_start() {
        assert_eq!(hunk_start(b"@@ -0,0 +1,3 @@"), Some(1));
        assert_eq!(hunk_start(b"@@ -10 +12 @@ fn x()"), Some(12));
        assert_eq!(hunk_start(b"@@ garbage"), None);
    }
}
