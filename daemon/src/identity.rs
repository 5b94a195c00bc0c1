//! Who is exporting: the pseudonymous device id and the host name.
//!
//! The device id is derived the way systemd's `sd_id128_get_machine_app_specific()` derives
//! app-specific ids: HMAC-SHA256 keyed by the OS machine id (`machine-uid`: `/etc/machine-id` on
//! Linux, `IOPlatformUUID` on macOS) over a fixed application key, truncated to 128 bits and
//! printed as 32 hex digits. It is stable per machine, differs from every other program's id,
//! and the raw machine id cannot be recovered from it, so it never leaves the machine.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The application key of the HMAC (constant for all versions of this daemon, so device ids
/// stay stable across upgrades).
pub const APP_KEY: &[u8] = b"opencode-telemetry/device-id/v1";

/// Errors reading the machine identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The OS machine id could not be read (e.g. an empty `/etc/machine-id` in a container).
    #[error("cannot read the machine id: {0}")]
    MachineId(String),
}

/// The device id for a raw machine id (see the module docs).
pub fn device_id_from(machine_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(machine_id.trim().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(APP_KEY);
    let digest = mac.finalize().into_bytes();
    hex::encode(&digest[..16])
}

/// This machine's device id.
///
/// # Errors
/// [`IdentityError::MachineId`] when the OS has no usable machine id.
pub fn device_id() -> Result<String, IdentityError> {
    let raw = machine_uid::get().map_err(|e| IdentityError::MachineId(e.to_string()))?;
    if raw.trim().is_empty() {
        return Err(IdentityError::MachineId("the machine id is empty".into()));
    }
    Ok(device_id_from(&raw))
}

/// This machine's host name (lossy UTF-8; `unknown` when it cannot be read).
pub fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_id_is_a_keyed_hash_not_the_machine_id() {
        let raw = "4c4c4544003957108052b4c04f384833";
        let id = device_id_from(raw);
        assert_eq!(id.len(), 32);
        assert!(!id.contains(raw));
        assert_eq!(
            id,
            device_id_from(&format!("{raw}\n")),
            "trailing newline ignored"
        );
        assert_ne!(id, device_id_from("4c4c4544003957108052b4c04f384834"));
        // Independent check of the construction: HMAC-SHA256(key = machine id, msg = APP_KEY).
        let mut mac = Hmac::<Sha256>::new_from_slice(raw.as_bytes()).unwrap();
        mac.update(b"opencode-telemetry/device-id/v1");
        assert_eq!(id, hex::encode(&mac.finalize().into_bytes()[..16]));
    }
}
