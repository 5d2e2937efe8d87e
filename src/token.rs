//! Lease tokens (docs/spec.md §3): `s1.<kid>.<payload>.<mac>`, where `payload` is a
//! compact binary record in base64url and `mac` a 128-bit tag: the first 16
//! bytes of the keyed BLAKE3 hash, with the server key `kid`, of everything
//! before the last dot, in base64url (22 characters). Tokens minted before
//! the tag was shortened carry all 32 bytes (43 characters); they are still
//! accepted, and renewing one gives a token with the short tag.
//!
//! A token carries all a node needs to rebuild its session, so verifying one
//! touches no shared state and allocates nothing: the payload is decoded
//! into a stack buffer and read in place. The tag is not decoded: the
//! expected one is encoded and the two texts compared in constant time,
//! which also refuses a non-canonical spelling of the right bytes.
//!
//! Renewal re-signs the same payload with only the expiry changed; as
//! base64 turns every 3 bytes into 4 characters independently, it
//! re-encodes just the 12 bytes (16 characters) around the expiry and copies
//! the rest of the text.
//!
//! Payload layout (little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | policy (bits 0-1), has group/device/label/content (bits 2-5), has stops (bit 6) |
//! | 8 | session id |
//! | 8 | start time, Unix ms |
//! | 8 | token expiry, Unix ms |
//! | 2 | limit |
//! | 2 | group limit (0 without a group) |
//! | 2 | poll seconds |
//! | 1+n each | tenant, user, then group, device, label, content when present |
//! | rest | with bit 6 only: the user's recent stops ([`StopClaim`]) |
//!
//! The stops come last and only when there are any, so a user with none
//! gets the same bytes as before they existed, and its renewal stays the
//! 16-character rewrite. They use what room the session's own fields leave
//! (those are never shortened for them): `by`'s display text is shortened
//! or dropped first, then the oldest stops.
//!
//! A stop, after a count byte (1 to [`wire::MAX_CARRIED_STOPS`]):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | the stopped session's id |
//! | 1 | reason (bits 0-1: kicked, replaced, evicted); `by` has a session (bit 2), device, label, content, group (bits 3-6) |
//! | 4 | remembered through, Unix s (rounded up) |
//! | 4 | `by` started, Unix s |
//! | 8 + 4 | with bit 2: `by`'s session id and expiry, Unix s |
//! | 1+n each | `by`'s device, label, content, group when present |

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::keys::{Key, KeyRing, MAX_KID_LEN};
use crate::wire::{self, MAX_CARRIED_STOPS, Policy, SessionId, StopReason};

const PREFIX: &str = "s1.";
/// The tag: the keyed hash cut to 16 bytes, 22 characters of base64url.
const TAG_LEN: usize = 16;
const TAG_B64_LEN: usize = 22;
/// The whole 32-byte hash, as tokens of earlier versions carry it.
const LEGACY_TAG_B64_LEN: usize = 43;
const FIXED_LEN: usize = 31;
const EXPIRY_AT: usize = 17;
/// The whole base64 groups holding the expiry: payload bytes 15..27, text 20..36.
const EXPIRY_GROUPS: std::ops::Range<usize> = 15..27;
const EXPIRY_TEXT: std::ops::Range<usize> = 20..36;
/// Decoded payloads never exceed this: a 512-byte token holds at most 384.
const MAX_PAYLOAD: usize = wire::MAX_TOKEN_LEN * 3 / 4;

const HAS_GROUP: u8 = 1 << 2;
const HAS_DEVICE: u8 = 1 << 3;
const HAS_LABEL: u8 = 1 << 4;
const HAS_CONTENT: u8 = 1 << 5;
const HAS_STOPS: u8 = 1 << 6;

/// A stop's flags: `by` has a session id and expiry; `by`'s texts.
const BY_SESSION: u8 = 1 << 2;
const BY_DEVICE: u8 = 1 << 3;
const BY_LABEL: u8 = 1 << 4;
const BY_CONTENT: u8 = 1 << 5;
const BY_GROUP: u8 = 1 << 6;
/// A stop without `by`'s session or texts: id, flags, two times.
const STOP_FIXED_LEN: usize = 17;
const BY_SESSION_LEN: usize = 12;
/// Payload bytes a token can hold while leaving room for the longest key id.
const BUDGET: usize = (wire::MAX_TOKEN_LEN - PREFIX.len() - MAX_KID_LEN - 2 - TAG_B64_LEN) * 3 / 4;

/// Why a token was refused; the text is safe to show the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidToken(pub &'static str);

/// What a lease token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseClaims<'a> {
    pub tenant: &'a str,
    pub user: &'a str,
    pub session: SessionId,
    pub started_ms: u64,
    pub expires_ms: u64,
    pub limit: u32,
    pub policy: Policy,
    pub group: Option<(&'a str, u32)>,
    pub device: Option<&'a str>,
    pub label: Option<&'a str>,
    pub content: Option<&'a str>,
    pub poll_secs: u32,
}

/// A stop a lease token carries: a session of the same user that was
/// kicked, replaced or evicted and may still hold a valid token, with what
/// its `410` says. Times are whole Unix seconds, as the API shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopClaim<'a> {
    pub session: SessionId,
    /// `Kicked`, `Replaced` or `Evicted`; other reasons are not carried.
    pub reason: StopReason,
    /// Remembered through this second: the stopped session's last token
    /// could be accepted until then.
    pub until_secs: u32,
    /// `by`'s `started_at`: the kick, or the start that stopped it.
    pub by_started_secs: u32,
    /// `by`'s session id and `expires_at`; `None` for a kick.
    pub by_session: Option<(SessionId, u32)>,
    pub by_device: Option<&'a str>,
    pub by_label: Option<&'a str>,
    pub by_content: Option<&'a str>,
    pub by_group: Option<&'a str>,
}

impl StopClaim<'_> {
    /// Whether a stop with this reason travels in tokens: `limit_exceeded`
    /// is derived again by re-validation, and `ended` is the player's own.
    pub fn carries(reason: StopReason) -> bool {
        matches!(reason, StopReason::Kicked | StopReason::Replaced | StopReason::Evicted)
    }

    fn bare_len(&self) -> usize {
        STOP_FIXED_LEN + if self.by_session.is_some() { BY_SESSION_LEN } else { 0 }
    }

    fn texts(&self) -> [Option<&str>; 4] {
        [self.by_device, self.by_label, self.by_content, self.by_group]
    }
}

fn reason_code(reason: StopReason) -> u8 {
    match reason {
        StopReason::Replaced => 1,
        StopReason::Evicted => 2,
        _ => 0,
    }
}

fn reason_of(code: u8) -> Option<StopReason> {
    match code {
        0 => Some(StopReason::Kicked),
        1 => Some(StopReason::Replaced),
        2 => Some(StopReason::Evicted),
        _ => None,
    }
}

/// The stops as a token with `room` payload bytes left writes them: the
/// first [`MAX_CARRIED_STOPS`] of those carried (the caller orders them,
/// most recent first), as many as fit without `by`'s text, then that text
/// while room is left: label, device, group, content, most recent stop
/// first; label and content are shortened, device and group kept whole or
/// dropped. Deterministic, so a renewal can tell whether anything changed.
type Fitted<'s> = [Option<StopClaim<'s>>; MAX_CARRIED_STOPS];

fn fit_stops<'s>(stops: &[StopClaim<'s>], room: usize) -> Fitted<'s> {
    let mut out: Fitted<'s> = [None; MAX_CARRIED_STOPS];
    for (slot, s) in out.iter_mut().zip(stops.iter().filter(|s| StopClaim::carries(s.reason))) {
        *slot = Some(*s);
    }
    let mut n = out.iter().flatten().count();
    let bare = |out: &Fitted<'s>, n: usize| 1 + out[..n].iter().flatten().map(StopClaim::bare_len).sum::<usize>();
    while n > 0 && bare(&out, n) > room {
        n -= 1;
        out[n] = None;
    }
    if n == 0 {
        return out;
    }
    let mut left = room - bare(&out, n);
    for s in out.iter_mut().flatten() {
        let full = *s;
        s.by_label = take_text(full.by_label, &mut left, true);
        s.by_device = take_text(full.by_device, &mut left, false);
        s.by_group = take_text(full.by_group, &mut left, false);
        s.by_content = take_text(full.by_content, &mut left, true);
    }
    out
}

/// `text` as it fits in `left` bytes (one for its length), cut on a
/// character boundary if `may_cut`, else whole or not at all.
fn take_text<'s>(text: Option<&'s str>, left: &mut usize, may_cut: bool) -> Option<&'s str> {
    let text = text.filter(|t| !t.is_empty())?;
    let room = left.saturating_sub(1).min(u8::MAX as usize);
    let text = match text.len() <= room {
        true => text,
        false if may_cut => truncate(text, room),
        false => return None,
    };
    if text.is_empty() {
        return None;
    }
    *left -= 1 + text.len();
    Some(text)
}

fn write_stops(w: &mut Writer<'_>, stops: &Fitted<'_>) {
    let n = stops.iter().flatten().count();
    if n == 0 {
        return;
    }
    w.put(&[n as u8]);
    for s in stops.iter().flatten() {
        let mut flags = reason_code(s.reason);
        for (bit, present) in [
            (BY_SESSION, s.by_session.is_some()),
            (BY_DEVICE, s.by_device.is_some()),
            (BY_LABEL, s.by_label.is_some()),
            (BY_CONTENT, s.by_content.is_some()),
            (BY_GROUP, s.by_group.is_some()),
        ] {
            flags |= if present { bit } else { 0 };
        }
        w.put(&s.session.0.to_le_bytes());
        w.put(&[flags]);
        w.put(&s.until_secs.to_le_bytes());
        w.put(&s.by_started_secs.to_le_bytes());
        if let Some((id, expires)) = s.by_session {
            w.put(&id.0.to_le_bytes());
            w.put(&expires.to_le_bytes());
        }
        for text in s.texts().into_iter().flatten() {
            w.put(&[text.len() as u8]);
            w.put(text.as_bytes());
        }
    }
}

/// Where the stop at `at` ends, if it is well formed and within `b`.
fn stop_end(b: &[u8], at: usize) -> Option<usize> {
    let flags = *b.get(at + 8)?;
    reason_of(flags & 0b11)?;
    if flags >> 7 != 0 {
        return None;
    }
    let mut end = at + STOP_FIXED_LEN + if flags & BY_SESSION != 0 { BY_SESSION_LEN } else { 0 };
    for bit in [BY_DEVICE, BY_LABEL, BY_CONTENT, BY_GROUP] {
        if flags & bit != 0 {
            end += 1 + *b.get(end)? as usize;
        }
    }
    b.get(..end)?;
    Some(end)
}

/// The stops of a verified token, decoded as they are read.
#[derive(Clone)]
pub struct Stops<'l> {
    buf: &'l [u8],
    at: usize,
    left: usize,
}

impl<'l> Iterator for Stops<'l> {
    type Item = StopClaim<'l>;

    fn next(&mut self) -> Option<StopClaim<'l>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The layout was checked by `Lease::verify`.
        let b = self.buf;
        let at = self.at;
        let end = stop_end(b, at)?;
        self.at = end;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let flags = b[at + 8];
        let mut next = at + STOP_FIXED_LEN;
        let by_session = (flags & BY_SESSION != 0).then(|| {
            next += BY_SESSION_LEN;
            (SessionId(u64_at(at + STOP_FIXED_LEN)), u32_at(at + STOP_FIXED_LEN + 8))
        });
        let mut text = |bit: u8| {
            (flags & bit != 0).then(|| {
                let n = b[next] as usize;
                next += 1 + n;
                std::str::from_utf8(&b[next - n..next]).unwrap_or_default()
            })
        };
        Some(StopClaim {
            session: SessionId(u64_at(at)),
            reason: reason_of(flags & 0b11).unwrap_or(StopReason::Kicked),
            until_secs: u32_at(at + 9),
            by_started_secs: u32_at(at + 13),
            by_session,
            by_device: text(BY_DEVICE),
            by_label: text(BY_LABEL),
            by_content: text(BY_CONTENT),
            by_group: text(BY_GROUP),
        })
    }
}

impl<'a> LeaseClaims<'a> {
    /// Signs these claims with `key`. Display-only fields (`content`, then
    /// `label`) are shortened in the token when needed to keep it within
    /// 512 bytes; `None` if the identifying fields alone do not fit. An
    /// empty string is written as absent (which is how it reads back).
    pub fn mint(&self, key: &Key) -> Option<String> {
        self.mint_with(key, &[])
    }

    /// Signs these claims and the user's recent `stops` (most recent
    /// first; see [`StopClaim`]), as many as the room the claims leave
    /// holds. Without stops, the same token as [`LeaseClaims::mint`].
    pub fn mint_with(&self, key: &Key, stops: &[StopClaim<'_>]) -> Option<String> {
        // Each string's length is one byte and the limits two: refuse what
        // the layout cannot carry rather than sign something else.
        let strs = [Some(self.tenant), Some(self.user), self.group.map(|g| g.0), self.device, self.label, self.content];
        let numbers = [self.limit, self.group.map_or(0, |g| g.1), self.poll_secs];
        if strs.iter().flatten().any(|s| s.len() > u8::MAX as usize) || numbers.iter().any(|n| *n > u16::MAX as u32) {
            return None;
        }
        // Room for the longest key id, not just this key's: renewal may sign
        // with a newer key whose id is longer.
        // An empty string reads back as absent: write it so, so that the
        // same claims always make the same token (renewal relies on it).
        let nonempty = |s: Option<&'a str>| s.filter(|s| !s.is_empty());
        let mut claims = LeaseClaims {
            group: self.group.filter(|g| !g.0.is_empty()),
            device: nonempty(self.device),
            label: nonempty(self.label),
            content: nonempty(self.content),
            ..*self
        };
        let over = claims.payload_len().saturating_sub(BUDGET);
        if over > 0 {
            let content = claims.content.unwrap_or("");
            let cut = over.min(content.len());
            claims.content = Some(truncate(content, content.len() - cut)).filter(|s| !s.is_empty());
            let label = claims.label.unwrap_or("");
            let cut = (over - cut).min(label.len());
            claims.label = Some(truncate(label, label.len() - cut)).filter(|s| !s.is_empty());
            if claims.payload_len() > BUDGET {
                return None;
            }
        }
        let stops = fit_stops(stops, BUDGET - claims.payload_len());
        let mut buf = [0u8; MAX_PAYLOAD];
        let len = claims.write_payload(&mut buf, &stops);
        Some(sign(key, |t| B64.encode_string(&buf[..len], t)))
    }

    fn payload_len(&self) -> usize {
        let strs = [Some(self.tenant), Some(self.user), self.group.map(|g| g.0), self.device, self.label, self.content];
        FIXED_LEN + strs.iter().flatten().map(|s| 1 + s.len()).sum::<usize>()
    }

    fn write_payload(&self, buf: &mut [u8; MAX_PAYLOAD], stops: &Fitted<'_>) -> usize {
        let mut flags = self.policy.to_u8();
        flags |= if stops.iter().any(Option::is_some) { HAS_STOPS } else { 0 };
        flags |= if self.group.is_some() { HAS_GROUP } else { 0 };
        flags |= if self.device.is_some() { HAS_DEVICE } else { 0 };
        flags |= if self.label.is_some() { HAS_LABEL } else { 0 };
        flags |= if self.content.is_some() { HAS_CONTENT } else { 0 };
        let mut w = Writer { buf, at: 0 };
        w.put(&[flags]);
        w.put(&self.session.0.to_le_bytes());
        w.put(&self.started_ms.to_le_bytes());
        w.put(&self.expires_ms.to_le_bytes());
        w.put(&(self.limit as u16).to_le_bytes());
        w.put(&(self.group.map_or(0, |g| g.1) as u16).to_le_bytes());
        w.put(&(self.poll_secs as u16).to_le_bytes());
        for s in [Some(self.tenant), Some(self.user), self.group.map(|g| g.0), self.device, self.label, self.content]
            .into_iter()
            .flatten()
        {
            w.put(&[s.len() as u8]);
            w.put(s.as_bytes());
        }
        write_stops(&mut w, stops);
        w.at
    }
}

struct Writer<'a> {
    buf: &'a mut [u8; MAX_PAYLOAD],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s1.<kid>.<payload>.<mac>`, with `payload` (base64url) written by `write`.
fn sign(key: &Key, write: impl FnOnce(&mut String)) -> String {
    let mut token = String::with_capacity(wire::MAX_TOKEN_LEN);
    token.push_str(PREFIX);
    token.push_str(&key.kid);
    token.push('.');
    write(&mut token);
    let mac = blake3::keyed_hash(&key.secret, token.as_bytes());
    token.push('.');
    push_b64::<TAG_B64_LEN>(&mut token, &mac.as_bytes()[..TAG_LEN]);
    token
}

/// Whether `tag` is the `N`-character base64url of `mac`. Encodes `mac`
/// rather than decoding `tag`, and compares the texts in constant time.
fn tag_matches<const N: usize>(mac: &[u8], tag: &str) -> bool {
    let mut buf = [0u8; N];
    let n = B64.encode_slice(mac, &mut buf).expect("N holds the base64 of every MAC compared");
    n == N && constant_time_eq::constant_time_eq(&buf, tag.as_bytes())
}

/// Appends the base64url of `bytes`, which must be exactly `N` characters
/// long; through a stack buffer, cheaper for short inputs than
/// `encode_string` (which stages through a 1 KiB buffer).
fn push_b64<const N: usize>(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; N];
    let n = B64.encode_slice(bytes, &mut buf).expect("callers size N for their bytes");
    debug_assert_eq!(n, N);
    out.push_str(std::str::from_utf8(&buf[..n]).expect("base64 text is ASCII"));
}

/// A verified lease token, decoded in place; it borrows the token's text.
#[derive(Clone)]
pub struct Lease<'t> {
    buf: [u8; MAX_PAYLOAD],
    len: usize,
    /// The payload as the token spelled it (base64url), for renewal.
    text: &'t str,
    /// The id of the key that signed the token.
    kid: &'t str,
    /// `(start, len)` of tenant, user, group, device, label, content; len 0 = absent.
    strs: [(u16, u8); 6],
    /// Where the stops begin (the payload's length when there are none), and how many.
    stops_at: u16,
    stops: u8,
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.claims().fmt(f)
    }
}

impl<'t> Lease<'t> {
    /// Authenticates `token` with `keys` and checks its expiry at `now_ms`
    /// (with `TOKEN_LEEWAY_MS` of grace).
    pub fn verify(token: &'t str, keys: &KeyRing, now_ms: u64) -> Result<Lease<'t>, InvalidToken> {
        const MALFORMED: InvalidToken = InvalidToken("malformed token");
        if token.len() > wire::MAX_TOKEN_LEN {
            return Err(MALFORMED);
        }
        let dot = token.bytes().rposition(|b| b == b'.').ok_or(MALFORMED)?;
        let (signed, tag) = (&token[..dot], &token[dot + 1..]);
        let rest = signed.strip_prefix(PREFIX).ok_or(MALFORMED)?;
        let dot = rest.bytes().position(|b| b == b'.').ok_or(MALFORMED)?;
        let (kid, payload_b64) = (&rest[..dot], &rest[dot + 1..]);
        let key = keys.find(kid).ok_or(InvalidToken("unknown key id"))?;
        if tag.len() != TAG_B64_LEN && tag.len() != LEGACY_TAG_B64_LEN {
            return Err(MALFORMED);
        }
        let mac = blake3::keyed_hash(&key.secret, signed.as_bytes());
        let genuine = match tag.len() {
            TAG_B64_LEN => tag_matches::<TAG_B64_LEN>(&mac.as_bytes()[..TAG_LEN], tag),
            _ => tag_matches::<LEGACY_TAG_B64_LEN>(mac.as_bytes(), tag),
        };
        if !genuine {
            return Err(InvalidToken("token signature does not match"));
        }
        let mut lease =
            Lease { buf: [0; MAX_PAYLOAD], len: 0, text: payload_b64, kid, strs: [(0, 0); 6], stops_at: 0, stops: 0 };
        lease.len = B64.decode_slice(payload_b64, &mut lease.buf).map_err(|_| MALFORMED)?;
        lease.index().ok_or(MALFORMED)?;
        if now_ms > lease.expires_ms().saturating_add(wire::TOKEN_LEEWAY_MS) {
            return Err(InvalidToken("token has expired"));
        }
        Ok(lease)
    }

    /// Locates the strings and checks the layout; `None` if it is not ours.
    fn index(&mut self) -> Option<()> {
        let b = &self.buf[..self.len];
        if b.len() < FIXED_LEN || Policy::from_u8(b[0] & 0b11).is_none() || b[0] >> 7 != 0 {
            return None;
        }
        let present =
            [true, true, b[0] & HAS_GROUP != 0, b[0] & HAS_DEVICE != 0, b[0] & HAS_LABEL != 0, b[0] & HAS_CONTENT != 0];
        let mut at = FIXED_LEN;
        for (slot, present) in self.strs.iter_mut().zip(present) {
            if !present {
                continue;
            }
            let n = *b.get(at)? as usize;
            b.get(at + 1..at + 1 + n)?;
            *slot = ((at + 1) as u16, n as u8);
            at += 1 + n;
        }
        self.stops_at = at as u16;
        if b[0] & HAS_STOPS != 0 {
            let n = *b.get(at)?;
            if n == 0 || n as usize > MAX_CARRIED_STOPS {
                return None;
            }
            at += 1;
            for _ in 0..n {
                at = stop_end(b, at)?;
            }
            self.stops = n;
        }
        (at == b.len() && self.strs[0].1 > 0 && self.strs[1].1 > 0).then_some(())
    }

    /// The user's recent stops this token carries, most recent first.
    pub fn stops(&self) -> Stops<'_> {
        let at = self.stops_at as usize + usize::from(self.stops > 0);
        Stops { buf: &self.buf[..self.len], at, left: self.stops as usize }
    }

    pub fn has_stops(&self) -> bool {
        self.stops > 0
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&self.buf[at..at + 8]);
        u64::from_le_bytes(v)
    }

    fn u16_at(&self, at: usize) -> u32 {
        u16::from_le_bytes([self.buf[at], self.buf[at + 1]]) as u32
    }

    fn str_at(&self, i: usize) -> Option<&str> {
        let (start, len) = self.strs[i];
        let bytes = &self.buf[start as usize..start as usize + len as usize];
        // An empty slot means absent. Only `mint` (from `&str`) writes what a
        // valid MAC covers, so the check is for safety alone: it is made as a
        // string is read, not also in `index`.
        (len > 0).then(|| std::str::from_utf8(bytes).unwrap_or_default())
    }

    pub fn tenant(&self) -> &str {
        self.str_at(0).expect("index refuses a token without a tenant")
    }

    pub fn user(&self) -> &str {
        self.str_at(1).expect("index refuses a token without a user")
    }

    pub fn session(&self) -> SessionId {
        SessionId(self.u64_at(1))
    }

    pub fn expires_ms(&self) -> u64 {
        self.u64_at(EXPIRY_AT)
    }

    pub fn claims(&self) -> LeaseClaims<'_> {
        let group_limit = self.u16_at(27);
        LeaseClaims {
            tenant: self.tenant(),
            user: self.user(),
            session: self.session(),
            started_ms: self.u64_at(9),
            expires_ms: self.expires_ms(),
            limit: self.u16_at(25),
            policy: Policy::from_u8(self.buf[0] & 0b11).unwrap_or(Policy::RejectNew),
            group: self.str_at(2).map(|g| (g, group_limit)),
            device: self.str_at(3),
            label: self.str_at(4),
            content: self.str_at(5),
            poll_secs: self.u16_at(29),
        }
    }

    /// The same lease with a new expiry, signed with the ring's signing key.
    ///
    /// Every token this version mints leaves room for the longest key id,
    /// and one of an earlier version (with its 43-character tag) loses 21
    /// characters here, more than any key id adds; so the fast path always
    /// fits them. A token signed with less room is re-minted, shortening
    /// its display text; if even that cannot fit, it stays with the key
    /// that signed it.
    pub fn renew(&self, expires_ms: u64, keys: &KeyRing) -> String {
        let signing = keys.signing();
        let fits = |key: &Key| PREFIX.len() + key.kid.len() + self.text.len() + 2 + TAG_B64_LEN <= wire::MAX_TOKEN_LEN;
        if fits(signing) {
            return self.resign(expires_ms, signing);
        }
        let stops: Vec<StopClaim<'_>> = self.stops().collect();
        if let Some(token) = (LeaseClaims { expires_ms, ..self.claims() }).mint_with(signing, &stops) {
            return token;
        }
        let own = keys.find(self.kid).unwrap_or(signing);
        self.resign(expires_ms, own)
    }

    /// The same lease with a new expiry, carrying `stops` (the user's
    /// recent stops, most recent first) instead of its own. When they are
    /// what the token already carries (always, for a user with none), this
    /// is [`Lease::renew`]; otherwise the claims are minted afresh with them.
    pub fn renew_with(&self, expires_ms: u64, stops: &[StopClaim<'_>], keys: &KeyRing) -> String {
        if stops.is_empty() && self.stops == 0 {
            return self.renew(expires_ms, keys);
        }
        let base = self.stops_at as usize;
        let fitted = fit_stops(stops, BUDGET.saturating_sub(base));
        let mut section = [0u8; MAX_PAYLOAD];
        let mut w = Writer { buf: &mut section, at: 0 };
        write_stops(&mut w, &fitted);
        let n = w.at;
        if section[..n] == self.buf[base..self.len] {
            return self.renew(expires_ms, keys);
        }
        (LeaseClaims { expires_ms, ..self.claims() })
            .mint_with(keys.signing(), stops)
            .unwrap_or_else(|| self.renew(expires_ms, keys))
    }

    /// The same payload text with the expiry's 16 characters re-encoded.
    fn resign(&self, expires_ms: u64, key: &Key) -> String {
        let mut groups = [0u8; EXPIRY_GROUPS.end - EXPIRY_GROUPS.start];
        groups.copy_from_slice(&self.buf[EXPIRY_GROUPS]);
        let at = EXPIRY_AT - EXPIRY_GROUPS.start;
        groups[at..at + 8].copy_from_slice(&expires_ms.to_le_bytes());
        sign(key, |token| {
            token.push_str(&self.text[..EXPIRY_TEXT.start]);
            push_b64::<16>(token, &groups);
            token.push_str(&self.text[EXPIRY_TEXT.end..]);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::new(vec![Key { kid: "s2".into(), secret: [2; 32] }, Key { kid: "s1".into(), secret: [1; 32] }])
            .unwrap()
    }

    fn claims() -> LeaseClaims<'static> {
        LeaseClaims {
            tenant: "acme",
            user: "alice",
            session: SessionId(0xdead_beef),
            started_ms: 1_700_000_000_123,
            expires_ms: 1_700_000_090_123,
            limit: 3,
            policy: Policy::EvictOldest,
            group: Some(("studio", 1)),
            device: Some("tv 1"),
            label: Some("Living room TV"),
            content: None,
            poll_secs: 30,
        }
    }

    #[test]
    fn round_trip_and_url_safe() {
        let token = claims().mint(ring().signing()).unwrap();
        assert!(token.starts_with("s1.s2."));
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        let lease = Lease::verify(&token, &ring(), 1_700_000_000_500).unwrap();
        assert_eq!(lease.claims(), claims());
    }

    #[test]
    fn verifies_with_any_configured_key_and_renews_with_the_signer() {
        let old = KeyRing::new(vec![Key { kid: "s1".into(), secret: [1; 32] }]).unwrap();
        let token = claims().mint(old.signing()).unwrap();
        let lease = Lease::verify(&token, &ring(), 1_700_000_000_500).unwrap();
        let renewed = lease.renew(1_700_000_200_000, &ring());
        assert!(renewed.starts_with("s1.s2."));
        let again = Lease::verify(&renewed, &ring(), 1_700_000_100_000).unwrap();
        assert_eq!(again.claims().expires_ms, 1_700_000_200_000);
        assert_eq!(LeaseClaims { expires_ms: claims().expires_ms, ..again.claims() }, claims());
        let unknown = KeyRing::new(vec![Key { kid: "s9".into(), secret: [1; 32] }]).unwrap();
        assert_eq!(Lease::verify(&token, &unknown, 0).unwrap_err(), InvalidToken("unknown key id"));
    }

    #[test]
    fn renewal_spells_the_token_a_fresh_mint_would() {
        let ring = ring();
        let long_label = "é".repeat(40);
        for c in [claims(), LeaseClaims { group: None, device: None, label: Some(&long_label), ..claims() }] {
            let token = c.mint(ring.signing()).unwrap();
            let lease = Lease::verify(&token, &ring, 0).unwrap();
            for expires_ms in [0, 1, 1_700_000_090_124, u64::MAX] {
                let fresh = LeaseClaims { expires_ms, ..c }.mint(ring.signing());
                assert_eq!(Some(lease.renew(expires_ms, &ring)), fresh);
            }
        }
    }

    #[test]
    fn a_full_token_still_fits_when_renewed_under_a_longer_key_id() {
        let short = Key { kid: "a".into(), secret: [1; 32] };
        let long = Key { kid: "k".repeat(MAX_KID_LEN).into(), secret: [2; 32] };
        let both = KeyRing::new(vec![long, short.clone()]).unwrap();
        let content = "c".repeat(255);
        let label = "l".repeat(255);
        let c = LeaseClaims { label: Some(&label), content: Some(&content), ..claims() };
        let token = c.mint(&short).unwrap();
        let renewed = Lease::verify(&token, &both, 0).unwrap().renew(1, &both);
        assert!(renewed.len() <= wire::MAX_TOKEN_LEN, "{} bytes", renewed.len());
        assert!(renewed.starts_with("s1.kkkk"));
        assert!(Lease::verify(&renewed, &both, 0).is_ok());

        // Tokens that use all the room a one-character key id leaves (no
        // version mints these with the short tag; earlier versions' are
        // legacy tokens, which shrink when renewed, see below): re-minted
        // with a shorter label, or, when the identifying fields alone are
        // too long, kept with their own key.
        let (tenant, user, device, label) = ("t".repeat(55), "u".repeat(128), "d".repeat(128), "l".repeat(50));
        let room_short = (wire::MAX_TOKEN_LEN - PREFIX.len() - 1 - 2 - TAG_B64_LEN) * 3 / 4;
        let room_long = (wire::MAX_TOKEN_LEN - PREFIX.len() - MAX_KID_LEN - 2 - TAG_B64_LEN) * 3 / 4;
        for (tenant, label, signer) in [("acme", Some(&*label), "kkkk"), (&*tenant, None, "a.")] {
            let c = LeaseClaims { tenant, user: &user, device: Some(&device), label, content: None, ..claims() };
            let mut buf = [0u8; MAX_PAYLOAD];
            let len = c.write_payload(&mut buf, &[None; MAX_CARRIED_STOPS]);
            assert!(room_long < len && len <= room_short, "{len}");
            let token = sign(&short, |t| B64.encode_string(&buf[..len], t));
            let lease = Lease::verify(&token, &both, 0).unwrap();
            let renewed = lease.renew(1, &both);
            assert!(renewed.len() <= wire::MAX_TOKEN_LEN, "{} bytes", renewed.len());
            assert!(renewed.starts_with(&format!("s1.{signer}")), "{renewed}");
            let again = Lease::verify(&renewed, &both, 0).unwrap();
            let again = again.claims();
            assert_eq!((again.tenant, again.user, again.device, again.expires_ms), (c.tenant, c.user, c.device, 1));
        }
    }

    /// A token as versions before the 16-byte tag signed it: the whole
    /// 32-byte keyed hash, 43 characters.
    fn legacy_sign(key: &Key, payload: &[u8]) -> String {
        let mut token = format!("{PREFIX}{}.", key.kid);
        B64.encode_string(payload, &mut token);
        let mac = blake3::keyed_hash(&key.secret, token.as_bytes());
        token.push('.');
        B64.encode_string(mac.as_bytes(), &mut token);
        token
    }

    fn legacy_token(c: &LeaseClaims, key: &Key) -> String {
        let mut buf = [0u8; MAX_PAYLOAD];
        let len = c.write_payload(&mut buf, &[None; MAX_CARRIED_STOPS]);
        legacy_sign(key, &buf[..len])
    }

    fn tag(token: &str) -> &str {
        token.rsplit_once('.').unwrap().1
    }

    #[test]
    fn a_new_tag_is_the_first_16_bytes_of_the_keyed_hash_in_22_characters() {
        let ring = ring();
        let token = claims().mint(ring.signing()).unwrap();
        let (signed, tag) = token.rsplit_once('.').unwrap();
        assert_eq!(tag.len(), 22);
        // What SECURITY.md tells other languages to check.
        let mac = blake3::keyed_hash(&ring.signing().secret, signed.as_bytes());
        assert_eq!(tag, B64.encode(&mac.as_bytes()[..16]));
        let renewed = Lease::verify(&token, &ring, 0).unwrap().renew(1, &ring);
        assert_eq!(self::tag(&renewed).len(), 22);
    }

    #[test]
    fn legacy_tokens_verify_and_renew_to_the_short_tag() {
        let ring = ring();
        // Signed by the older key, as a token held across the upgrade and a rotation.
        let old = ring.find("s1").unwrap();
        let token = legacy_token(&claims(), old);
        assert_eq!(tag(&token).len(), 43);
        let lease = Lease::verify(&token, &ring, 1_700_000_000_500).unwrap();
        assert_eq!(lease.claims(), claims());

        let renewed = lease.renew(1_700_000_200_000, &ring);
        assert_eq!(tag(&renewed).len(), 22);
        assert!(renewed.starts_with("s1.s2."));
        let want = LeaseClaims { expires_ms: 1_700_000_200_000, ..claims() };
        assert_eq!(Some(renewed.clone()), want.mint(ring.signing()));
        assert_eq!(Lease::verify(&renewed, &ring, 1_700_000_100_000).unwrap().claims(), want);

        // Tampered anywhere, the legacy token is refused.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(bytes).unwrap();
            assert!(Lease::verify(&t, &ring, 0).is_err(), "flip at {i}");
        }
        // Its tag under another key, or another key's tag, is refused.
        let foreign = legacy_token(&claims(), &Key { kid: "s1".into(), secret: [9; 32] });
        assert_eq!(Lease::verify(&foreign, &ring, 0).unwrap_err(), InvalidToken("token signature does not match"));
    }

    #[test]
    fn a_full_legacy_token_renews_whole_under_the_longest_key_id() {
        // The longest payload an earlier version signed under a one-character
        // key id: the 21 characters its tag gives back cover the key id's 15.
        let short = Key { kid: "a".into(), secret: [1; 32] };
        let long = Key { kid: "k".repeat(MAX_KID_LEN).into(), secret: [2; 32] };
        let both = KeyRing::new(vec![long, short.clone()]).unwrap();
        let legacy_room = (wire::MAX_TOKEN_LEN - PREFIX.len() - 1 - 2 - LEGACY_TAG_B64_LEN) * 3 / 4;
        let (user, device) = ("u".repeat(128), "d".repeat(128));
        let base = LeaseClaims { user: &user, device: Some(&device), label: None, ..claims() };
        let label = "l".repeat(legacy_room - base.payload_len() - 1);
        let c = LeaseClaims { label: Some(&label), ..base };
        let token = legacy_token(&c, &short);
        assert_eq!(c.payload_len(), legacy_room);
        assert!(token.len() <= wire::MAX_TOKEN_LEN && token.len() + 4 > wire::MAX_TOKEN_LEN, "{} bytes", token.len());
        let lease = Lease::verify(&token, &both, 0).unwrap();
        let renewed = lease.renew(1, &both);
        assert!(renewed.len() <= wire::MAX_TOKEN_LEN, "{} bytes", renewed.len());
        assert!(renewed.starts_with(&format!("s1.{}.", "k".repeat(MAX_KID_LEN))), "{renewed}");
        assert_eq!(tag(&renewed).len(), 22);
        // Nothing shortened: the same payload with the new expiry.
        assert_eq!(Lease::verify(&renewed, &both, 0).unwrap().claims(), LeaseClaims { expires_ms: 1, ..c });
    }

    #[test]
    fn tags_of_other_lengths_or_non_canonical_spellings_are_refused() {
        let ring = ring();
        let new = claims().mint(ring.signing()).unwrap();
        let legacy = legacy_token(&claims(), ring.signing());
        assert!(Lease::verify(&legacy, &ring, 0).is_ok());
        let signed = &new[..new.len() - 22];
        let full = tag(&legacy);
        for n in [0, 1, 16, 21, 23, 32, 42, 44, 64] {
            // The genuine tag's text, cut or padded to `n` characters.
            let text: String = full.chars().chain(std::iter::repeat('A')).take(n).collect();
            let t = format!("{signed}{text}");
            assert_eq!(Lease::verify(&t, &ring, 0).unwrap_err(), InvalidToken("malformed token"), "{n} characters");
        }

        // The last character carries unused low bits (4 in the 22-character
        // tag, 2 in the 43-character one): setting one spells the same bytes
        // to a lenient decoder, and must be refused like the decode did.
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        let lenient = GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::RequireNone)
                .with_decode_allow_trailing_bits(true),
        );
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for token in [&new, &legacy] {
            let (signed, tag) = token.rsplit_once('.').unwrap();
            let last = ALPHABET.iter().position(|&c| c == *tag.as_bytes().last().unwrap()).unwrap();
            let odd = format!("{}{}", &tag[..tag.len() - 1], ALPHABET[last | 1] as char);
            assert_eq!(lenient.decode(&odd).unwrap(), lenient.decode(tag).unwrap(), "{odd}");
            let t = format!("{signed}.{odd}");
            assert_eq!(Lease::verify(&t, &ring, 0).unwrap_err(), InvalidToken("token signature does not match"));
        }
    }

    #[test]
    fn every_other_character_anywhere_in_the_tag_is_refused() {
        let ring = ring();
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for token in [claims().mint(ring.signing()).unwrap(), legacy_token(&claims(), ring.signing())] {
            let at = token.rfind('.').unwrap() + 1;
            for i in at..token.len() {
                for &c in ALPHABET.iter().chain(b"=.+/!") {
                    let mut bytes = token.clone().into_bytes();
                    if bytes[i] == c {
                        continue;
                    }
                    bytes[i] = c;
                    let t = String::from_utf8(bytes).unwrap();
                    assert!(Lease::verify(&t, &ring, 0).is_err(), "{} at {i}", c as char);
                }
            }
        }
    }

    #[test]
    fn expiry_has_five_seconds_leeway() {
        let token = claims().mint(ring().signing()).unwrap();
        let exp = claims().expires_ms;
        assert!(Lease::verify(&token, &ring(), exp + 5_000).is_ok());
        assert_eq!(Lease::verify(&token, &ring(), exp + 5_001).unwrap_err(), InvalidToken("token has expired"));
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let token = claims().mint(ring().signing()).unwrap();
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(bytes).unwrap();
            assert!(Lease::verify(&t, &ring(), 0).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn long_fields_fit_in_512_bytes_by_shortening_display_text() {
        let content = "é".repeat(64);
        let label = "l".repeat(64);
        let device = "d".repeat(128);
        let c =
            LeaseClaims { user: "u", device: Some(&device), label: Some(&label), content: Some(&content), ..claims() };
        let token = c.mint(ring().signing()).unwrap();
        assert!(token.len() <= 512, "{}", token.len());
        let lease = Lease::verify(&token, &ring(), 0).unwrap();
        let got = lease.claims();
        assert_eq!(got.device, Some(device.as_str()));
        assert!(content.starts_with(got.content.unwrap_or("")));

        let user = "u".repeat(128);
        let group = "g".repeat(64);
        let tenant = "t".repeat(64);
        let huge = LeaseClaims { tenant: &tenant, user: &user, group: Some((&group, 1)), ..c };
        assert_eq!(huge.mint(ring().signing()), None);
    }

    #[test]
    fn display_text_is_shortened_only_past_the_room_the_longest_key_id_leaves() {
        let room = (wire::MAX_TOKEN_LEN - PREFIX.len() - MAX_KID_LEN - 2 - TAG_B64_LEN) * 3 / 4;
        let long = Key { kid: "k".repeat(MAX_KID_LEN).into(), secret: [2; 32] };
        let (user, device) = ("u".repeat(128), "d".repeat(128));
        let base = LeaseClaims { user: &user, device: Some(&device), label: None, ..claims() };
        for (extra, kept) in [(0, 0), (1, 1)] {
            let label = "l".repeat(room - base.payload_len() - 1 + extra);
            let token = LeaseClaims { label: Some(&label), ..base }.mint(&long).unwrap();
            assert!(token.len() <= wire::MAX_TOKEN_LEN, "{} bytes", token.len());
            let ring = KeyRing::new(vec![long.clone()]).unwrap();
            let got = Lease::verify(&token, &ring, 0).unwrap().claims().label.unwrap().len();
            assert_eq!(got, label.len() - kept, "label of {} bytes", label.len());
        }
    }

    #[test]
    fn garbage_is_refused() {
        let r = ring();
        for junk in ["", "s1.", "s1.s2..", "s1.s2.AAAA.AAAA", "g1.x.y", "s1.s2.!!.??", &"s".repeat(600)] {
            assert!(Lease::verify(junk, &r, 0).is_err(), "{junk:?}");
        }
        // A correctly signed payload that is not our layout.
        let key = r.signing();
        for payload in [&b""[..], &[0xffu8; 40], &[0u8; 31]] {
            let token = sign(key, |t| B64.encode_string(payload, t));
            assert_eq!(Lease::verify(&token, &r, 0).unwrap_err(), InvalidToken("malformed token"));
        }
    }

    fn stop(id: u64, reason: StopReason, by_session: bool) -> StopClaim<'static> {
        StopClaim {
            session: SessionId(id),
            reason,
            until_secs: 1_700_000_100,
            by_started_secs: 1_700_000_000 + id as u32,
            by_session: by_session.then_some((SessionId(0xabc), 1_700_000_090)),
            by_device: Some("tv-2"),
            by_label: Some("Bedroom TV"),
            by_content: None,
            by_group: Some("studio"),
        }
    }

    #[test]
    fn without_stops_a_token_is_the_same_bytes_and_renews_in_place() {
        let ring = ring();
        let token = claims().mint(ring.signing()).unwrap();
        assert_eq!(claims().mint_with(ring.signing(), &[]), Some(token.clone()));
        // Stops that do not travel are not written at all.
        let ended = StopClaim { reason: StopReason::Ended, ..stop(1, StopReason::Ended, false) };
        let exceeded = StopClaim { reason: StopReason::LimitExceeded, ..ended };
        assert_eq!(claims().mint_with(ring.signing(), &[ended, exceeded]), Some(token.clone()));
        let lease = Lease::verify(&token, &ring, 0).unwrap();
        assert!(!lease.has_stops() && lease.stops().next().is_none());
        let renewed = lease.renew_with(1_700_000_200_000, &[], &ring);
        assert_eq!(renewed, lease.renew(1_700_000_200_000, &ring));
        // Only the 16 characters of the expiry differ.
        let (a, b) = (token.as_bytes(), renewed.as_bytes());
        let at = PREFIX.len() + "s2.".len();
        assert_eq!(a.len(), b.len());
        assert!((0..a.len()).filter(|&i| a[i] != b[i]).all(|i| i >= at + 20 && i < at + 36 || i > a.len() - 23));
    }

    #[test]
    fn stops_round_trip_in_order_and_renew_in_place_while_unchanged() {
        let ring = ring();
        let stops = [
            stop(7, StopReason::Kicked, false),
            stop(8, StopReason::Evicted, true),
            stop(9, StopReason::Replaced, true),
        ];
        let token = claims().mint_with(ring.signing(), &stops).unwrap();
        let lease = Lease::verify(&token, &ring, 0).unwrap();
        assert_eq!(lease.claims(), claims(), "the session's own claims are untouched");
        assert!(lease.has_stops());
        assert_eq!(lease.stops().collect::<Vec<_>>(), stops);
        // The same stops: the in-place renewal, and what a fresh mint spells.
        let renewed = lease.renew_with(1_700_000_200_000, &stops, &ring);
        assert_eq!(renewed, lease.renew(1_700_000_200_000, &ring));
        let want = LeaseClaims { expires_ms: 1_700_000_200_000, ..claims() };
        assert_eq!(Some(renewed), want.mint_with(ring.signing(), &stops));
        // Other stops: minted afresh with them; none: back to the plain token.
        let fewer = lease.renew_with(1_700_000_200_000, &stops[1..], &ring);
        assert_eq!(Lease::verify(&fewer, &ring, 0).unwrap().stops().collect::<Vec<_>>(), stops[1..]);
        let none = lease.renew_with(1_700_000_200_000, &[], &ring);
        assert_eq!(Some(none), want.mint(ring.signing()));
        // At most MAX_CARRIED_STOPS, the first ones given.
        let many: Vec<StopClaim> = (1..=6).map(|i| stop(i, StopReason::Kicked, i % 2 == 0)).collect();
        let token = claims().mint_with(ring.signing(), &many).unwrap();
        let lease = Lease::verify(&token, &ring, 0).unwrap();
        assert_eq!(lease.stops().collect::<Vec<_>>(), many[..MAX_CARRIED_STOPS]);
        assert!(token.len() <= wire::MAX_TOKEN_LEN);
    }

    #[test]
    fn stops_use_only_the_room_the_session_leaves_shortening_by_then_dropping_the_oldest() {
        let long = Key { kid: "k".repeat(MAX_KID_LEN).into(), secret: [2; 32] };
        let ring = KeyRing::new(vec![long.clone()]).unwrap();
        let (user, device, label) = ("u".repeat(128), "d".repeat(100), "l".repeat(64));
        let big = "é".repeat(64);
        let rich = |id| StopClaim {
            by_label: Some("a label of thirty-two characters"),
            by_content: Some(&big),
            ..stop(id, StopReason::Replaced, true)
        };
        let stops = [rich(1), rich(2), rich(3), rich(4)];
        for label_len in [0, 20, 40, 64] {
            let own_label = Some(&label[..label_len]).filter(|l| !l.is_empty());
            let c = LeaseClaims { user: &user, device: Some(&device), label: own_label, ..claims() };
            assert!(c.payload_len() <= BUDGET);
            let token = c.mint_with(&long, &stops).unwrap();
            assert!(token.len() <= wire::MAX_TOKEN_LEN, "{} bytes", token.len());
            let lease = Lease::verify(&token, &ring, 0).unwrap();
            assert_eq!(lease.claims(), c, "the session's own fields are never shortened for stops");
            let got: Vec<StopClaim> = lease.stops().collect();
            let room = BUDGET - c.payload_len();
            assert_eq!(got.is_empty(), room < 1 + STOP_FIXED_LEN + BY_SESSION_LEN, "{room} bytes of room");
            assert!(got.len() >= (room - 1) / 60, "{} stops in {room} bytes", got.len());
            for (g, want) in got.iter().zip(&stops) {
                // What is kept is exact: ids, reason, times, by's session; texts are prefixes or gone.
                assert_eq!(
                    (g.session, g.reason, g.until_secs, g.by_started_secs, g.by_session),
                    (want.session, want.reason, want.until_secs, want.by_started_secs, want.by_session)
                );
                for (t, w) in [(g.by_label, want.by_label), (g.by_content, want.by_content)] {
                    assert!(t.is_none_or(|t| w.unwrap().starts_with(t)));
                }
                for (t, w) in [(g.by_device, want.by_device), (g.by_group, want.by_group)] {
                    assert!(t.is_none() || t == w, "device and group are whole or absent");
                }
            }
            // The most recent keep the most.
            let sizes: Vec<usize> = got.iter().map(|g| g.texts().iter().flatten().map(|t| t.len()).sum()).collect();
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            // Renewing with the same stops is the in-place renewal.
            assert_eq!(lease.renew_with(5, &stops, &ring), lease.renew(5, &ring));
        }
    }

    #[test]
    fn malformed_stop_sections_are_refused() {
        let r = ring();
        let key = r.signing();
        let mut buf = [0u8; MAX_PAYLOAD];
        let one = [Some(stop(7, StopReason::Kicked, true)), None, None, None];
        let len = claims().write_payload(&mut buf, &one);
        let good = buf[..len].to_vec();
        let signed = |p: &[u8]| sign(key, |t| B64.encode_string(p, t));
        assert!(Lease::verify(&signed(&good), &r, 0).is_ok());
        let stops_at = claims().payload_len();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // The flag without a section, a section without the flag.
        cases.push({
            let mut p = good[..stops_at].to_vec();
            p[0] |= HAS_STOPS;
            p
        });
        cases.push({
            let mut p = good.clone();
            p[0] &= !HAS_STOPS;
            p
        });
        // A count of 0 or over the bound, or more stops than the count.
        for n in [0u8, 2, MAX_CARRIED_STOPS as u8 + 1] {
            let mut p = good.clone();
            p[stops_at] = n;
            cases.push(p);
        }
        // Reason 3, bit 7, a text running past the end, a trailing byte, the top flag bit.
        for (at, v) in [(stops_at + 9, 3u8), (stops_at + 9, 0x80 | 0x04)] {
            let mut p = good.clone();
            p[at] = v;
            cases.push(p);
        }
        cases.push({
            let mut p = good.clone();
            let l = p.len();
            p[l - 1 - "studio".len()] = 200;
            p
        });
        cases.push({
            let mut p = good.clone();
            p.push(0);
            p
        });
        cases.push({
            let mut p = good.clone();
            p[0] |= 0x80;
            p
        });
        for p in cases {
            assert_eq!(Lease::verify(&signed(&p), &r, 0).unwrap_err(), InvalidToken("malformed token"), "{p:?}");
        }
    }
}
