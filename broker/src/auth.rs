//! Tokens and credentials: random secrets shown once, stored only as SHA-256 hashes.

use sha2::{Digest, Sha256};

/// A new random secret, 32 bytes as hex.
pub fn new_secret() -> String {
    hex(&random_bytes::<32>())
}

/// A new random identifier, 16 bytes as hex.
pub fn new_id() -> String {
    hex(&random_bytes::<16>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        // The OS generator is unavailable only on exotic systems; fall back to a seeded PRNG
        // mixed with the clock rather than refusing to run.
        let mut rng =
            fastrand::Rng::with_seed(crate::store::now_ms() as u64 ^ u64::from(std::process::id()));
        for x in &mut b {
            *x = rng.u8(..);
        }
    }
    b
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_distinct_and_hashes_stable() {
        let a = super::new_secret();
        assert_eq!(a.len(), 64);
        assert_ne!(a, super::new_secret());
        assert_eq!(super::hash("x"), super::hash("x"));
        assert_eq!(
            super::hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
