################################################################################
#
# vigil-agent
#
################################################################################

VIGIL_AGENT_VERSION = 0.1.0
# The Vigil release tarball (`git archive`, see cross/README.md), put in this
# external tree's dl/ directory; the cargo infrastructure vendors the crates
# Cargo.lock names when it first fetches it.
VIGIL_AGENT_SOURCE = vigil-$(VIGIL_AGENT_VERSION).tar.gz
VIGIL_AGENT_SITE = $(BR2_EXTERNAL_VIGIL_PATH)/dl
VIGIL_AGENT_SITE_METHOD = file
VIGIL_AGENT_LICENSE = Apache-2.0
VIGIL_AGENT_LICENSE_FILES = LICENSE
VIGIL_AGENT_CARGO_BUILD_OPTS = -p vigil-agent

define VIGIL_AGENT_INSTALL_TARGET_CMDS
	sh $(@D)/cross/install --destdir $(TARGET_DIR) --no-systemd --no-sysvinit \
		--agent $(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)/vigil-agent
endef

define VIGIL_AGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/cross/systemd/vigil-agent.service \
		$(TARGET_DIR)/usr/lib/systemd/system/vigil-agent.service
endef

define VIGIL_AGENT_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(@D)/cross/sysvinit/vigil-agent \
		$(TARGET_DIR)/etc/init.d/S90vigil-agent
endef

define VIGIL_AGENT_USERS
	vigil -1 vigil -1 * /var/lib/vigil-agent - - Vigil security agent
endef

$(eval $(cargo-package))
