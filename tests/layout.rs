//! The house rules of the code's layout (README, "Layout"), checked on the
//! sources: no file outside `src/store/` names an event-store backend, no
//! `macro_rules!` stands in for generics, and no two source files depend on
//! each other (directly or around a loop), in any crate of the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's code before its unit tests, without line comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read");
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_file_outside_the_store_names_an_event_store_backend() {
    let names = [
        "SqliteStore",
        "PostgresStore",
        "KurrentStore",
        "store::sqlite",
        "store::postgres",
        "store::kurrent",
        "#[cfg(feature = \"kurrentdb\")]",
        "kurrentdb::",
    ];
    let mut found = Vec::new();
    for crate_dir in [
        "src",
        "projections/src",
        "domain/src",
        "sql/src",
        "bench/src",
        "client/src",
    ] {
        for path in sources(&root().join(crate_dir)) {
            // The SQLite reference of the create benchmark measures SQLite
            // itself with the store's PRAGMAs: naming them is its purpose.
            if path.starts_with(root().join("src/store"))
                || path == root().join("bench/src/sqlite_reference.rs")
            {
                continue;
            }
            let code = code(&path);
            for name in names {
                if code.contains(name) {
                    found.push(format!("{}: {name}", path.display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "backends named outside src/store:\n{found:#?}"
    );
}

#[test]
fn no_macro_stands_in_for_generics() {
    let mut long = Vec::new();
    for crate_dir in [
        "src",
        "projections/src",
        "domain/src",
        "sql/src",
        "bench/src",
        "client/src",
    ] {
        for path in sources(&root().join(crate_dir)) {
            let text = std::fs::read_to_string(&path).expect("read");
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                if !line.trim_start().starts_with("macro_rules!") {
                    continue;
                }
                let indent = line.len() - line.trim_start().len();
                let end = lines[n + 1..]
                    .iter()
                    .position(|l| l.len() - l.trim_start().len() == indent && l.trim() == "}")
                    .map_or(lines.len(), |e| n + 1 + e);
                if end - n + 1 > 20 {
                    long.push(format!(
                        "{}:{}: {} lines",
                        path.display(),
                        n + 1,
                        end - n + 1
                    ));
                }
            }
        }
    }
    assert!(long.is_empty(), "macros longer than 20 lines:\n{long:#?}");
}

/// Splits `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

type Module = Vec<String>;

/// The files of a crate by module path (`src/store/mod.rs` is `store`).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    sources(src)
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            (module, path)
        })
        .collect()
}

/// The file a path used in `module` lives in: its longest prefix that is one.
fn resolve(files: &BTreeMap<Module, PathBuf>, module: &Module, path: &str) -> Option<Module> {
    let mut segs: Vec<&str> = path
        .split("::")
        .map(|s| s.split(" as ").next().unwrap_or(s).trim())
        .filter(|s| !s.is_empty())
        .collect();
    let mut full: Module = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            let mut base = module.clone();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                base.pop();
            }
            base
        }
        Some(&"self") => {
            segs.remove(0);
            module.clone()
        }
        Some(first) => {
            let mut child = module.clone();
            child.push((*first).to_string());
            if !files.contains_key(&child) {
                return None;
            }
            module.clone()
        }
        None => return None,
    };
    full.extend(segs.iter().map(|s| s.to_string()));
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|m| files.contains_key(m))
}

/// The paths of a file's `use` declarations, one per name.
fn uses(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            paths.extend(expand(&after[..end]));
        }
        rest = &after[end..];
    }
    paths
}

/// Which files each file of a crate uses.
fn dependencies(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let files = modules(src);
    // A name the crate root re-exports (`pub use x::Name`) is x's.
    let root_module = Module::new();
    let reexports: BTreeMap<String, Module> = files
        .get(&root_module)
        .map(|lib| uses(&code(lib)))
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let name = p
                .rsplit("::")
                .next()?
                .split(" as ")
                .last()?
                .trim()
                .to_string();
            Some((name, resolve(&files, &root_module, p)?))
        })
        .collect();
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let code = code(path);
        let mut paths = uses(&code);
        for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            // A path cut at `::{` is read from its `use` above.
            if (word.starts_with("crate::") || word.starts_with("super::")) && !word.ends_with(':')
            {
                paths.push(word.to_string());
            }
        }
        // The crate root only lists the modules and re-exports their
        // names: a use of a re-export is not a dependency on the others.
        let deps: BTreeSet<Module> = paths
            .iter()
            .filter_map(|p| match resolve(&files, module, p)? {
                m if m.is_empty() => {
                    let name = p.split("::").nth(1)?.split(" as ").next()?.trim();
                    reexports.get(name).cloned()
                }
                m => Some(m),
            })
            .filter(|m| m != module && !m.is_empty())
            .collect();
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The modules of `graph` that lie on a loop of dependencies.
fn on_loops(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let reaches = |from: &Module, to: &Module| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Module> = graph[from].iter().collect();
        while let Some(m) = stack.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(graph.get(m).into_iter().flatten());
            }
        }
        false
    };
    graph
        .iter()
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| reaches(d, m))
                .map(move |d| format!("{} -> {}", m.join("::"), d.join("::")))
        })
        .collect()
}

#[test]
fn no_two_files_depend_on_each_other() {
    let mut loops = Vec::new();
    for src in [
        "src",
        "projections/src",
        "domain/src",
        "sql/src",
        "bench/src",
        "client/src",
    ] {
        for edge in on_loops(&dependencies(&root().join(src))) {
            loops.push(format!("{src}: {edge}"));
        }
    }
    assert!(loops.is_empty(), "dependencies on a loop:\n{loops:#?}");
}

/// The check itself sees a loop (so that the test above can fail).
#[test]
fn a_loop_of_two_files_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").expect("write");
    std::fs::write(src.join("b.rs"), "pub struct B;\nfn f(_: crate::a::A) {}\n").expect("write");
    let loops = on_loops(&dependencies(src));
    assert_eq!(loops, ["a -> b", "b -> a"]);
}
