//! Who may send: device keys and enrollment states, shared read-mostly by
//! every connection. Filled from the archive by the writer (which alone
//! changes it, on admin commands or a new pending device).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use vigil_protocol::{DeviceId, VerifyingKey};

use crate::store::{Device, DeviceState};

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<HashMap<DeviceId, (VerifyingKey, DeviceState)>>>,
}

impl Registry {
    pub fn get(&self, id: &DeviceId) -> Option<(VerifyingKey, DeviceState)> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    pub fn insert(&self, id: DeviceId, key: VerifyingKey, state: DeviceState) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (key, state));
    }

    pub fn remove(&self, id: &DeviceId) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Replaces everything with the archive's view.
    pub fn replace(&self, devices: &[Device]) {
        let map = devices
            .iter()
            .filter_map(|d| {
                let id = DeviceId::from_hex(&d.id)?;
                let key = vigil_protocol::frame::parse_public_key(&d.public_key)?;
                Some((id, (key, d.state)))
            })
            .collect();
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = map;
    }

    pub fn pending_count(&self) -> usize {
        self.count(DeviceState::Pending)
    }

    pub fn count(&self, state: DeviceState) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|(_, s)| *s == state)
            .count()
    }
}
