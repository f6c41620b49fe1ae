//! The tools `scripts/test-deps.sh` installs (Python with grpcio and the SDK, grpcurl), run once per test process.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/test-deps.sh` put the tools.
pub struct Tools {
    pub python: PathBuf,
    pub grpcurl: PathBuf,
    /// Its last line, to paste: `export PATH="<repo>/.venv/bin:$PATH"`.
    pub export_line: String,
}

pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = repo().join("scripts/test-deps.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            script.display(),
            out.status
        );
        let field = |name: &str| -> PathBuf {
            let path = stdout
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_owned()))
                .unwrap_or_else(|| panic!("{} printed no `{name}` line:\n{stdout}", script.display()));
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{} does not exist", path.display());
            path
        };
        let export_line = stdout.lines().last().unwrap_or_default().to_owned();
        Tools { python: field("python:"), grpcurl: field("grpcurl:"), export_line }
    })
}
