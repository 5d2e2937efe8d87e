//! Secret keys: the server keys that sign lease tokens and the tenants' keys
//! that sign grants. Owns parsing and validation of key material; never
//! prints a secret (`Debug` shows only the key id).

use std::fmt;

/// A 32-byte secret with its key id.
#[derive(Clone)]
pub struct Key {
    pub kid: Box<str>,
    pub secret: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}, <secret>)", self.kid)
    }
}

/// Longest accepted key id: it travels in every lease token, which must stay
/// within `MAX_TOKEN_LEN`.
pub const MAX_KID_LEN: usize = 16;

impl Key {
    /// Parses a key from its id and 64 lowercase hex characters.
    pub fn parse(kid: &str, hex: &str) -> Result<Key, String> {
        if kid.is_empty()
            || kid.len() > MAX_KID_LEN
            || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!("key id {kid:?} must be 1-{MAX_KID_LEN} characters of [A-Za-z0-9_-]"));
        }
        let secret = parse_hex_key(hex)
            .ok_or_else(|| format!("secret of key {kid:?} must be 64 lowercase hex characters (32 bytes)"))?;
        Ok(Key { kid: kid.into(), secret })
    }
}

fn parse_hex_key(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Renders a secret as 64 lowercase hex characters (for `keygen`).
pub fn to_hex(secret: &[u8; 32]) -> String {
    use std::fmt::Write;
    secret.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A fresh random key from the operating system's generator.
pub fn generate() -> Result<[u8; 32], getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    Ok(secret)
}

/// Keys that are tried in order: the first signs, all verify.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Box<[Key]>,
}

impl KeyRing {
    pub fn new(keys: Vec<Key>) -> Result<KeyRing, String> {
        if keys.is_empty() {
            return Err("at least one key is required".into());
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|other| other.kid == k.kid) {
                return Err(format!("duplicate key id {:?}", k.kid));
            }
        }
        Ok(KeyRing { keys: keys.into() })
    }

    /// The key that signs new tokens.
    pub fn signing(&self) -> &Key {
        &self.keys[0]
    }

    /// Key ids, the signing one first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.kid)
    }

    pub fn find(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| &*k.kid == kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let secret = [0xabu8; 32];
        let key = Key::parse("k1", &to_hex(&secret)).unwrap();
        assert_eq!(key.secret, secret);
        assert!(Key::parse("k1", &"AB".repeat(32)).is_err(), "uppercase");
        assert!(Key::parse("k1", &"ab".repeat(31)).is_err(), "short");
        assert!(Key::parse("k 1", &"ab".repeat(32)).is_err(), "bad kid");
        assert!(Key::parse(&"k".repeat(17), &"ab".repeat(32)).is_err(), "long kid");
        assert!(!format!("{key:?}").contains("abab"), "Debug must not show secrets");
    }

    #[test]
    fn ring_signs_with_first_and_rejects_duplicates() {
        let a = Key::parse("a", &"01".repeat(32)).unwrap();
        let b = Key::parse("b", &"02".repeat(32)).unwrap();
        let ring = KeyRing::new(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(&*ring.signing().kid, "a");
        assert_eq!(ring.find("b").unwrap().secret, b.secret);
        assert!(ring.find("c").is_none());
        assert!(KeyRing::new(vec![a.clone(), a]).is_err());
        assert!(KeyRing::new(vec![]).is_err());
    }
}
