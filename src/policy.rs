//! The rules of docs/spec.md §5–7 over one user's sessions, as pure functions:
//! admission (with `replace` and the three policies), heartbeat healing and
//! re-validation, stop and kick, and expiry. They take the current records
//! and `now` and return a [`Ruling`]: the records that should replace them
//! and the operation's outcome, so the store can run them inside one atomic
//! read-modify-write (and run them again if it loses a race) and pass the
//! outcome up unchanged. Nothing here does I/O, reads a clock or counts
//! metrics.
//!
//! Stops travel with the user (docs/spec.md §6): every outcome that leads
//! to a new lease token carries the user's recent stops ([`carried_stops`]),
//! and the stops a presented token carries are recorded first
//! ([`Beat::carried`], [`Stop::carried`]), so a node that lost them (a
//! restart, a move) learns them from the user's next session.

use std::cmp::Reverse;
use std::sync::Arc;

use crate::session::{By, Records, Session, SignOut, Slot, Tombstone};
use crate::token::StopClaim;
use crate::wire::{MAX_CARRIED_STOPS, MAX_RECORDS_PER_USER, Policy, SessionId, StopReason, TOKEN_LEEWAY_MS};

/// What a rule decided: the records that replace the user's (`None`: they
/// stay as they are) and the outcome the caller gets, unchanged.
pub type Ruling<T> = (Option<Records>, T);

/// One user's records being rewritten.
struct Working {
    slots: Vec<Slot>,
    /// Live sessions dropped because their time was up.
    expired: usize,
}

impl Working {
    /// A copy of `current` without what is due at `now`, with room for
    /// `extra` more records (so that the final boxing does not reallocate).
    fn new(current: &[Slot], now: u64, extra: usize) -> Working {
        let mut slots = Vec::with_capacity(current.len() + extra);
        let mut expired = 0;
        for s in current {
            if s.is_expired(now) {
                expired += usize::from(matches!(s, Slot::Live(_)));
            } else {
                slots.push(s.clone());
            }
        }
        Working { slots, expired }
    }

    /// Whether `more` records would exceed the per-user bound.
    fn full(&self, more: usize) -> bool {
        self.slots.len() + more > MAX_RECORDS_PER_USER
    }

    fn live(&self) -> impl Iterator<Item = &Session> {
        live_in(&self.slots)
    }

    /// The user's sign-out, if one is in force.
    fn sign_out(&self) -> Option<&SignOut> {
        self.slots.iter().find_map(|s| match s {
            Slot::SignedOut(m) => Some(m),
            _ => None,
        })
    }

    fn find(&self, id: SessionId) -> Option<usize> {
        self.slots.iter().position(|s| s.id() == Some(id))
    }

    fn stop_at(&mut self, i: usize, reason: StopReason, by: Option<Arc<By>>, now: u64) {
        if let Slot::Live(s) = &self.slots[i] {
            let until_ms = s.expires_ms.get().max(now) + TOKEN_LEEWAY_MS;
            self.slots[i] = Slot::Tombstone(Tombstone { id: s.id, reason, until_ms, by });
        }
    }

    /// Stops every live session the predicate picks; returns their ids.
    fn stop_where(
        &mut self,
        pick: impl Fn(&Session) -> bool,
        reason: StopReason,
        by: &Option<Arc<By>>,
        now: u64,
    ) -> Vec<SessionId> {
        let ids: Vec<SessionId> = self.live().filter(|s| pick(s)).map(|s| s.id).collect();
        for id in &ids {
            if let Some(i) = self.find(*id) {
                self.stop_at(i, reason, by.clone(), now);
            }
        }
        ids
    }

    fn count_units(&self, pick: impl Fn(&Session) -> bool, by_device: bool) -> usize {
        count_units(&self.slots, pick, by_device)
    }

    fn units(&self, pick: impl Fn(&Session) -> bool, by_device: bool) -> Vec<Vec<SessionId>> {
        units(&self.slots, pick, by_device)
    }

    /// Records the stops a presented token carries: a live session named
    /// is stopped with the stop's reason and `by`, an unknown one is
    /// remembered (never rebuilt), a tombstone keeps its first reason.
    /// A stop is taken until `grace` after it is due (see [`Beat::grace_ms`]);
    /// an unknown session only while the stop is not due, and not at the
    /// record bound.
    fn learn(&mut self, carried: &[Tombstone], now: u64, grace: u64) {
        for t in carried.iter().filter(|t| t.until_ms.saturating_add(grace) >= now && StopClaim::carries(t.reason)) {
            match self.find(t.id) {
                Some(i) => {
                    if let Slot::Live(_) = self.slots[i] {
                        self.stop_at(i, t.reason, t.by.clone(), now);
                        if let Slot::Tombstone(mine) = &mut self.slots[i] {
                            mine.until_ms = mine.until_ms.max(t.until_ms);
                        }
                    }
                }
                None if self.full(1) || t.until_ms < now => {}
                None => self.slots.push(Slot::Tombstone(t.clone())),
            }
        }
    }

    fn into_slots(self) -> Records {
        self.slots.into_boxed_slice()
    }
}

/// Whether recording `carried` may change `current`: some stop taken (see
/// `Working::learn`) names a session that is not a tombstone here.
fn would_learn(current: &[Slot], carried: &[Tombstone], now: u64, grace: u64) -> bool {
    carried.iter().any(|t| {
        t.until_ms.saturating_add(grace) >= now
            && StopClaim::carries(t.reason)
            && !current.iter().any(|s| matches!(s, Slot::Tombstone(m) if m.id == t.id && m.until_ms >= now))
    })
}

/// The user's stops its next lease token carries (docs/spec.md §3, §6):
/// tombstones of kicked, replaced and evicted sessions still remembered at
/// `now`, most recent first (by when they happened, to the second; then by
/// id), at most [`MAX_CARRIED_STOPS`]. Allocates only when there are any.
pub fn carried_stops(slots: &[Slot], now: u64) -> Vec<Tombstone> {
    let mut stops: Vec<Tombstone> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Tombstone(t) if StopClaim::carries(t.reason) && !s.is_expired(now) => Some(t.clone()),
            _ => None,
        })
        .collect();
    stops.sort_by_key(|t| (Reverse(t.stopped_secs()), t.id));
    stops.truncate(MAX_CARRIED_STOPS);
    stops
}

fn live_in(slots: &[Slot]) -> impl Iterator<Item = &Session> {
    slots.iter().filter_map(|s| match s {
        Slot::Live(s) => Some(s),
        Slot::Tombstone(_) | Slot::SignedOut(_) => None,
    })
}

/// How many units `units` would return, without allocating in the common
/// case (limits counted in sessions).
fn count_units(slots: &[Slot], pick: impl Fn(&Session) -> bool, by_device: bool) -> usize {
    if by_device { units(slots, pick, true).len() } else { live_in(slots).filter(|s| pick(s)).count() }
}

/// Live sessions that `pick` selects, grouped into the units a limit counts
/// (one per session, or one per device under `reject_new_device`), oldest
/// unit first.
fn units(slots: &[Slot], pick: impl Fn(&Session) -> bool, by_device: bool) -> Vec<Vec<SessionId>> {
    let mut live: Vec<&Session> = live_in(slots).filter(|s| pick(s)).collect();
    live.sort_by_key(|s| s.age());
    let mut units: Vec<(Option<&str>, Vec<SessionId>)> = Vec::with_capacity(live.len());
    for s in live {
        let device = if by_device { s.device() } else { None };
        match units.iter_mut().find(|(d, _)| device.is_some() && *d == device) {
            Some((_, ids)) => ids.push(s.id),
            None => units.push((device, vec![s.id])),
        }
    }
    units.into_iter().map(|(_, ids)| ids).collect()
}

fn in_group<'a>(group: Option<&'a str>) -> impl Fn(&Session) -> bool + 'a {
    move |s| group.is_some() && s.group() == group
}

/// The limits a grant or token imposes.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    pub limit: u32,
    pub policy: Policy,
    /// `(group, group_limit)`.
    pub group: Option<(&'a str, u32)>,
}

impl Limits<'_> {
    fn by_device(&self) -> bool {
        self.policy == Policy::RejectNewDevice
    }
}

/// A start to be judged.
#[derive(Debug)]
pub struct Admission<'a> {
    pub session: Session,
    pub limits: Limits<'a>,
    /// `?replace=`: stopped first, in the same step.
    pub replace: Option<SessionId>,
    /// How long to remember a replaced session this node never saw.
    pub unknown_until_ms: u64,
}

/// A start that was admitted.
#[derive(Debug)]
pub struct Admitted {
    /// Units counted against the limit after this start, the new one included.
    pub active: usize,
    /// Sessions stopped as `evicted` to make room, oldest first.
    pub evicted: Vec<SessionId>,
    /// Sessions stopped as `replaced` (by `?replace=` or the same device).
    pub replaced: usize,
    /// Live sessions dropped on the way because their time was up.
    pub expired: usize,
    /// The user's stops for the new token to carry ([`carried_stops`]).
    pub carry: Vec<Tombstone>,
}

/// Why a start was refused; nothing changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A `409`.
    Limit(Refused),
    /// The user holds `MAX_RECORDS_PER_USER` records.
    Full,
    /// The user's records already hold the new session's id (a stop or
    /// `?replace=` of an id this node had not issued yet): start again with
    /// another id. A user's records never hold an id twice.
    IdTaken,
}

/// A `409`: nothing changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// The group limit bound, not the user limit.
    pub group: bool,
    pub limit: u32,
    pub active: usize,
    /// The sessions the player may stop, oldest first.
    pub sessions: Vec<Session>,
}

/// docs/spec.md §5: one start, all or nothing.
pub fn admit(current: &[Slot], a: &Admission<'_>, now: u64) -> Ruling<Result<Admitted, Refusal>> {
    match judge_start(current, a, now) {
        Ok((slots, admitted)) => (Some(slots), Ok(admitted)),
        Err(refusal) => (None, Err(refusal)),
    }
}

fn judge_start(current: &[Slot], a: &Admission<'_>, now: u64) -> Result<(Records, Admitted), Refusal> {
    let mut w = Working::new(current, now, 1 + usize::from(a.replace.is_some()));
    if w.full(1 + usize::from(a.replace.is_some())) {
        return Err(Refusal::Full);
    }
    let new = &a.session;
    let by = Some(By::session(new));
    let mut replaced = 0;
    if let Some(id) = a.replace {
        match w.find(id) {
            Some(i) => {
                replaced += usize::from(matches!(w.slots[i], Slot::Live(_)));
                w.stop_at(i, StopReason::Replaced, by.clone(), now);
            }
            None => w.slots.push(Slot::Tombstone(Tombstone {
                id,
                reason: StopReason::Replaced,
                until_ms: a.unknown_until_ms,
                by: by.clone(),
            })),
        }
    }
    if w.find(new.id).is_some() {
        return Err(Refusal::IdTaken);
    }
    if a.limits.by_device() {
        let device = new.device();
        replaced += w.stop_where(|s| s.device() == device, StopReason::Replaced, &by, now).len();
    }

    let lim = a.limits;
    let group = lim.group.map(|g| g.0);
    let mut evicted = Vec::new();
    loop {
        let group_n = lim.group.map_or(0, |_| w.count_units(in_group(group), lim.by_device()));
        let all_n = w.count_units(|_| true, lim.by_device());
        let group_binds = lim.group.is_some_and(|(_, gl)| group_n + 1 > gl as usize);
        let limit_binds = all_n + 1 > lim.limit as usize;
        if !group_binds && !limit_binds {
            w.slots.push(Slot::Live(new.clone()));
            let carry = carried_stops(&w.slots, now);
            let admitted = Admitted { active: all_n + 1, expired: w.expired, replaced, evicted, carry };
            return Ok((w.into_slots(), admitted));
        }
        let group_only = !limit_binds;
        let scope = in_group(group);
        let in_scope = |s: &Session| !group_only || scope(s);
        if lim.policy != Policy::EvictOldest {
            let (limit, active) = if group_only { (lim.group.map_or(0, |g| g.1), group_n) } else { (lim.limit, all_n) };
            let mut sessions: Vec<Session> = w.live().filter(|s| in_scope(s)).cloned().collect();
            sessions.sort_by_key(|s| s.age());
            return Err(Refusal::Limit(Refused { group: group_only, limit, active, sessions }));
        }
        // Evict the oldest: of the group when the group limit binds.
        let scope_for_evict = |s: &Session| !group_binds || scope(s);
        let oldest = w.live().filter(|s| scope_for_evict(s)).min_by_key(|s| s.age()).map(|s| s.id);
        let Some(oldest) = oldest else { unreachable!("a binding limit implies a live session") };
        w.stop_where(|s| s.id == oldest, StopReason::Evicted, &by, now);
        evicted.push(oldest);
    }
}

/// A heartbeat to be judged, as its token describes it.
pub struct Beat<'a> {
    pub id: SessionId,
    /// The session as the token describes it; called only to rebuild it.
    pub rebuild: &'a dyn Fn() -> Session,
    pub limits: Limits<'a>,
    /// The presented token's expiry: a tombstone must outlive it.
    pub token_expires_ms: u64,
    /// New expiry if the session keeps playing; also a bound on the expiry
    /// of any token of this session issued so far.
    pub renew_to_ms: u64,
    /// The stops the presented token carries, recorded first.
    pub carried: Vec<Tombstone>,
}

impl Beat<'_> {
    /// How long after a carried stop is due it is still taken: one token
    /// lifetime of the caller. A stopped player that reached a node first
    /// was rebuilt and renewed there, past its old tokens' expiry; the
    /// user's other sessions reach the node within a poll of the same
    /// restart or move, and still stop it.
    pub fn grace_ms(&self, now: u64) -> u64 {
        self.renew_to_ms.saturating_sub(now)
    }
}

/// A heartbeat's outcome. `healed`: the session was rebuilt from its
/// token; `over_limit`: other sessions re-validation stopped as
/// `limit_exceeded`; `expired`: live sessions dropped on the way; `carry`:
/// the user's stops for the renewed token ([`carried_stops`]).
#[derive(Debug)]
pub enum BeatOutcome {
    /// Keep playing.
    Renewed { healed: bool, over_limit: Vec<SessionId>, expired: usize, carry: Vec<Tombstone> },
    /// Re-validation chose the caller: records changed, answer `410`.
    Lost { healed: bool, over_limit: Vec<SessionId>, expired: usize },
    /// The session's record is a tombstone: answer `410` with its reason;
    /// nothing changes.
    AlreadyStopped(Tombstone),
    /// Unknown here and the user is at `MAX_RECORDS_PER_USER`: retry later.
    Full,
}

/// The common heartbeat, recognised without copying anything: the session
/// is here and live, nothing of the user's is due at `now`, the token
/// carries no stop this node has not recorded, and both limits hold. Then
/// [`heartbeat`] would change only this session's expiry, to
/// `b.renew_to_ms`, which the store does in place ([`Expiry::renew`]).
/// `None`: the full rule has to run.
pub fn renewable<'s>(current: &'s [Slot], b: &Beat<'_>, now: u64) -> Option<&'s Session> {
    if !b.carried.is_empty() && would_learn(current, &b.carried, now, b.grace_ms(now)) {
        return None;
    }
    let mut me = None;
    for slot in current {
        if slot.is_expired(now) {
            return None;
        }
        if slot.id() == Some(b.id) && me.is_none() {
            me = Some(slot);
        }
    }
    let Some(Slot::Live(me)) = me else { return None };
    let lim = b.limits;
    let within_group = lim.group.is_none_or(|(group, group_limit)| {
        count_units(current, in_group(Some(group)), lim.by_device()) <= group_limit as usize
    });
    (within_group && count_units(current, |_| true, lim.by_device()) <= lim.limit as usize).then_some(me)
}

/// docs/spec.md §6: find or rebuild the session, re-validate the user's limits by
/// the caller's policy, renew.
pub fn heartbeat(current: &[Slot], b: &Beat<'_>, now: u64) -> Ruling<BeatOutcome> {
    let grace = b.grace_ms(now);
    let learns = would_learn(current, &b.carried, now, grace);
    if let Some(Slot::Tombstone(t)) = current.iter().find(|s| s.id() == Some(b.id) && !s.is_expired(now)) {
        let t = t.clone();
        if !learns {
            return (None, BeatOutcome::AlreadyStopped(t));
        }
        let mut w = Working::new(current, now, 0);
        w.learn(&b.carried, now, grace);
        return (Some(w.into_slots()), BeatOutcome::AlreadyStopped(t));
    }
    let mut w = Working::new(current, now, 0);
    if learns {
        w.learn(&b.carried, now, grace);
        // The token of another session named this one as stopped.
        if let Some(Slot::Tombstone(t)) = w.find(b.id).map(|i| &w.slots[i]) {
            let t = t.clone();
            return (Some(w.into_slots()), BeatOutcome::AlreadyStopped(t));
        }
    }
    let healed = match w.find(b.id) {
        Some(_) => false,
        None => {
            // Unknown here, or expired but within the token's leeway: rebuild,
            // unless the user signed out everywhere after it started.
            let rebuilt = (b.rebuild)();
            if let Some(m) = w.sign_out().filter(|m| rebuilt.started_ms < m.at_ms) {
                let by = Some(m.by.clone());
                let t = Tombstone { id: b.id, reason: StopReason::Kicked, until_ms: m.until_ms, by };
                return (learns.then(|| w.into_slots()), BeatOutcome::AlreadyStopped(t));
            }
            if w.full(1) {
                return (learns.then(|| w.into_slots()), BeatOutcome::Full);
            }
            w.slots.push(Slot::Live(rebuilt));
            true
        }
    };

    let lim = b.limits;
    let keep_earliest = lim.policy != Policy::EvictOldest;
    let mut over_limit = Vec::new();
    let mut enforce = |w: &mut Working, units: Vec<Vec<SessionId>>, limit: usize| {
        if units.len() > limit {
            let excess = units.len() - limit;
            let losers = if keep_earliest { &units[limit..] } else { &units[..excess] };
            let ids: Vec<SessionId> = losers.iter().flatten().copied().collect();
            w.stop_where(|s| ids.contains(&s.id), StopReason::LimitExceeded, &None, now);
            over_limit.extend(ids);
        }
    };
    if let Some((group, group_limit)) = lim.group
        && w.count_units(in_group(Some(group)), lim.by_device()) > group_limit as usize
    {
        let units = w.units(in_group(Some(group)), lim.by_device());
        enforce(&mut w, units, group_limit as usize);
    }
    if w.count_units(|_| true, lim.by_device()) > lim.limit as usize {
        let units = w.units(|_| true, lim.by_device());
        enforce(&mut w, units, lim.limit as usize);
    }

    let me = w.find(b.id);
    let expired = w.expired;
    match me.map(|i| &mut w.slots[i]) {
        Some(Slot::Live(s)) => {
            s.expires_ms.set(b.renew_to_ms);
            let carry = carried_stops(&w.slots, now);
            (Some(w.into_slots()), BeatOutcome::Renewed { healed, over_limit, expired, carry })
        }
        Some(Slot::Tombstone(t)) => {
            // Rebuilt from an old token, it may have newer ones: none can
            // expire after a token issued now would.
            t.until_ms = t.until_ms.max(b.token_expires_ms.max(b.renew_to_ms) + TOKEN_LEEWAY_MS);
            over_limit.retain(|id| *id != b.id);
            (Some(w.into_slots()), BeatOutcome::Lost { healed, over_limit, expired })
        }
        Some(Slot::SignedOut(_)) | None => unreachable!("the caller's session was inserted above"),
    }
}

/// A stop or kick of session `id`.
#[derive(Debug)]
pub struct Stop {
    pub id: SessionId,
    pub reason: StopReason,
    pub by: Option<Arc<By>>,
    /// Remember it at least this long: past the presented token's expiry.
    pub keep_until_ms: u64,
    /// How long to remember it if this node never saw it.
    pub unknown_until_ms: u64,
    /// The stops the presented lease token carries, recorded first (none
    /// for a kick: a grant carries none).
    pub carried: Vec<Tombstone>,
}

/// What a stop did; `expired`: live sessions dropped on the way.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// The live session is now a tombstone.
    Tombstoned { expired: usize },
    /// Unknown here: a tombstone now answers for it.
    Remembered { expired: usize },
    /// Its record already was a tombstone: nothing changed.
    AlreadyStopped,
    /// Unknown here and the user is at `MAX_RECORDS_PER_USER`: nothing changed.
    Full,
}

/// docs/spec.md §4 stop: idempotent; frees the slot at once.
pub fn stop(current: &[Slot], s: &Stop, now: u64) -> Ruling<StopOutcome> {
    let learns = would_learn(current, &s.carried, now, 0);
    // A tombstone already due counts as gone, as it would once swept.
    if let Some(Slot::Tombstone(_)) = current.iter().find(|slot| slot.id() == Some(s.id) && !slot.is_expired(now)) {
        if !learns {
            return (None, StopOutcome::AlreadyStopped);
        }
        let mut w = Working::new(current, now, 0);
        w.learn(&s.carried, now, 0);
        return (Some(w.into_slots()), StopOutcome::AlreadyStopped);
    }
    let mut w = Working::new(current, now, 1);
    w.learn(&s.carried, now, 0);
    match w.find(s.id) {
        Some(i) if matches!(w.slots[i], Slot::Tombstone(_)) => (Some(w.into_slots()), StopOutcome::AlreadyStopped),
        Some(i) => {
            w.stop_at(i, s.reason, s.by.clone(), now);
            if let Slot::Tombstone(t) = &mut w.slots[i] {
                t.until_ms = t.until_ms.max(s.keep_until_ms);
            }
            let expired = w.expired;
            (Some(w.into_slots()), StopOutcome::Tombstoned { expired })
        }
        None if w.full(1) => (None, StopOutcome::Full),
        None => {
            w.slots.push(Slot::Tombstone(Tombstone {
                id: s.id,
                reason: s.reason,
                until_ms: s.unknown_until_ms,
                by: s.by.clone(),
            }));
            let expired = w.expired;
            (Some(w.into_slots()), StopOutcome::Remembered { expired })
        }
    }
}

/// What a sign-out did: `stopped` live sessions are now tombstones;
/// `expired`: sessions found with their time up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SignedOut {
    pub stopped: usize,
    pub expired: usize,
}

/// docs/spec.md §4 sign out everywhere, in one step: every live session of the
/// user is kicked as a kick of each would (the same tombstones), and the
/// user's [`SignOut`] (replacing an earlier one) stops every session that
/// started before `now` and is not held here, when its heartbeat would
/// rebuild it, through `until_ms`. The sign-out is the one record a user may
/// hold beyond `MAX_RECORDS_PER_USER`: a user at the bound can still sign
/// out. Idempotent: a repeat stops nothing more.
pub fn sign_out(current: &[Slot], by: &Arc<By>, until_ms: u64, now: u64) -> Ruling<SignedOut> {
    let mut w = Working::new(current, now, 1);
    let mut stopped = 0;
    for i in 0..w.slots.len() {
        if matches!(w.slots[i], Slot::Live(_)) {
            w.stop_at(i, StopReason::Kicked, Some(by.clone()), now);
            stopped += 1;
        }
    }
    let mut mark = SignOut { at_ms: now, until_ms, by: by.clone() };
    if let Some(earlier) = w.sign_out() {
        // Should the clock step back, the later sign-out still covers as much.
        mark.at_ms = mark.at_ms.max(earlier.at_ms);
        mark.until_ms = mark.until_ms.max(earlier.until_ms);
        w.slots.retain(|s| !matches!(s, Slot::SignedOut(_)));
    }
    w.slots.push(Slot::SignedOut(mark));
    let expired = w.expired;
    (Some(w.into_slots()), SignedOut { stopped, expired })
}

/// Live sessions oldest first, and the units they count as under `policy`.
pub fn live(current: &[Slot], policy: Policy, now: u64) -> (usize, Vec<Session>) {
    let w = Working::new(current, now, 0);
    let active = w.units(|_| true, policy == Policy::RejectNewDevice).len();
    let mut sessions: Vec<Session> = w.live().cloned().collect();
    sessions.sort_by_key(|s| s.age());
    (active, sessions)
}

/// One user's records from two copies of the store (see `Store::sweep`):
/// every id of either, a stop winning over a live copy, else the later expiry.
pub fn merge(mine: &[Slot], theirs: &[Slot]) -> Records {
    let mut out: Vec<Slot> = mine.to_vec();
    for t in theirs {
        match out.iter_mut().find(|m| m.id() == t.id()) {
            None => out.push(t.clone()),
            Some(m) => {
                let take = match (&*m, t) {
                    (Slot::Live(_), Slot::Tombstone(_)) => true,
                    (Slot::Live(a), Slot::Live(b)) => b.expires_ms.get() > a.expires_ms.get(),
                    (Slot::Tombstone(a), Slot::Tombstone(b)) => b.until_ms > a.until_ms,
                    (Slot::SignedOut(a), Slot::SignedOut(b)) => b.at_ms > a.at_ms,
                    // The same id: never a sign-out beside a session's record.
                    _ => false,
                };
                if take {
                    *m = t.clone();
                }
            }
        }
    }
    out.into_boxed_slice()
}

/// Records left once everything due at `now` is dropped; `None` if none changed.
pub fn prune(current: &[Slot], now: u64) -> Option<(Records, usize)> {
    if !current.iter().any(|s| s.is_expired(now)) {
        return None;
    }
    let w = Working::new(current, now, 0);
    let expired = w.expired;
    Some((w.into_slots(), expired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Info;
    use crate::store::Expiry;
    use Policy::*;

    const T0: u64 = 1_700_000_000_000;
    const TTL: u64 = 90_000;

    fn session(id: u64, started_ms: u64) -> Session {
        Session { id: SessionId(id), started_ms, expires_ms: Expiry::new(started_ms + TTL), info: None }
    }

    fn with_info(mut s: Session, device: Option<&str>, group: Option<&str>) -> Session {
        s.info = Info::new(device, Some("label"), None, group);
        s
    }

    fn limits(limit: u32, policy: Policy) -> Limits<'static> {
        Limits { limit, policy, group: None }
    }

    /// An admitted start and the records after it.
    #[derive(Debug)]
    struct Started {
        slots: Records,
        admitted: Admitted,
    }

    impl std::ops::Deref for Started {
        type Target = Admitted;
        fn deref(&self) -> &Admitted {
            &self.admitted
        }
    }

    /// [`admit`], checking that the records change exactly when it admits.
    fn admitted(slots: &[Slot], a: &Admission<'_>, now: u64) -> Result<Started, Refusal> {
        match admit(slots, a, now) {
            (Some(slots), Ok(admitted)) => Ok(Started { slots, admitted }),
            (None, Err(refusal)) => Err(refusal),
            other => panic!("records and outcome disagree: {other:?}"),
        }
    }

    fn start(slots: &[Slot], s: Session, l: Limits<'_>, now: u64) -> Result<Started, Refused> {
        admitted(slots, &Admission { session: s, limits: l, replace: None, unknown_until_ms: now + TTL }, now).map_err(
            |r| match r {
                Refusal::Limit(r) => r,
                Refusal::Full | Refusal::IdTaken => panic!("unexpected {r:?}"),
            },
        )
    }

    fn beat(slots: &[Slot], s: Session, l: Limits<'_>, now: u64) -> Ruling<BeatOutcome> {
        let (id, token_expires_ms) = (s.id, s.expires_ms.get());
        let rebuild = move || s.clone();
        let b =
            Beat { id, rebuild: &rebuild, limits: l, token_expires_ms, renew_to_ms: now + TTL, carried: Vec::new() };
        heartbeat(slots, &b, now)
    }

    fn live_ids(slots: &[Slot], now: u64) -> Vec<u64> {
        live(slots, RejectNew, now).1.iter().map(|s| s.id.0).collect()
    }

    fn reason_of(slots: &[Slot], id: u64) -> Option<StopReason> {
        slots.iter().find_map(|s| match s {
            Slot::Tombstone(t) if t.id.0 == id => Some(t.reason),
            _ => None,
        })
    }

    /// Starts sessions 1..=n, one second apart, all admitted.
    fn started(n: u64, l: Limits<'_>) -> Box<[Slot]> {
        let mut slots: Box<[Slot]> = Box::new([]);
        for i in 1..=n {
            slots = start(&slots, session(i, T0 + i * 1000), l, T0 + i * 1000).unwrap().slots;
        }
        slots
    }

    #[test]
    fn reject_new_refuses_at_the_limit_and_changes_nothing() {
        let slots = started(2, limits(2, RejectNew));
        let refused = start(&slots, session(3, T0 + 5000), limits(2, RejectNew), T0 + 5000).unwrap_err();
        assert_eq!((refused.group, refused.limit, refused.active), (false, 2, 2));
        assert_eq!(refused.sessions.iter().map(|s| s.id.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(live_ids(&slots, T0 + 5000), [1, 2]);
    }

    #[test]
    fn evict_oldest_follows_the_ben_jason_sarah_jamie_story() {
        // Limit 3, evict_oldest: Ben, Jason and Sarah play; Jamie starts and
        // Ben, who started first, is evicted; Ben's next heartbeat gets 410.
        let l = limits(3, EvictOldest);
        let (ben, jason, sarah, jamie) = (1, 2, 3, 4);
        let slots = started(3, l);
        let a = start(&slots, session(jamie, T0 + 10_000), l, T0 + 10_000).unwrap();
        assert_eq!(a.evicted, [SessionId(ben)]);
        assert_eq!(a.active, 3);
        assert_eq!(live_ids(&a.slots, T0 + 10_000), [jason, sarah, jamie]);
        match beat(&a.slots, session(ben, T0 + 1000), l, T0 + 20_000) {
            (None, BeatOutcome::AlreadyStopped(t)) => {
                assert_eq!(t.reason, StopReason::Evicted);
                assert_eq!(t.by.unwrap().id, Some(SessionId(jamie)));
            }
            other => panic!("Ben must be told he was evicted: {other:?}"),
        }
    }

    #[test]
    fn group_limit_binds_inside_the_user_limit() {
        let g = Limits { limit: 3, policy: RejectNew, group: Some(("studio", 1)) };
        let in_studio = |id, t| with_info(session(id, t), None, Some("studio"));
        let a = start(&[], in_studio(1, T0), g, T0).unwrap();
        let refused = start(&a.slots, in_studio(2, T0 + 1), g, T0 + 1).unwrap_err();
        assert!(refused.group);
        assert_eq!((refused.limit, refused.active), (1, 1));
        // Other content still fits under the user limit.
        let b = start(&a.slots, session(3, T0 + 2), limits(3, RejectNew), T0 + 2).unwrap();
        assert_eq!(b.active, 2);
        // Under evict_oldest the oldest of the group goes, not the oldest overall.
        let e = Limits { policy: EvictOldest, ..g };
        let older = start(&[], session(9, T0 - 10), e, T0 - 10).unwrap();
        let one = start(&older.slots, in_studio(1, T0), e, T0).unwrap();
        let two = start(&one.slots, in_studio(2, T0 + 1), e, T0 + 1).unwrap();
        assert_eq!(two.evicted, [SessionId(1)]);
        assert_eq!(live_ids(&two.slots, T0 + 1), [9, 2]);
    }

    #[test]
    fn replace_stops_first_in_the_same_step() {
        let l = limits(2, RejectNew);
        let slots = started(2, l);
        let a = admitted(
            &slots,
            &Admission { session: session(3, T0 + 9000), limits: l, replace: Some(SessionId(1)), unknown_until_ms: 0 },
            T0 + 9000,
        )
        .unwrap();
        assert_eq!(live_ids(&a.slots, T0 + 9000), [2, 3]);
        assert_eq!(reason_of(&a.slots, 1), Some(StopReason::Replaced));
        // If the start is refused anyway, the replace does not happen either.
        let g = Limits { group: Some(("studio", 1)), ..limits(5, RejectNew) };
        let s1 = start(&[], with_info(session(1, T0), None, Some("studio")), g, T0).unwrap();
        let s2 = start(&s1.slots, session(2, T0 + 1), limits(5, RejectNew), T0 + 1).unwrap();
        let refused = admitted(
            &s2.slots,
            &Admission {
                session: with_info(session(3, T0 + 2), None, Some("studio")),
                limits: g,
                replace: Some(SessionId(2)),
                unknown_until_ms: 0,
            },
            T0 + 2,
        );
        assert!(refused.is_err());
    }

    #[test]
    fn reject_new_device_replaces_the_same_device_and_counts_devices() {
        let l = limits(2, RejectNewDevice);
        let on = |id, t, d| with_info(session(id, t), Some(d), None);
        let a = start(&[], on(1, T0, "tv"), l, T0).unwrap();
        let b = start(&a.slots, on(2, T0 + 1, "phone"), l, T0 + 1).unwrap();
        // The TV restarts: its orphan is replaced, still two devices.
        let c = start(&b.slots, on(3, T0 + 2, "tv"), l, T0 + 2).unwrap();
        assert_eq!(reason_of(&c.slots, 1), Some(StopReason::Replaced));
        assert_eq!(c.active, 2);
        let refused = start(&c.slots, on(4, T0 + 3, "laptop"), l, T0 + 3).unwrap_err();
        assert_eq!(refused.active, 2);
    }

    /// docs/spec.md §6, verbatim: limit 5, reject_new. Streams 1-5 play; all state is
    /// lost; stream 6 starts (admitted: nothing is known); streams 1-4
    /// heartbeat and are rebuilt (5 of 5); stream 5 heartbeats: 6 live > 5,
    /// the latest-started is stream 6, so stream 6 is stopped
    /// (limit_exceeded) and stream 5 gets 200; stream 6's next heartbeat gets
    /// 410.
    #[test]
    fn healing_after_total_loss_keeps_the_earliest_started() {
        let l = limits(5, RejectNew);
        let before_loss = started(5, l);
        assert_eq!(live_ids(&before_loss, T0 + 5000), [1, 2, 3, 4, 5]);

        let now = T0 + 20_000;
        let mut slots = start(&[], session(6, now), l, now).unwrap().slots;
        for i in 1..=4 {
            match beat(&slots, session(i, T0 + i * 1000), l, now + i) {
                (Some(s), BeatOutcome::Renewed { healed: true, over_limit, .. }) => {
                    assert!(over_limit.is_empty());
                    slots = s;
                }
                other => panic!("stream {i} must be rebuilt: {other:?}"),
            }
        }
        assert_eq!(live_ids(&slots, now + 10), [1, 2, 3, 4, 6]);
        match beat(&slots, session(5, T0 + 5000), l, now + 10) {
            (Some(s), BeatOutcome::Renewed { healed: true, over_limit, .. }) => {
                assert_eq!(over_limit, [SessionId(6)]);
                slots = s;
            }
            other => panic!("stream 5 must get 200: {other:?}"),
        }
        assert_eq!(live_ids(&slots, now + 10), [1, 2, 3, 4, 5]);
        match beat(&slots, session(6, now), l, now + 30_000) {
            (None, BeatOutcome::AlreadyStopped(t)) => {
                assert_eq!((t.reason, t.by), (StopReason::LimitExceeded, None))
            }
            other => panic!("stream 6 must get 410: {other:?}"),
        }
    }

    #[test]
    fn evict_oldest_heal_stops_the_oldest_and_the_caller_can_lose() {
        let l = limits(1, EvictOldest);
        let newer = start(&[], session(2, T0 + 1000), l, T0 + 1000).unwrap().slots;
        // Session 1 (older) heals onto a node that admitted 2: 1 loses.
        match beat(&newer, session(1, T0), l, T0 + 2000) {
            (Some(slots), BeatOutcome::Lost { healed: true, over_limit, .. }) => {
                assert!(over_limit.is_empty(), "only the caller lost");
                assert_eq!(live_ids(&slots, T0 + 2000), [2]);
                assert_eq!(reason_of(&slots, 1), Some(StopReason::LimitExceeded));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_frees_the_slot_exactly_at_the_ttl() {
        let l = limits(1, RejectNew);
        let slots = started(1, l);
        let expires = T0 + 1000 + TTL;
        assert!(start(&slots, session(2, expires - 1), l, expires - 1).is_err());
        let a = start(&slots, session(2, expires), l, expires).unwrap();
        assert_eq!(a.expired, 1);
        assert_eq!(live_ids(&a.slots, expires), [2]);
    }

    #[test]
    fn one_user_cannot_hold_more_than_the_record_bound() {
        let mut slots: Box<[Slot]> = Box::new([]);
        let kick = |id| Stop {
            id: SessionId(id),
            reason: StopReason::Kicked,
            by: None,
            keep_until_ms: 0,
            unknown_until_ms: T0 + TTL,
            carried: Vec::new(),
        };
        for id in 0..MAX_RECORDS_PER_USER as u64 {
            let (Some(s), StopOutcome::Remembered { .. }) = stop(&slots, &kick(id), T0) else { panic!("{id}") };
            slots = s;
        }
        assert!(matches!(stop(&slots, &kick(u64::MAX), T0), (None, StopOutcome::Full)));
        let a = Admission {
            session: session(u64::MAX, T0),
            limits: limits(5, RejectNew),
            replace: None,
            unknown_until_ms: 0,
        };
        assert_eq!(admitted(&slots, &a, T0).unwrap_err(), Refusal::Full);
        assert!(matches!(beat(&slots, session(u64::MAX - 1, T0), limits(5, RejectNew), T0), (None, BeatOutcome::Full)));
        // Once the tombstones are due, the user is served again.
        assert_eq!(admitted(&slots, &a, T0 + TTL).unwrap_err(), Refusal::Full, "still answering at until_ms");
        assert!(admitted(&slots, &a, T0 + TTL + 1).is_ok());
    }

    #[test]
    fn stop_is_idempotent_and_remembers_unknown_sessions() {
        let slots = started(1, limits(2, RejectNew));
        let stop_req = |id| Stop {
            id: SessionId(id),
            reason: StopReason::Ended,
            by: None,
            keep_until_ms: 0,
            unknown_until_ms: T0 + 500_000,
            carried: Vec::new(),
        };
        let (Some(slots), StopOutcome::Tombstoned { .. }) = stop(&slots, &stop_req(1), T0 + 2000) else { panic!() };
        assert!(matches!(stop(&slots, &stop_req(1), T0 + 3000), (None, StopOutcome::AlreadyStopped)));
        assert!(live_ids(&slots, T0 + 2000).is_empty());
        let (Some(slots), StopOutcome::Remembered { .. }) = stop(&slots, &stop_req(7), T0 + 3000) else { panic!() };
        // A stopped session is never rebuilt by its heartbeat.
        let beat7 = beat(&slots, session(7, T0), limits(2, RejectNew), T0 + 4000);
        assert!(matches!(beat7, (None, BeatOutcome::AlreadyStopped(_))));
        // Tombstones answer through their last millisecond, then go.
        assert_eq!(prune(&slots, T0 + 500_000).map(|(s, _)| s.len()), Some(1), "session 7 still answers");
        assert_eq!(prune(&slots, T0 + 500_001).map(|(s, _)| s.len()), Some(0));
    }

    fn kicker(now: u64) -> Arc<By> {
        Arc::new(By { id: None, started_ms: now, expires_ms: None, info: Info::new(Some("phone"), None, None, None) })
    }

    /// The records without the user's sign-out, and the sign-out.
    fn split_sign_out(slots: &[Slot]) -> (Vec<Slot>, Vec<SignOut>) {
        let marks = slots
            .iter()
            .filter_map(|s| match s {
                Slot::SignedOut(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        (slots.iter().filter(|s| !matches!(s, Slot::SignedOut(_))).cloned().collect(), marks)
    }

    #[test]
    fn sign_out_kicks_every_live_session_as_a_kick_of_each_would() {
        let l = limits(5, RejectNew);
        let now = T0 + 10_000;
        let until = now + 2 * TTL;
        let slots = started(3, l);
        let ended = Stop {
            id: SessionId(2),
            reason: StopReason::Ended,
            by: None,
            keep_until_ms: T0 + 200_000,
            unknown_until_ms: 0,
            carried: Vec::new(),
        };
        let slots = stop(&slots, &ended, T0 + 5000).0.unwrap();
        let by = kicker(now);
        let (after, out) = sign_out(&slots, &by, until, now);
        let after = after.expect("records changed");
        assert_eq!(out, SignedOut { stopped: 2, expired: 0 });
        // The same records as kicking sessions 1 and 3 one after the other,
        // and the sign-out.
        let mut kicked = slots.clone();
        for id in [1, 3] {
            let kick = Stop {
                id: SessionId(id),
                reason: StopReason::Kicked,
                by: Some(by.clone()),
                keep_until_ms: 0,
                unknown_until_ms: now + TTL,
                carried: Vec::new(),
            };
            kicked = stop(&kicked, &kick, now).0.unwrap();
        }
        let (records, marks) = split_sign_out(&after);
        assert_eq!(records, kicked.to_vec());
        assert_eq!(marks, [SignOut { at_ms: now, until_ms: until, by: by.clone() }]);
        assert!(live_ids(&after, now).is_empty());
        assert_eq!(reason_of(&after, 2), Some(StopReason::Ended), "a stopped session keeps its first reason");
        for id in [1, 3] {
            match beat(&after, session(id, T0 + id * 1000), l, now + 1) {
                (None, BeatOutcome::AlreadyStopped(t)) => {
                    assert_eq!(t.reason, StopReason::Kicked);
                    assert_eq!(t.by.as_deref(), Some(&*by));
                    assert_eq!(t.until_ms, T0 + id * 1000 + TTL + TOKEN_LEEWAY_MS, "until its expiry plus the leeway");
                }
                other => panic!("session {id} must stay stopped: {other:?}"),
            }
        }
        // Idempotent: nothing more to stop; one sign-out is held, the later.
        let (again, out) = sign_out(&after, &kicker(now + 1), until + 1, now + 1);
        assert_eq!(out, SignedOut::default());
        let (records, marks) = split_sign_out(&again.unwrap());
        assert_eq!(records, kicked.to_vec());
        assert_eq!(marks.iter().map(|m| (m.at_ms, m.until_ms)).collect::<Vec<_>>(), [(now + 1, until + 1)]);
        // The slots are free at once, for sessions started since.
        let a = start(&after, session(4, now + 2), limits(1, RejectNew), now + 2).unwrap();
        assert!(matches!(beat(&a.slots, session(4, now + 2), l, now + 3), (_, BeatOutcome::Renewed { .. })));
    }

    #[test]
    fn sign_out_stops_sessions_not_held_here_when_they_would_be_rebuilt() {
        let l = limits(5, RejectNew);
        // Session 1 lapsed 2 s ago (its token is within its leeway) and is
        // dropped; session 2 lives on another node (or before a restart).
        let one = start(&[], session(1, T0), l, T0).unwrap().slots;
        let now = T0 + TTL + 2000;
        let until = now + TTL + TOKEN_LEEWAY_MS;
        let by = kicker(now);
        let (after, out) = sign_out(&one, &by, until, now);
        let after = after.unwrap();
        assert_eq!(out, SignedOut { stopped: 0, expired: 1 });
        assert_eq!(after.len(), 1, "only the sign-out is held");
        for (id, started_ms) in [(1, T0), (2, now - 1)] {
            match beat(&after, session(id, started_ms), l, now + 1) {
                (None, BeatOutcome::AlreadyStopped(t)) => {
                    assert_eq!((t.id, t.reason, t.until_ms), (SessionId(id), StopReason::Kicked, until));
                    assert_eq!(t.by.as_deref(), Some(&*by));
                }
                other => panic!("session {id} started before the sign-out: {other:?}"),
            }
        }
        // A session started since (elsewhere) is rebuilt as usual.
        assert!(matches!(
            beat(&after, session(3, now), l, now + 1),
            (Some(_), BeatOutcome::Renewed { healed: true, .. })
        ));
        // Once no token from before the sign-out can be accepted, it is dropped.
        assert_eq!(prune(&after, until).map(|(s, _)| s.len()), None, "still in force at until_ms");
        assert_eq!(prune(&after, until + 1).map(|(s, _)| s.len()), Some(0));
        // It survives the merge of two copies of the store, the later winning.
        let (later, _) = sign_out(&[], &kicker(now + 5), until + 5, now + 5);
        let merged = merge(&after, &later.unwrap());
        assert_eq!(split_sign_out(&merged).1.iter().map(|m| m.at_ms).collect::<Vec<_>>(), [now + 5]);
    }

    #[test]
    fn a_user_at_the_record_bound_can_still_sign_out() {
        let mut slots: Vec<Slot> = (0..MAX_RECORDS_PER_USER as u64 - 1)
            .map(|id| {
                let until_ms = T0 + TTL;
                Slot::Tombstone(Tombstone { id: SessionId(id), reason: StopReason::Ended, until_ms, by: None })
            })
            .collect();
        slots.push(Slot::Live(session(u64::MAX, T0)));
        let (after, out) = sign_out(&slots, &kicker(T0 + 1), T0 + TTL, T0 + 1);
        assert_eq!(out, SignedOut { stopped: 1, expired: 0 });
        assert_eq!(after.unwrap().len(), MAX_RECORDS_PER_USER + 1);
    }

    #[test]
    fn renewable_is_exactly_a_heartbeat_that_only_renews() {
        // Every combination of three records, limits, policies and groups:
        // the in-place path must take a heartbeat if and only if the full
        // rule would change nothing but the caller's expiry.
        let now = T0 + 10_000;
        let variant = |id: u64, v: usize| -> Option<Slot> {
            let s = |start: u64, device, group| with_info(session(id, start), device, group);
            Some(match v {
                0 => return None,
                1 => Slot::Live(session(id, T0 + id)),
                2 => Slot::Live(s(T0 + id, Some("tv"), Some("g"))),
                3 => Slot::Live(s(T0 + 10 * id, Some("phone"), None)),
                4 => Slot::Live(Session { expires_ms: now.into(), ..session(id, T0) }),
                5 => Slot::Tombstone(Tombstone {
                    id: SessionId(id),
                    reason: StopReason::Kicked,
                    until_ms: now,
                    by: None,
                }),
                _ => Slot::Tombstone(Tombstone {
                    id: SessionId(id),
                    reason: StopReason::Ended,
                    until_ms: now - 1,
                    by: None,
                }),
            })
        };
        let (mut cases, mut renewable_cases) = (0, 0);
        for code in 0..7 * 7 * 7 {
            let slots: Vec<Slot> = (0..3).filter_map(|i| variant(i as u64 + 1, code / 7usize.pow(i) % 7)).collect();
            for policy in [RejectNew, EvictOldest, RejectNewDevice] {
                for limit in 0..=3 {
                    for group in [None, Some(("g", 0)), Some(("g", 1)), Some(("g", 2))] {
                        cases += 1;
                        let l = Limits { limit, policy, group };
                        let rebuild = || session(1, T0);
                        let b = Beat {
                            id: SessionId(1),
                            rebuild: &rebuild,
                            limits: l,
                            token_expires_ms: now + TTL,
                            renew_to_ms: now + TTL,
                            carried: Vec::new(),
                        };
                        let only_renewed = match heartbeat(&slots, &b, now) {
                            (Some(after), BeatOutcome::Renewed { healed: false, over_limit, expired: 0, .. })
                                if over_limit.is_empty() =>
                            {
                                let mut want = slots.clone();
                                for slot in &mut want {
                                    if let Slot::Live(s) = slot
                                        && s.id == b.id
                                    {
                                        s.expires_ms.set(b.renew_to_ms);
                                    }
                                }
                                *after == want[..]
                            }
                            _ => false,
                        };
                        let fast = renewable(&slots, &b, now);
                        assert_eq!(fast.is_some(), only_renewed, "{slots:?} {l:?}");
                        assert!(fast.is_none_or(|me| me.id == b.id));
                        renewable_cases += usize::from(only_renewed);
                    }
                }
            }
        }
        assert!(renewable_cases > cases / 20, "{renewable_cases} of {cases}");
    }

    #[test]
    fn a_start_never_puts_an_id_twice_in_the_records() {
        // An id can be remembered before it is issued (a kick or replace of
        // an unknown id); a start that draws it is refused, so the caller
        // tries another, and the records never hold an id twice.
        let kicked =
            Slot::Tombstone(Tombstone { id: SessionId(7), reason: StopReason::Kicked, until_ms: T0 + TTL, by: None });
        for policy in [RejectNew, EvictOldest, RejectNewDevice] {
            for held in [vec![kicked.clone()], vec![Slot::Live(session(7, T0))]] {
                let got = admitted(
                    &held,
                    &Admission {
                        session: session(7, T0 + 1),
                        limits: limits(1, policy),
                        replace: None,
                        unknown_until_ms: T0,
                    },
                    T0 + 1,
                );
                assert_eq!(got.unwrap_err(), Refusal::IdTaken, "{policy:?} {held:?}");
            }
            let replacing_itself = Admission {
                session: session(8, T0 + 1),
                limits: limits(1, policy),
                replace: Some(SessionId(8)),
                unknown_until_ms: T0 + TTL,
            };
            assert_eq!(admitted(&[], &replacing_itself, T0 + 1).unwrap_err(), Refusal::IdTaken);
        }
        // Were an id ever held twice, the in-place path would agree with the
        // full rule: the first record with the id decides.
        let twice = [kicked.clone(), Slot::Live(session(7, T0))];
        let rebuild = || session(7, T0);
        let b = Beat {
            id: SessionId(7),
            rebuild: &rebuild,
            limits: limits(2, RejectNew),
            token_expires_ms: T0 + TTL,
            renew_to_ms: T0 + TTL,
            carried: Vec::new(),
        };
        assert!(matches!(heartbeat(&twice, &b, T0 + 1), (None, BeatOutcome::AlreadyStopped(_))));
        assert!(renewable(&twice, &b, T0 + 1).is_none());
    }

    /// A kick by a grant at `at` ms, remembered until `until`.
    fn kicked(id: u64, at: u64, until: u64) -> Tombstone {
        let by = By { id: None, started_ms: at, expires_ms: None, info: Info::new(Some("tv"), Some("TV"), None, None) };
        Tombstone { id: SessionId(id), reason: StopReason::Kicked, until_ms: until, by: Some(Arc::new(by)) }
    }

    /// A heartbeat of `s` whose token carries `carried`.
    fn beat_carrying(
        slots: &[Slot],
        s: Session,
        carried: Vec<Tombstone>,
        l: Limits<'_>,
        now: u64,
    ) -> Ruling<BeatOutcome> {
        let (id, token_expires_ms) = (s.id, s.expires_ms.get());
        let rebuild = move || s.clone();
        let b = Beat { id, rebuild: &rebuild, limits: l, token_expires_ms, renew_to_ms: now + TTL, carried };
        heartbeat(slots, &b, now)
    }

    fn carry_of(outcome: &BeatOutcome) -> Vec<u64> {
        match outcome {
            BeatOutcome::Renewed { carry, .. } => carry.iter().map(|t| t.id.0).collect(),
            other => panic!("not renewed: {other:?}"),
        }
    }

    #[test]
    fn carried_stops_are_the_most_recent_few_kicks_replaces_and_evictions_until_due() {
        let l = limits(8, EvictOldest);
        let mut slots = started(2, l).to_vec();
        // Stops one second apart, ids out of order; and stops that travel not.
        for (id, at) in [(20, 3), (21, 1), (22, 5), (23, 2), (24, 4)] {
            slots.push(Slot::Tombstone(kicked(id, T0 + at * 1000, T0 + 60_000 + at)));
        }
        for reason in [StopReason::Ended, StopReason::LimitExceeded] {
            slots.push(Slot::Tombstone(Tombstone { reason, ..kicked(30 + reason as u64, T0 + 9000, T0 + 60_000) }));
        }
        let ids = |slots: &[Slot], now| carried_stops(slots, now).iter().map(|t| t.id.0).collect::<Vec<_>>();
        assert_eq!(ids(&slots, T0 + 10_000), [22, 24, 20, 23], "most recent first, at most {MAX_CARRIED_STOPS}");
        // Within one second, by id; the oldest is left out.
        slots.push(Slot::Tombstone(kicked(19, T0 + 5_999, T0 + 60_000)));
        assert_eq!(ids(&slots, T0 + 10_000), [19, 22, 24, 20]);
        // A stop is carried through its last millisecond, then dropped.
        assert_eq!(ids(&slots, T0 + 60_004), [22, 24]);
        assert_eq!(ids(&slots, T0 + 60_005), [22]);
        assert!(ids(&slots, T0 + 60_006).is_empty());
        // A start and a heartbeat hand out the user's stops, this start's eviction included.
        let e = limits(2, EvictOldest);
        let a = start(&started(2, e), session(3, T0 + 7000), e, T0 + 7000).unwrap();
        assert_eq!(a.carry.iter().map(|t| (t.id.0, t.reason)).collect::<Vec<_>>(), [(1, StopReason::Evicted)]);
        let (_, outcome) = beat(&a.slots, session(2, T0 + 2000), e, T0 + 8000);
        assert_eq!(carry_of(&outcome), [1]);
    }

    /// The scenario after a restart, on one node: A and B (limit
    /// 2), B kicked, C started; the node forgets; then A's and C's tokens
    /// carry B's kick.
    #[test]
    fn a_kick_survives_a_restart_in_either_order() {
        let l = limits(2, RejectNew);
        let (a, b, c) = (session(1, T0), session(2, T0 + 1000), session(3, T0 + 3000));
        let kick = kicked(2, T0 + 2000, T0 + 2000 + TTL + TOKEN_LEEWAY_MS);
        let now = T0 + 10_000;

        // The kicker's sessions first: B is remembered, never rebuilt.
        let (Some(s1), out) = beat_carrying(&[], a.clone(), vec![kick.clone()], l, now) else { panic!() };
        assert_eq!(carry_of(&out), [2], "the renewed token carries the kick on");
        let (Some(s2), _) = beat_carrying(&s1, c.clone(), vec![kick.clone()], l, now + 1) else { panic!() };
        match beat(&s2, b.clone(), l, now + 2) {
            (None, BeatOutcome::AlreadyStopped(t)) => {
                assert_eq!(t.reason, StopReason::Kicked);
                assert_eq!(t.by.as_ref().unwrap().view().label.as_deref(), Some("TV"));
            }
            other => panic!("B must get 410 kicked: {other:?}"),
        }
        assert_eq!(live_ids(&s2, now + 2), [1, 3]);

        // B first: rebuilt; the first token that names it stops it as kicked, not C.
        let (Some(s1), _) = beat(&[], b.clone(), l, now) else { panic!() };
        assert_eq!(live_ids(&s1, now), [2]);
        let (Some(s2), out) = beat_carrying(&s1, c.clone(), vec![kick.clone()], l, now + 1) else { panic!() };
        assert_eq!(carry_of(&out), [2]);
        assert_eq!(live_ids(&s2, now + 1), [3]);
        let (Some(s3), out) = beat_carrying(&s2, a.clone(), vec![kick.clone()], l, now + 2) else { panic!() };
        assert!(matches!(out, BeatOutcome::Renewed { ref over_limit, .. } if over_limit.is_empty()));
        assert_eq!(live_ids(&s3, now + 2), [1, 3]);
        assert!(
            matches!(beat(&s3, b, l, now + 3), (None, BeatOutcome::AlreadyStopped(t)) if t.reason == StopReason::Kicked)
        );
    }

    #[test]
    fn a_carried_stop_never_replaces_a_reason_and_is_ignored_once_due() {
        let l = limits(3, RejectNew);
        let slots = started(2, l);
        let rebuild = || session(9, T0);
        let mut b = Beat {
            id: SessionId(1),
            rebuild: &rebuild,
            limits: l,
            token_expires_ms: T0 + TTL,
            renew_to_ms: T0 + 5000 + TTL,
            carried: vec![kicked(2, T0 + 2500, T0 + 4999 - TTL)],
        };
        // Due a token lifetime ago: nothing learned, and the heartbeat stays in place.
        assert!(renewable(&slots, &b, T0 + 5000).is_some());
        assert!(matches!(heartbeat(&slots, &b, T0 + 5000), (Some(s), _) if live_ids(&s, T0 + 5000) == [1, 2]));
        // Due, but within one of the caller's token lifetimes: the live
        // session (rebuilt and renewed here, say) is still stopped; an
        // unknown one is not remembered (its old tokens are all expired).
        b.carried = vec![kicked(2, T0 + 2500, T0 + 4999), kicked(8, T0 + 2500, T0 + 4999)];
        assert!(renewable(&slots, &b, T0 + 5000).is_none());
        let (Some(s), _) = heartbeat(&slots, &b, T0 + 5000) else { panic!() };
        assert_eq!(
            (reason_of(&s, 2), s.iter().any(|x| x.id() == Some(SessionId(8)))),
            (Some(StopReason::Kicked), false)
        );
        b.carried.truncate(1);
        // Not due: learned, so not a renewal in place.
        b.carried[0].until_ms = T0 + 50_000;
        assert!(renewable(&slots, &b, T0 + 5000).is_none());
        let (Some(s), _) = heartbeat(&slots, &b, T0 + 5000) else { panic!() };
        assert_eq!(reason_of(&s, 2), Some(StopReason::Kicked));
        // Once recorded, the same token renews in place again.
        assert!(renewable(&s, &b, T0 + 5001).is_some());
        // A session already stopped keeps its first reason.
        b.carried = vec![Tombstone { reason: StopReason::Evicted, ..kicked(2, T0 + 2600, T0 + 50_000) }];
        let (Some(after), out) = heartbeat(&s, &b, T0 + 5002) else { panic!() };
        assert_eq!(reason_of(&after, 2), Some(StopReason::Kicked));
        assert!(matches!(out, BeatOutcome::Renewed { .. }));
        // A stop with its own token teaches too.
        let own = Stop {
            id: SessionId(1),
            reason: StopReason::Ended,
            by: None,
            keep_until_ms: 0,
            unknown_until_ms: T0 + TTL,
            carried: vec![kicked(7, T0 + 2500, T0 + 50_000)],
        };
        let (Some(s), StopOutcome::Tombstoned { .. }) = stop(&slots, &own, T0 + 5000) else { panic!() };
        assert_eq!((reason_of(&s, 1), reason_of(&s, 7)), (Some(StopReason::Ended), Some(StopReason::Kicked)));
    }
}
