//! Validation of MUD files against the YANG modules, with libyang's
//! `yanglint` (Debian's libyang2-tools) and the IETF modules that pyang
//! ships (PyPI's pyang: ietf-mud, ietf-access-control-list and what they
//! import; `.ci/run` installs both), plus Vigil's own extension module
//! (`collector/yang/`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder holding `ietf/ietf-mud.yang`: `$VIGIL_YANG_MODULES`, the
/// wheel `.ci/run` unpacks into `target/yang`, or where pip installed
/// pyang.
pub fn modules() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("VIGIL_YANG_MODULES") {
        return Ok(PathBuf::from(d));
    }
    let unpacked = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/yang/pyang-2.7.1.data/data/share/yang/modules");
    if unpacked.join("ietf/ietf-mud.yang").is_file() {
        return Ok(unpacked);
    }
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("share/yang/modules");
    if d.join("ietf/ietf-mud.yang").is_file() {
        Ok(d)
    } else {
        Err(format!(
            "no ietf-mud.yang under {} (`bash .ci/run` unpacks pyang 2.7.1 into target/yang; or set VIGIL_YANG_MODULES)",
            d.display()
        ))
    }
}

/// Whether yanglint can run here, and why not.
pub fn available() -> Result<PathBuf, String> {
    Command::new("yanglint")
        .arg("--version")
        .output()
        .map_err(|e| format!("yanglint (Debian's libyang2-tools): {e}"))?;
    modules()
}

/// `yanglint` on a MUD file: Ok, or its complaint.
pub fn validate_mud(file: &Path) -> Result<(), String> {
    let m = available()?;
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../collector/yang");
    let out = Command::new("yanglint")
        .arg("-p")
        .arg(m.join("ietf"))
        .arg("-p")
        .arg(m.join("iana"))
        .arg("-p")
        .arg(&ours)
        .arg(m.join("ietf/ietf-mud.yang"))
        .arg(m.join("ietf/ietf-access-control-list.yang"))
        .arg(m.join("ietf/ietf-acldns.yang"))
        .arg(ours.join("vigil-mud-approval@2026-12-04.yang"))
        .arg(file)
        .output()
        .map_err(|e| format!("yanglint: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "yanglint rejected {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
