//! The records the store holds for each user and the rules in
//! [`crate::policy`] rewrite: live [`Session`]s, the [`Tombstone`]s of
//! stopped ones, the [`SignOut`] of a user who signed out everywhere (each a
//! [`Slot`]), who stopped a session ([`By`]) and a session's optional text
//! ([`Info`]). Plain data and how it is shown to
//! players; no rule decides anything here.

use std::sync::Arc;

use crate::store::Expiry;
use crate::wire::{SessionId, SessionView, StopReason, unix_secs};

/// Optional text of a session; allocated only when a grant carries any.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub device: Option<Box<str>>,
    pub label: Option<Box<str>>,
    pub content: Option<Box<str>>,
    pub group: Option<Box<str>>,
}

impl Info {
    /// `None` when every field is absent, so plain sessions cost no allocation.
    pub fn new(
        device: Option<&str>,
        label: Option<&str>,
        content: Option<&str>,
        group: Option<&str>,
    ) -> Option<Arc<Info>> {
        if device.is_none() && label.is_none() && content.is_none() && group.is_none() {
            return None;
        }
        Some(Arc::new(Info {
            device: device.map(Into::into),
            label: label.map(Into::into),
            content: content.map(Into::into),
            group: group.map(Into::into),
        }))
    }
}

/// A live session (it stops counting once `now >= expires_ms`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub started_ms: u64,
    pub expires_ms: Expiry,
    pub info: Option<Arc<Info>>,
}

impl Session {
    pub fn group(&self) -> Option<&str> {
        self.info.as_ref().and_then(|i| i.group.as_deref())
    }

    pub fn device(&self) -> Option<&str> {
        self.info.as_ref().and_then(|i| i.device.as_deref())
    }

    /// Age order: earliest start first, ties broken by id so every node agrees.
    pub fn age(&self) -> (u64, SessionId) {
        (self.started_ms, self.id)
    }

    pub fn view(&self) -> SessionView {
        view(Some(self.id), self.started_ms, Some(self.expires_ms.get()), self.info.as_deref())
    }
}

fn view(id: Option<SessionId>, started_ms: u64, expires_ms: Option<u64>, info: Option<&Info>) -> SessionView {
    let text = |f: fn(&Info) -> &Option<Box<str>>| info.and_then(|i| f(i).as_deref()).map(String::from);
    SessionView {
        session_id: id,
        started_at: unix_secs(started_ms),
        expires_at: expires_ms.map(unix_secs),
        device: text(|i| &i.device),
        label: text(|i| &i.label),
        content: text(|i| &i.content),
        group: text(|i| &i.group),
    }
}

/// Who stopped a session: the `by` of a `410`. A kick comes from a grant
/// holder, who has no session id or expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct By {
    pub id: Option<SessionId>,
    pub started_ms: u64,
    pub expires_ms: Option<u64>,
    pub info: Option<Arc<Info>>,
}

impl By {
    pub fn session(s: &Session) -> Arc<By> {
        Arc::new(By {
            id: Some(s.id),
            started_ms: s.started_ms,
            expires_ms: Some(s.expires_ms.get()),
            info: s.info.clone(),
        })
    }

    pub fn view(&self) -> SessionView {
        view(self.id, self.started_ms, self.expires_ms, self.info.as_deref())
    }
}

/// A stopped session, kept until its last token would have expired so that
/// it answers `410` instead of being rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub id: SessionId,
    pub reason: StopReason,
    pub until_ms: u64,
    pub by: Option<Arc<By>>,
}

impl Tombstone {
    /// When the stop happened, to the second: `by`'s start (the kick, or
    /// the start that evicted or replaced it); 0 without `by`.
    pub fn stopped_secs(&self) -> u64 {
        self.by.as_ref().map_or(0, |b| unix_secs(b.started_ms))
    }
}

/// A sign-out everywhere: every session of the user that started before
/// `at_ms` is stopped (kicked by `by`), those this node does not hold
/// included, so none is rebuilt from its token. Kept until `until_ms`, the
/// last millisecond at which a token issued before the sign-out is accepted.
/// A user holds at most one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignOut {
    pub at_ms: u64,
    pub until_ms: u64,
    pub by: Arc<By>,
}

/// One record of a user: a live session, the tombstone of a stopped one, or
/// the user's sign-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Live(Session),
    Tombstone(Tombstone),
    SignedOut(SignOut),
}

/// One user's records, as the store holds them.
pub type Records = Box<[Slot]>;

impl Slot {
    /// The session the record is of; `None` for a sign-out.
    pub fn id(&self) -> Option<SessionId> {
        match self {
            Slot::Live(s) => Some(s.id),
            Slot::Tombstone(t) => Some(t.id),
            Slot::SignedOut(_) => None,
        }
    }

    /// Whether the record no longer counts at `now`: a session stops
    /// counting at its expiry; a tombstone or sign-out answers through
    /// `until_ms`, the last millisecond at which a token it answers for is
    /// still accepted.
    pub fn is_expired(&self, now: u64) -> bool {
        match self {
            Slot::Live(s) => s.expires_ms.get() <= now,
            Slot::Tombstone(t) => t.until_ms < now,
            Slot::SignedOut(m) => m.until_ms < now,
        }
    }
}
