//! Helpers for the end-to-end tests: build and locate the real binaries of
//! the workspace. Tests run the binaries as a user would; nothing here
//! reaches into their internals.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

/// Path of a workspace binary (`vigil-agent`, `vigil-collector`), built
/// with the same profile as the tests on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "vigil-agent",
                "-p",
                "vigil-collector",
            ])
            .current_dir(&root)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "building the binaries failed: {status:?}"
        );
    });
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("debug").join(name)
}
