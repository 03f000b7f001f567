//! How a manager and the interchange prove to each other that they hold the endpoint's secret
//! without sending it: each side sends a fresh random nonce, and each answers with an
//! HMAC-SHA-256 over both nonces, keyed by the secret and labelled by its role.
//!
//! ```text
//! manager      → Hello { nonce_m }
//! interchange  → Challenge { nonce_i, HMAC(secret, "fxr/interchange" ‖ nonce_m ‖ nonce_i) }
//! manager      → Register { ..., HMAC(secret, "fxr/manager" ‖ nonce_i ‖ nonce_m) }
//! ```
//!
//! A recorded registration is worthless on a new connection (the interchange's nonce differs),
//! a listener that does not know the secret cannot answer the manager's nonce, and the labels
//! keep one side's proof from being replayed as the other's.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of a nonce and of a proof.
pub const NONCE: usize = 32;
pub type Nonce = [u8; NONCE];
pub type Proof = [u8; 32];

fn mac(secret: &str, label: &[u8], first: &Nonce, second: &Nonce) -> Proof {
    // HMAC takes a key of any length.
    let mut m = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(label);
    m.update(first);
    m.update(second);
    m.finalize().into_bytes().into()
}

/// The interchange's answer to a manager's nonce.
pub fn interchange_proof(secret: &str, nonce_m: &Nonce, nonce_i: &Nonce) -> Proof {
    mac(secret, b"fxr/interchange", nonce_m, nonce_i)
}

/// The manager's answer to the interchange's nonce.
pub fn manager_proof(secret: &str, nonce_i: &Nonce, nonce_m: &Nonce) -> Proof {
    mac(secret, b"fxr/manager", nonce_i, nonce_m)
}

/// Compares two proofs in constant time.
pub fn same(a: &Proof, b: &Proof) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_secret_both_nonces_and_the_role() {
        let (m, i) = ([1u8; NONCE], [2u8; NONCE]);
        let p = manager_proof("s3cret", &i, &m);
        assert!(same(&p, &manager_proof("s3cret", &i, &m)));
        assert!(!same(&p, &manager_proof("other", &i, &m)), "another secret");
        assert!(
            !same(&p, &manager_proof("s3cret", &[3; NONCE], &m)),
            "a new connection's nonce"
        );
        assert!(!same(&p, &manager_proof("s3cret", &i, &[4; NONCE])));
        assert!(
            !same(&p, &interchange_proof("s3cret", &i, &m)),
            "the other role"
        );
        assert!(!same(&p, &[0; 32]));
    }
}
