SUMMARY = "Vigil on-device security agent"
DESCRIPTION = "Samples CPU, memory and network baselines, verifies signed \
manifests of firmware, AI models and configuration, checks hardening, and \
streams signed telemetry to the hospital's Vigil collector."
HOMEPAGE = "https://vigil.example/"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=74f158691bc91b90b4ccf9545261347b"

# The release tarball of the Vigil workspace (`git archive`, see
# cross/README.md), placed beside this recipe in files/. The crates it
# needs are listed, with their checksums, in vigil-agent-crates.inc,
# generated from Cargo.lock by `cargo run -p xtask -- recipes`.
SRC_URI = "file://vigil-${PV}.tar.gz"
S = "${WORKDIR}/vigil-${PV}"
require vigil-agent-crates.inc

inherit cargo useradd systemd update-rc.d

# Our MSRV is Rust 1.81; with an older Yocto Rust use vigil-agent-bin.
CARGO_BUILD_FLAGS:append = " -p vigil-agent"
# The release profile is the workspace's (opt-level s, fat LTO, panic=abort).

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --no-create-home \
    --home-dir /var/lib/vigil-agent --shell /sbin/nologin vigil"

SYSTEMD_SERVICE:${PN} = "vigil-agent.service"
INITSCRIPT_NAME = "vigil-agent"
INITSCRIPT_PARAMS = "defaults 90 10"

do_install() {
    sh ${S}/cross/install --destdir ${D} \
        --agent ${B}/target/${CARGO_TARGET_SUBDIR}/vigil-agent \
        --unitdir ${systemd_system_unitdir} \
        ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', '', '--no-systemd', d)} \
        ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', '', '--no-sysvinit', d)}
}

FILES:${PN} += "${systemd_system_unitdir}/vigil-agent.service ${nonarch_libdir}/sysusers.d/vigil-agent.conf"
CONFFILES:${PN} = "${sysconfdir}/vigil/agent.toml"

# The vendor's build host signs manifests with the same binary.
BBCLASSEXTEND = "native"
