//! Helpers shared by the fuzz targets and the seed generator: the dev keys,
//! a fixed "now", and generators that steer `arbitrary` towards values that
//! are valid most of the time (so the validators behind the MAC are
//! reached) and invalid some of the time (so every refusal is reached too).

use arbitrary::{Result, Unstructured};
use streamcap::config::{DEV_SERVER_KEY, DEV_TENANT, DEV_TENANT_KEY, dev_keys};
use streamcap::grant::{PollBounds, Tenants};
use streamcap::keys::{Key, KeyRing};

/// A fixed "now" (2027-01-15), in Unix milliseconds.
pub const NOW_MS: u64 = 1_800_000_000_000;
/// The server's default poll bounds.
pub const BOUNDS: PollBounds = PollBounds { default: 30, min: 1, max: 3600 };
/// Far enough ahead (2100-01-01) that committed seeds stay valid.
pub const FAR_FUTURE_SECS: i64 = 4_102_444_800;

pub const TENANT: &str = DEV_TENANT;

/// `[A-Za-z0-9_-]`: tenant ids and key ids.
pub const TENANT_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
/// `[A-Za-z0-9._~-]`: users and groups.
pub const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-";

pub fn tenant_secret() -> [u8; 32] {
    Key::parse("dev", DEV_TENANT_KEY).expect("dev tenant key").secret
}

pub fn server_key() -> Key {
    Key::parse("dev", DEV_SERVER_KEY).expect("dev server key")
}

pub fn server_ring() -> KeyRing {
    dev_keys().0
}

pub fn tenants() -> Tenants {
    dev_keys().1
}

/// A string that is usually `1..=max` characters of `charset`, sometimes
/// empty, one too long, or anything at all.
pub fn name(u: &mut Unstructured<'_>, charset: &[u8], max: usize) -> Result<String> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => u.arbitrary::<String>()?,
        1 => String::new(),
        2 => from_charset(u, charset, max + 1)?,
        3 => from_charset(u, charset, max)?,
        _ => {
            let n = u.int_in_range(1..=max.min(12))?;
            from_charset(u, charset, n)?
        }
    })
}

fn from_charset(u: &mut Unstructured<'_>, charset: &[u8], n: usize) -> Result<String> {
    (0..n).map(|_| Ok(charset[u.choose_index(charset.len())?] as char)).collect()
}

/// Printable ASCII of `1..=128` bytes, sometimes not.
pub fn device(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary::<String>()?,
        1 => String::new(),
        2 => "d".repeat(129),
        3 => "d".repeat(128),
        _ => {
            let n = u.int_in_range(1..=16)?;
            (0..n).map(|_| Ok(u.int_in_range(0x20u8..=0x7e)? as char)).collect::<Result<String>>()?
        }
    })
}

/// UTF-8 display text of up to `max` bytes, sometimes more, sometimes multi-byte
/// characters straddling the limit.
pub fn display(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => String::new(),
        1 => "x".repeat(max),
        2 => "x".repeat(max + 1),
        3 => "é".repeat(max / 2 + u.int_in_range(0..=1)?),
        4 => "€".repeat(max / 3 + u.int_in_range(0..=1)?),
        _ => {
            let s: String = u.arbitrary()?;
            s.chars().take(max).collect()
        }
    })
}

/// An integer near the edges of `lo..=hi`, inside it most of the time.
pub fn bounded(u: &mut Unstructured<'_>, lo: i64, hi: i64) -> Result<i64> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => u.arbitrary()?,
        1 => lo - 1,
        2 => hi + 1,
        3 => lo,
        4 => hi,
        5 => i64::MIN,
        6 => i64::MAX,
        7 => 0,
        _ => u.int_in_range(lo..=hi)?,
    })
}

/// Whether `s` is `1..=max` bytes of `charset`.
pub fn is_of(s: &str, charset: &[u8], max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| charset.contains(&b))
}
