//! Tokens and credentials: random secrets shown once, stored only as SHA-256 hashes.

use sha2::{Digest, Sha256};

/// The OS's cryptographic generator failed: no secret is made without it.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// A new random secret, 32 bytes from the OS's cryptographic generator, as hex.
pub fn new_secret() -> Result<String, RandomError> {
    Ok(hex(&random_bytes::<32>()?))
}

/// A new random identifier, 16 bytes from the OS's cryptographic generator, as hex.
pub fn new_id() -> Result<String, RandomError> {
    Ok(hex(&random_bytes::<16>()?))
}

/// `N` bytes from the OS's cryptographic generator (`getrandom(2)`), with no fallback.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| RandomError(e.to_string()))?;
    Ok(b)
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
        let a = super::new_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, super::new_secret().unwrap());
        assert_eq!(super::hash("x"), super::hash("x"));
        assert_eq!(
            super::hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
