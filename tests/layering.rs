//! ARCHITECTURE.md's import table stays true: every `crate::<module>` a module's non-test code names must be one the
//! table allows, so that the engine never learns of gRPC, the registry never of an encoding, the model of nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// What each module may import, as ARCHITECTURE.md's "real imports" table says.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "auth",
            "grpc",
            "definition",
            "registry",
            "store",
            "worker",
            "builtin",
            "network",
            "agent",
            "engine",
            "model",
            "clock",
        ],
    ),
    ("grpc", &["auth", "definition", "registry", "worker", "engine", "pb"]),
    ("definition", &["registry", "worker", "agent", "model", "engine"]),
    ("registry", &["store", "engine", "clock"]),
    ("store", &["engine"]),
    ("worker", &["engine", "agent"]),
    ("builtin", &["network", "agent", "engine", "model", "fnv"]),
    ("network", &["agent", "engine", "model"]),
    ("agent", &["engine", "model"]),
    ("engine", &["clock"]),
    ("model", &["fnv"]),
    ("auth", &[]),
    ("clock", &[]),
    ("fnv", &[]),
];

/// The top-level names of the crate paths in `code`: `crate::engine::X` and `use crate::{engine::X, model}`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A group: its top-level entries, up to the matching brace.
            let mut depth = 1;
            let mut entry = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && ch == ',') {
                    let name: String =
                        entry.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                    entry.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth >= 1 {
                    entry.push(ch);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.insert(name);
        }
    }
    found
}

/// A file's code without its comments and without its `#[cfg(test)] mod tests { ... }` tail.
fn production_code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn modules_import_only_what_architecture_md_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative.iter().next().and_then(|m| m.to_str()).unwrap_or_default().trim_end_matches(".rs");
        let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Test files may reach anywhere (the lib root and the binary, src/bin, assemble everything).
        if matches!(module, "lib" | "bin") || name == "tests.rs" || relative.iter().any(|p| p == "tests") {
            continue;
        }
        let Some(may) = allowed.get(module) else {
            violations.push(format!("{}: module `{module}` is not in ARCHITECTURE.md's table", relative.display()));
            continue;
        };
        let code = production_code(&fs::read_to_string(&file).expect("read a source file"));
        for import in crate_imports(&code) {
            if import != module && !may.contains(&import.as_str()) {
                violations.push(format!("{}: `{module}` imports `crate::{import}`", relative.display()));
            }
        }
    }
    assert!(violations.is_empty(), "imports ARCHITECTURE.md does not allow:\n{}", violations.join("\n"));
}

#[test]
fn the_import_scanner_reads_groups_and_paths() {
    let code = "use crate::{engine::{Event, EventKind}, model, store::Record};\nfn f() { crate::clock::now(); }";
    let found: Vec<String> = crate_imports(code).into_iter().collect();
    assert_eq!(found, ["clock", "engine", "model", "store"]);
}
