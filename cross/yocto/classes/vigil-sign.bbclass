# Signs the image's Vigil manifests at image-build time. In an image recipe:
#   inherit vigil-sign
#   VIGIL_SIGNING_KEY = "/secure/path/vendor.key"   (from `vigil-agent manifest keygen`)
#   VIGIL_TRUST_KEY = "/secure/path/vendor.pub"
#   VIGIL_FIRMWARE_VERSION = "42"   (raise it with every release: rollback is refused)
# The firmware manifest covers VIGIL_FIRMWARE_PATHS, the config manifest
# VIGIL_CONFIG_PATHS; both land in /etc/vigil/manifests with their
# signatures, where the default /etc/vigil/agent.toml expects them.
# Leave /etc/vigil/agent.toml out: the hospital completes it at acceptance
# testing, and the agent covers its own configuration by itself.

VIGIL_FIRMWARE_PATHS ?= "/usr/bin /usr/sbin /usr/lib /usr/libexec"
VIGIL_CONFIG_PATHS ?= "/etc/ssh /etc/init.d /etc/systemd/system"
VIGIL_ISSUER ?= "${DISTRO}"
VIGIL_MODEL ?= "${MACHINE}"

DEPENDS += "vigil-agent-native"
do_rootfs[depends] += "vigil-agent-native:do_populate_sysroot"
ROOTFS_POSTPROCESS_COMMAND += "vigil_sign_rootfs;"

vigil_sign_rootfs() {
    if [ -z "${VIGIL_SIGNING_KEY}" ] || [ -z "${VIGIL_FIRMWARE_VERSION}" ]; then
        bbfatal "vigil-sign: set VIGIL_SIGNING_KEY and VIGIL_FIRMWARE_VERSION"
    fi
    out=${IMAGE_ROOTFS}/etc/vigil/manifests
    install -d -m 0755 $out ${IMAGE_ROOTFS}/etc/vigil/trust
    install -m 0644 ${VIGIL_TRUST_KEY} ${IMAGE_ROOTFS}/etc/vigil/trust/
    sign() {
        class=$1; shift
        inc=""
        for p in "$@"; do
            [ -e "${IMAGE_ROOTFS}$p" ] && inc="$inc --include $p"
        done
        vigil-agent manifest build --root ${IMAGE_ROOTFS} --class $class \
            --version ${VIGIL_FIRMWARE_VERSION} --issuer "${VIGIL_ISSUER}" \
            --model "${VIGIL_MODEL}" $inc --out $out/$class.manifest
        vigil-agent manifest sign --secret-key ${VIGIL_SIGNING_KEY} $out/$class.manifest
    }
    sign firmware ${VIGIL_FIRMWARE_PATHS}
    sign config ${VIGIL_CONFIG_PATHS}
}
