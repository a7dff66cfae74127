SUMMARY = "Vigil on-device security agent (prebuilt static binary)"
DESCRIPTION = "The static vigil-agent from a Vigil release, for Yocto \
releases whose Rust is older than Vigil's MSRV (1.81). Installs the same \
files as vigil-agent; the two conflict."
HOMEPAGE = "https://vigil.example/"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=74f158691bc91b90b4ccf9545261347b"

# From a Vigil release (cross/README.md): the workspace tarball, for the
# unit, init script, default configuration and install script; the static
# binary for the machine; SHA256SUMS, checked before anything is installed.
VIGIL_TARGET = "unsupported"
VIGIL_TARGET:aarch64 = "aarch64-unknown-linux-musl"
VIGIL_TARGET:x86-64 = "x86_64-unknown-linux-musl"
VIGIL_TARGET:arm = "armv7-unknown-linux-gnueabihf"
COMPATIBLE_HOST = "(aarch64|x86_64|arm).*-linux.*"

SRC_URI = "file://vigil-${PV}.tar.gz \
           file://vigil-agent-${VIGIL_TARGET} \
           file://SHA256SUMS"
S = "${WORKDIR}/vigil-${PV}"

inherit useradd systemd update-rc.d

RPROVIDES:${PN} = "vigil-agent"
RCONFLICTS:${PN} = "vigil-agent"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --no-create-home \
    --home-dir /var/lib/vigil-agent --shell /sbin/nologin vigil"

SYSTEMD_SERVICE:${PN} = "vigil-agent.service"
INITSCRIPT_NAME = "vigil-agent"
INITSCRIPT_PARAMS = "defaults 90 10"

do_compile() {
    cd ${WORKDIR}
    grep " vigil-agent-${VIGIL_TARGET}\$" SHA256SUMS | sha256sum -c -
}

do_install() {
    sh ${S}/cross/install --destdir ${D} \
        --agent ${WORKDIR}/vigil-agent-${VIGIL_TARGET} \
        --unitdir ${systemd_system_unitdir} \
        ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', '', '--no-systemd', d)} \
        ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', '', '--no-sysvinit', d)}
}

FILES:${PN} += "${systemd_system_unitdir}/vigil-agent.service ${nonarch_libdir}/sysusers.d/vigil-agent.conf"
CONFFILES:${PN} = "${sysconfdir}/vigil/agent.toml"
# Built by Vigil's release (static, stripped, its own linker flags).
INSANE_SKIP:${PN} = "already-stripped ldflags"
