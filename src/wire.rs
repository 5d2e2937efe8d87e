//! The contract in one file: JSON shapes, error codes, size limits and
//! defaults from docs/spec.md §2–4 and §8. Check this module against `docs/spec.md`.
//! Nothing here does I/O or knows about hyper.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

// ---- limits (docs/spec.md §4) -------------------------------------------------------

/// Most request headers accepted; more gets `431`.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of request line plus headers; more gets `431` (or `414`).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body; more gets `413`.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest request body on the licence route (docs/spec.md §10): licence
/// challenges are a few KiB; more gets `413`.
pub const MAX_LICENCE_BODY_BYTES: usize = 64 * 1024;
/// Most bytes of a licence server's answer read; more gets `502`.
pub const MAX_LICENCE_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest lease token the server mints (docs/spec.md §3).
pub const MAX_TOKEN_LEN: usize = 512;
/// Longest grant accepted; far above any valid grant, it bounds the work an
/// attacker can make us do before the MAC check.
pub const MAX_GRANT_LEN: usize = 4096;

// ---- clock-skew leeways ------------------------------------------------------

/// A grant is accepted until `exp` plus this (docs/spec.md §2).
pub const GRANT_LEEWAY_MS: u64 = 30_000;
/// A lease token is accepted until its expiry plus this (docs/spec.md §3); tombstones
/// are kept this much longer than the last token they answer for.
pub const TOKEN_LEEWAY_MS: u64 = 5_000;

// ---- defaults (docs/spec.md §8) ------------------------------------------------------

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Dev mode runs on fixed, public keys: it listens on loopback only unless told otherwise.
pub const DEV_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_POLL_SECS: u32 = 30;
pub const DEFAULT_MIN_POLL_SECS: u32 = 1;
pub const DEFAULT_MAX_POLL_SECS: u32 = 3600;
pub const DEFAULT_TTL_FACTOR: u32 = 3;
pub const DEFAULT_MAX_SESSIONS: u64 = 50_000_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_SWEEP_MILLIS: u64 = 1_000;
pub const DEFAULT_LICENCE_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_LICENCE_TIMEOUT_MS: u64 = 8_000;

// ---- field rules (docs/spec.md §2) -----------------------------------------------------

pub const MAX_LIMIT: u32 = 1000;
/// Most records (live sessions and tombstones) one user may hold: far above
/// any legitimate use, it bounds the work and memory one account can cause.
/// Beyond it, what would add a record gets `503` for that user alone.
pub const MAX_RECORDS_PER_USER: usize = 2 * MAX_LIMIT as usize + 48;
pub const MAX_TENANT_LEN: usize = 64;
pub const MAX_USER_LEN: usize = 128;
pub const MAX_GROUP_LEN: usize = 64;
pub const MAX_DEVICE_LEN: usize = 128;
pub const MAX_LABEL_LEN: usize = 64;
pub const MAX_CONTENT_LEN: usize = 128;
/// Most stops a lease token carries (docs/spec.md §3, §6): a user's most
/// recent kicks, replaces and evictions. More within one token lifetime is
/// rare; past it the oldest are left to re-validation (docs/spec.md §9).
pub const MAX_CARRIED_STOPS: usize = 4;

/// `[A-Za-z0-9_-]`, 1..=max: tenant ids.
pub fn is_tenant_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TENANT_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[A-Za-z0-9._~-]`, 1..=max: users and groups (URL-safe as they are).
pub fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Printable ASCII, 1..=max: device ids.
pub fn is_device(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_DEVICE_LEN && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

// ---- domain words that appear on the wire ----------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    RejectNew,
    EvictOldest,
    RejectNewDevice,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RejectNew => "reject_new",
            Policy::EvictOldest => "evict_oldest",
            Policy::RejectNewDevice => "reject_new_device",
        }
    }

    pub fn from_u8(v: u8) -> Option<Policy> {
        [Policy::RejectNew, Policy::EvictOldest, Policy::RejectNewDevice].get(v as usize).copied()
    }

    pub fn to_u8(self) -> u8 {
        self as u8
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "reject_new" => Ok(Policy::RejectNew),
            "evict_oldest" => Ok(Policy::EvictOldest),
            "reject_new_device" => Ok(Policy::RejectNewDevice),
            _ => Err(format!("unknown policy {s:?} (expected reject_new, evict_oldest or reject_new_device)")),
        }
    }
}

/// A DRM system the licence gate forwards for: the last segment of the
/// licence route and the name of a tenant's `licence` table (docs/spec.md §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DrmSystem {
    Widevine,
    PlayReady,
    FairPlay,
    ClearKey,
}

impl DrmSystem {
    pub const ALL: [DrmSystem; 4] =
        [DrmSystem::Widevine, DrmSystem::PlayReady, DrmSystem::FairPlay, DrmSystem::ClearKey];

    pub fn as_str(self) -> &'static str {
        match self {
            DrmSystem::Widevine => "widevine",
            DrmSystem::PlayReady => "playready",
            DrmSystem::FairPlay => "fairplay",
            DrmSystem::ClearKey => "clearkey",
        }
    }

    pub fn parse(s: &str) -> Option<DrmSystem> {
        DrmSystem::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Response headers of the licence route: the renewed lease, as a heartbeat
/// answer carries it in its body (`token`, `expires_at`, `poll_after`).
pub const HEADER_TOKEN: &str = "streamcap-token";
pub const HEADER_EXPIRES_AT: &str = "streamcap-expires-at";
pub const HEADER_POLL_AFTER: &str = "streamcap-poll-after";
/// `Access-Control-Expose-Headers` on the JSON routes' answers that carry
/// `Access-Control-Allow-Origin`: a web player reads `Retry-After` of a `503`.
pub const EXPOSED_HEADERS: &str = "Retry-After";
/// The same on the licence route, with the renewed lease's headers.
pub const EXPOSED_LICENCE_HEADERS: &str = "Retry-After, Streamcap-Token, Streamcap-Expires-At, Streamcap-Poll-After";

/// Why a session stopped; the `reason` of a `410`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Evicted,
    LimitExceeded,
    Replaced,
    Ended,
    Kicked,
}

impl StopReason {
    pub const ALL: [StopReason; 5] =
        [StopReason::Evicted, StopReason::LimitExceeded, StopReason::Replaced, StopReason::Ended, StopReason::Kicked];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Evicted => "evicted",
            StopReason::LimitExceeded => "limit_exceeded",
            StopReason::Replaced => "replaced",
            StopReason::Ended => "ended",
            StopReason::Kicked => "kicked",
        }
    }
}

/// A session id: 64 random bits, written as 16 lowercase hex characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// The 16 lowercase hex characters, without going through `fmt`.
    pub fn to_hex(self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        std::array::from_fn(|i| HEX[(self.0 >> (60 - 4 * i) & 0xf) as usize])
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_hex()).expect("to_hex writes ASCII"))
    }
}

impl FromStr for SessionId {
    type Err = ();
    fn from_str(s: &str) -> Result<SessionId, ()> {
        if s.len() != 16 {
            return Err(());
        }
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        s.bytes().try_fold(0u64, |id, b| Some(id << 4 | u64::from(digit(b)?))).map(SessionId).ok_or(())
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ---- response bodies ---------------------------------------------------------------

/// One session as players see it in lists, 409s and `by` (docs/spec.md §4).
/// `session_id` and `expires_at` are `null` only in the `by` of a kick, where
/// the kicker is a grant holder rather than a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionView {
    pub session_id: Option<SessionId>,
    pub started_at: u64,
    pub expires_at: Option<u64>,
    pub device: Option<String>,
    pub label: Option<String>,
    pub content: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StartedBody<'a> {
    pub session_id: SessionId,
    pub token: &'a str,
    pub poll_after: u32,
    pub expires_at: u64,
    pub active: usize,
    pub limit: u32,
    pub evicted: &'a [SessionId],
}

#[derive(Debug, Serialize)]
pub struct RenewedBody<'a> {
    pub session_id: SessionId,
    pub token: &'a str,
    pub poll_after: u32,
    pub expires_at: u64,
}

impl RenewedBody<'_> {
    /// The same JSON serde writes, rendered directly: this is the answer to
    /// every heartbeat, and a lease token is URL-safe by construction
    /// (`[A-Za-z0-9._-]`), so the per-byte escape scan serde would do on it
    /// is wasted work (a tenth of a heartbeat's instructions, measured).
    pub fn to_json(&self) -> Vec<u8> {
        debug_assert!(self.token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        let mut out = Vec::with_capacity(self.token.len() + 96);
        let mut int = itoa::Buffer::new();
        out.extend_from_slice(br#"{"session_id":""#);
        out.extend_from_slice(&self.session_id.to_hex());
        out.extend_from_slice(br#"","token":""#);
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(br#"","poll_after":"#);
        out.extend_from_slice(int.format(self.poll_after).as_bytes());
        out.extend_from_slice(br#","expires_at":"#);
        out.extend_from_slice(int.format(self.expires_at).as_bytes());
        out.push(b'}');
        out
    }
}

#[derive(Debug, Serialize)]
pub struct ListBody<'a> {
    pub limit: u32,
    pub active: usize,
    pub sessions: &'a [SessionView],
}

/// A sign-out's answer: how many live sessions it stopped (`0` when none was
/// left).
#[derive(Debug, Serialize)]
pub struct SignedOutBody {
    pub stopped: usize,
}

/// Every error body: `{"error", "message"}` plus the fields of its kind.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'static str,
    pub message: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<ErrorExtra<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ErrorExtra<'a> {
    Limit { limit: u32, active: usize, sessions: &'a [SessionView] },
    SessionStopped { reason: StopReason, by: Option<&'a SessionView> },
}

/// Milliseconds to whole Unix seconds, as the API shows times.
pub fn unix_secs(ms: u64) -> u64 {
    ms / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_text_round_trip() {
        let id = SessionId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!(SessionId(u64::MAX).to_string(), "ffffffffffffffff");
        assert_eq!(SessionId(1).to_string(), "0000000000000001");
        assert_eq!("00abcdef01234567".parse::<SessionId>(), Ok(id));
        assert_eq!("ffffffffffffffff".parse::<SessionId>(), Ok(SessionId(u64::MAX)));
        for bad in [
            "",
            "00ABCDEF01234567",
            "00abcdef012345é",
            "00abcdef012345678",
            "00abcdef0123456",
            "+0abcdef01234567",
            "g0abcdef01234567",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_spec_charsets() {
        assert!(is_name("a.b_c~d-9", MAX_USER_LEN));
        assert!(!is_name("a/b", MAX_USER_LEN));
        assert!(!is_name("", MAX_USER_LEN));
        assert!(!is_name(&"a".repeat(129), MAX_USER_LEN));
        assert!(is_tenant_id("acme_1-x"));
        assert!(!is_tenant_id("acme.x"));
        assert!(is_device("Living room TV #2"));
        assert!(!is_device("tab\there"));
    }

    #[test]
    fn hand_rendered_heartbeat_answer_matches_serde() {
        let body = RenewedBody {
            session_id: SessionId(0xfeed),
            token: "s1.k-1.AbC_d-9.xyz",
            poll_after: 30,
            expires_at: 1_795_257_828,
        };
        assert_eq!(body.to_json(), serde_json::to_vec(&body).unwrap());
    }

    #[test]
    fn error_body_shapes() {
        let body = ErrorBody {
            error: "session_stopped",
            message: "m",
            extra: Some(ErrorExtra::SessionStopped { reason: StopReason::LimitExceeded, by: None }),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":"session_stopped","message":"m","reason":"limit_exceeded","by":null}"#
        );
        let plain = ErrorBody { error: "not_found", message: "m", extra: None };
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"error":"not_found","message":"m"}"#);
    }
}
