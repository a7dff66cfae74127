//! The binaries start, report the wire-format version they speak, and
//! answer bad usage with exit code 2 (the documented usage-error code).

use std::process::Command;

use vigil_tests::binary;

#[test]
fn both_binaries_report_their_versions_and_reject_unknown_commands() {
    for name in ["vigil-agent", "vigil-collector"] {
        let out = Command::new(binary(name))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} --version failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!(
                "{name} 0.1.0 (wire format {})",
                vigil_protocol::VERSION
            )),
            "{text}"
        );

        let out = Command::new(binary(name))
            .arg("frobnicate")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: unknown command must exit 2"
        );
        // clap's shape, which the agent's small parser keeps too.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error: unrecognized subcommand 'frobnicate'"),
            "{name}: {err}"
        );
        assert!(err.contains("For more information, try '"), "{name}: {err}");
    }
}
