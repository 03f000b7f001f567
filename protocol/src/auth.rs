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
    mac_of(secret, label, &[first, second])
}

/// HMAC-SHA-256 keyed by the secret over a label and `parts`, each part preceded by its length
/// so that no two lists of parts read the same.
pub(crate) fn mac_of(secret: &str, label: &[u8], parts: &[&[u8]]) -> Proof {
    // HMAC takes a key of any length.
    let mut m = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(label);
    for p in parts {
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
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
    same_bytes(a, b)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
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

/// The keys of an encrypted connection, one per direction, derived from the secret and both
/// nonces (HMAC-SHA-256 as the key derivation function): manager to interchange, then
/// interchange to manager.
pub fn session_keys(secret: &str, nonce_m: &Nonce, nonce_i: &Nonce) -> ([u8; 32], [u8; 32]) {
    (
        mac(secret, b"fxr/key/manager-to-interchange", nonce_m, nonce_i),
        mac(secret, b"fxr/key/interchange-to-manager", nonce_m, nonce_i),
    )
}

/// One direction of an encrypted connection: ChaCha20-Poly1305 with the message counter as the
/// nonce, so each message is sealed under a nonce never used before with that key, and a
/// message dropped, repeated or reordered fails to open.
pub struct Cipher {
    aead: chacha20poly1305::ChaCha20Poly1305,
    counter: u64,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// A message that does not open: forged, damaged, replayed or out of order.
#[derive(Debug, PartialEq, Eq)]
pub struct Unauthentic;

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        use chacha20poly1305::KeyInit as _;
        Cipher {
            aead: chacha20poly1305::ChaCha20Poly1305::new(key.into()),
            counter: 0,
        }
    }

    fn nonce(&mut self) -> chacha20poly1305::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        n.into()
    }

    /// The next message, sealed.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::Aead;
        let nonce = self.nonce();
        // Encryption fails only for messages beyond what the cipher can count (2^38 bytes).
        self.aead.encrypt(&nonce, plain).unwrap_or_default()
    }

    /// The next message, opened.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        use chacha20poly1305::aead::Aead;
        let nonce = self.nonce();
        self.aead.decrypt(&nonce, sealed).map_err(|_| Unauthentic)
    }
}

#[cfg(test)]
mod cipher_tests {
    use super::*;

    #[test]
    fn sealed_messages_open_once_in_order_with_the_right_key() {
        let (m2i, i2m) = session_keys("s", &[1; NONCE], &[2; NONCE]);
        assert_ne!(m2i, i2m);
        let (mut tx, mut rx) = (Cipher::new(&m2i), Cipher::new(&m2i));
        let a = tx.seal(b"first");
        let b = tx.seal(b"second");
        assert!(!a.windows(5).any(|w| w == b"first"), "not in clear");
        assert_eq!(rx.open(&a).unwrap(), b"first");
        assert_eq!(rx.open(&a), Err(Unauthentic), "a replay does not open");
        let (mut rx2, mut other) = (Cipher::new(&m2i), Cipher::new(&i2m));
        assert_eq!(
            other.open(&a),
            Err(Unauthentic),
            "the other direction's key"
        );
        assert_eq!(rx2.open(&b), Err(Unauthentic), "out of order");
        let mut bad = b.clone();
        bad[0] ^= 1;
        let mut rx3 = Cipher::new(&m2i);
        rx3.open(&a).unwrap();
        assert_eq!(rx3.open(&bad), Err(Unauthentic), "damaged");
    }
}
