//! Replays the committed corpus of the agent's fuzz targets (`fuzz/corpus/`)
//! through the entry points the targets call, on stable Rust.

#[test]
fn proc_files_corpus() {
    vigil_protocol::fuzzing::replay_corpus(
        env!("CARGO_MANIFEST_DIR"),
        "proc_files",
        vigil_agent::fuzzing::proc_files,
    );
}

#[test]
fn agent_config_corpus() {
    vigil_protocol::fuzzing::replay_corpus(
        env!("CARGO_MANIFEST_DIR"),
        "agent_config",
        vigil_agent::fuzzing::config,
    );
}
