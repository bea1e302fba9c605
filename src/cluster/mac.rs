//! HMAC-SHA256, the one keyed hash of the cluster: place tickets (`ticket`) sign and
//! verify with it, and the membership config fingerprint (`membership`) hashes its
//! secrets with it.
//!
//! Invariants: any key length is accepted (HMAC pads or hashes the key), so neither
//! function can fail; [`verify`] compares the tag in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of an HMAC-SHA256 tag.
pub const TAG_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

fn keyed(key: &[u8], msg: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this never fails.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("hmac key");
    mac.update(msg);
    mac
}

/// The HMAC-SHA256 tag of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; TAG_BYTES] {
    keyed(key, msg).finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 tag of `msg` under `key` (constant-time compare).
pub fn verify(key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    keyed(key, msg).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_case_2() {
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &tag));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &tag));
    }
}
