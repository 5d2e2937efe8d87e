//! The session store: every user's records in one lock-free papaya map,
//! keyed by a fixed-size hash of (tenant, user). Each operation on a user is
//! one atomic read-modify-write (`compute`) that runs a pure rule from
//! [`crate::policy`], so two concurrent starts can never both take the last
//! slot. The closure may run more than once under contention: it only
//! computes, and counters are bumped from the final result.
//!
//! The one exception is the common heartbeat, which changes nothing but its
//! session's expiry ([`policy::renewable`]): that is renewed in place with a
//! compare-and-swap on the stored record, without copying the user's
//! records (or allocating, unless the limit counts devices). Every `compute`
//! first freezes the expiries of the records it copies ([`Expiry`]), so an
//! in-place renewal either lands before the copy (and is copied) or fails
//! on the frozen record and takes the `compute` path: none is lost.
//!
//! The store starts its own sweeper ([`Store::spawn_sweeper`]).

use std::hash::Hasher;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use papaya::{Compute, Guard, HashMap, Operation, ResizeMode};
use siphasher::sip128::{Hasher128, SipHasher24};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::policy::{self, Admission, Admitted, Beat, BeatOutcome, Refusal, Ruling, SignedOut, Stop, StopOutcome};
use crate::session::{By, Records, Session, Slot, Tombstone};
use crate::sweeper::{self, FreedHook};
use crate::wire::Policy;

/// 128 bits of SipHash-2-4 over (tenant, user), under a random per-process
/// key: a keyed 128-bit PRF, so nobody can aim two names at one key (without
/// the key, a collision takes ~2^64 tries), and the key is fixed-size
/// whatever the names' lengths. SipHash is made for exactly this job (keys
/// of a hash table that attackers name) and costs a quarter of a keyed
/// BLAKE3 call on names this short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserKey(u128);

type Map = HashMap<UserKey, Records, ahash::RandomState>;

/// papaya never shrinks its table on removals, so once a large map has
/// emptied, the sweeper swaps in a fresh one (see [`Store::sweep`]).
const COMPACT_AFTER_USERS: usize = 4096;
/// Users swept between two pauses of a paced sweep (~50 µs of work).
pub const SWEEP_CHUNK: usize = 512;
/// How long a retired map is kept before what was written to it during the
/// swap is merged into the current one: far longer than any store operation.
const RETIRE_GRACE_MS: u64 = 1000;

pub struct Store {
    /// Swapped only by the sweeper, when empty; requests read it lock-free.
    map: ArcSwap<Map>,
    /// A map swapped out by the sweeper, and when, until its grace is over.
    retired: Mutex<Option<(Arc<Map>, u64)>>,
    /// Most users the current map has held.
    peak_users: AtomicUsize,
    capacity: usize,
    /// Records held (live, expired-but-unswept and tombstones): the capacity bound.
    records: AtomicI64,
    /// Every session admitted or renewed so far expires by then (Unix ms,
    /// rounded up to a second): see [`Store::sessions_expire_by`].
    expire_by: AtomicU64,
    user_hasher: SipHasher24,
}

/// What one sweep found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub users: usize,
    pub live: usize,
    pub records: usize,
    /// Live sessions that expired and were removed.
    pub expired: usize,
    /// An emptied map swapped out by an earlier pass was let go in this one:
    /// its table has just been freed.
    pub released_map: bool,
}

impl Store {
    /// A store sized for `capacity` users; `hash_key` keys the user hash.
    pub fn new(capacity: usize, hash_key: [u8; 16]) -> Store {
        Store {
            map: ArcSwap::from_pointee(new_map(capacity)),
            retired: Mutex::new(None),
            peak_users: AtomicUsize::new(0),
            capacity,
            records: AtomicI64::new(0),
            expire_by: AtomicU64::new(0),
            user_hasher: SipHasher24::new_with_key(&hash_key),
        }
    }

    pub fn user_key(&self, tenant: &str, user: &str) -> UserKey {
        // Tenant ids never contain a NUL, so the split is unambiguous. Names
        // within the wire limits hash in one call from the stack.
        let mut buf = [0u8; 256];
        let len = tenant.len() + 1 + user.len();
        let hash = match buf.get_mut(..len) {
            Some(out) => {
                out[..tenant.len()].copy_from_slice(tenant.as_bytes());
                out[tenant.len() + 1..].copy_from_slice(user.as_bytes());
                self.user_hasher.hash(out)
            }
            None => {
                let mut h = self.user_hasher;
                h.write(tenant.as_bytes());
                h.write(&[0]);
                h.write(user.as_bytes());
                h.finish128()
            }
        };
        UserKey(hash.as_u128())
    }

    /// Records held now (live sessions, unswept expired ones and tombstones).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed).max(0) as u64
    }

    /// When every live session held now will have expired, to the second
    /// (Unix ms; 0 before the first start): the latest expiry any start or
    /// heartbeat has asked for. It never goes back, so it may lie in the
    /// past while tombstones or nothing at all are held; once it has passed,
    /// no record held is a live session. The sweeper reads it to clear a
    /// mass expiry at once rather than when its CPU budget allows.
    pub fn sessions_expire_by(&self) -> u64 {
        self.expire_by.load(Ordering::Relaxed)
    }

    /// Whether a sweep pass now would clear a mass expiry: records are held
    /// and every live session among them has expired
    /// ([`Store::sessions_expire_by`] has passed). Returns that time, so a
    /// caller can ask once per value.
    pub fn all_sessions_expired(&self, now: u64) -> Option<u64> {
        let by = self.sessions_expire_by();
        (by > 0 && now >= by && self.records() > 0).then_some(by)
    }

    /// Starts this store's sweeper ([`crate::sweeper`]): a pass every
    /// `every`, counted in `metrics`, until `stop` changes. Needs a tokio
    /// runtime.
    pub fn spawn_sweeper(
        self: &Arc<Store>,
        metrics: Arc<Metrics>,
        every: Duration,
        freed: Option<FreedHook>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(sweeper::run(self.clone(), metrics, every, freed, stop))
    }

    /// Raises [`Store::sessions_expire_by`] to cover `expires_ms`. Rounded up
    /// to whole seconds, the shared value is written about once a second
    /// under load, not by every request; the others only read it.
    fn note_expiry(&self, expires_ms: u64) {
        let by = expires_ms.div_ceil(1000).saturating_mul(1000);
        if by > self.expire_by.load(Ordering::Relaxed) {
            self.expire_by.fetch_max(by, Ordering::Relaxed);
        }
    }

    /// Runs `rule` on `user`'s records as one atomic step and returns the
    /// outcome of its [`Ruling`]; `rule` may run several times, the last run
    /// counts.
    fn update<T>(&self, user: UserKey, rule: impl FnMut(&[Slot]) -> Ruling<T>) -> T {
        let map = self.map.load();
        Self::update_in(&map, &self.records, user, rule)
    }

    fn update_in<T>(map: &Map, records: &AtomicI64, user: UserKey, mut rule: impl FnMut(&[Slot]) -> Ruling<T>) -> T {
        let mut out = None;
        let map = map.pin();
        let result = map.compute(user, |entry| {
            let current = entry.map_or(&[][..], |(_, v)| &v[..]);
            freeze(current);
            let (next, t) = rule(current);
            out = Some(t);
            match next {
                None => Operation::Abort(()),
                Some(slots) if slots.is_empty() => match entry {
                    Some(_) => Operation::Remove,
                    None => Operation::Abort(()),
                },
                Some(slots) => Operation::Insert(slots),
            }
        });
        let delta = match result {
            Compute::Inserted(_, new) => new.len() as i64,
            Compute::Updated { old: (_, old), new: (_, new) } => new.len() as i64 - old.len() as i64,
            Compute::Removed(_, old) => -(old.len() as i64),
            Compute::Aborted(()) => 0,
        };
        if delta != 0 {
            records.fetch_add(delta, Ordering::Relaxed);
        }
        // `compute` runs the closure at least once.
        out.expect("compute ran the rule")
    }

    /// docs/spec.md §5: one start, as [`policy::admit`] judges it.
    pub fn admit(&self, user: UserKey, a: &Admission<'_>, now: u64) -> Result<Admitted, Refusal> {
        self.note_expiry(a.session.expires_ms.get());
        self.update(user, |current| policy::admit(current, a, now))
    }

    /// docs/spec.md §6: one heartbeat, as [`policy::heartbeat`] judges it;
    /// renewed in place when that is all it would do.
    pub fn heartbeat(&self, user: UserKey, b: &Beat<'_>, now: u64) -> BeatOutcome {
        // A rebuilt session takes this expiry too (it is renewed).
        self.note_expiry(b.renew_to_ms);
        if let Some(carry) = self.renew_in_place(user, b, now) {
            return BeatOutcome::Renewed { healed: false, over_limit: Vec::new(), expired: 0, carry };
        }
        self.update(user, |current| policy::heartbeat(current, b, now))
    }

    /// The common heartbeat without a copy: if it was done, the user's
    /// stops for the renewed token (none, without allocating, for most).
    fn renew_in_place(&self, user: UserKey, b: &Beat<'_>, now: u64) -> Option<Vec<Tombstone>> {
        let map = self.map.load();
        let map = map.pin();
        let slots = map.get(&user)?;
        let me = policy::renewable(slots, b, now)?;
        me.expires_ms.renew(now, b.renew_to_ms).then(|| policy::carried_stops(slots, now))
    }

    /// docs/spec.md §4 stop, as [`policy::stop`] judges it.
    pub fn stop(&self, user: UserKey, s: &Stop, now: u64) -> StopOutcome {
        self.update(user, |current| policy::stop(current, s, now))
    }

    /// docs/spec.md §4 sign out everywhere, as [`policy::sign_out`] judges it:
    /// every live session of `user`, and those not held here until `until_ms`,
    /// in one step.
    pub fn sign_out(&self, user: UserKey, by: &Arc<By>, until_ms: u64, now: u64) -> SignedOut {
        self.update(user, |current| policy::sign_out(current, by, until_ms, now))
    }

    /// Live sessions oldest first and the units they count as (read only).
    pub fn live(&self, user: UserKey, policy: Policy, now: u64) -> (usize, Vec<Session>) {
        let map = self.map.load();
        let map = map.pin();
        map.get(&user).map_or((0, Vec::new()), |slots| policy::live(slots, policy, now))
    }

    /// Drops everything due at `now` and counts what is left, in one pass.
    /// Safe against concurrent requests: each user is pruned by its own
    /// atomic step. Once a large map is empty, swaps in a fresh one so its
    /// table's memory goes back (papaya only shrinks while inserting).
    pub fn sweep(&self, now: u64) -> Swept {
        self.sweep_paced(now, &mut || {})
    }

    /// [`Store::sweep`], calling `pause` after every `SWEEP_CHUNK` users so
    /// that a pass over a large map can yield the CPU in small steps instead
    /// of holding a core for tens of milliseconds.
    pub fn sweep_paced(&self, now: u64, pause: &mut dyn FnMut()) -> Swept {
        let mut swept = Swept { released_map: self.merge_retired(now), ..Swept::default() };
        let current = self.map.load_full();
        let map = current.pin();
        for (i, (user, slots)) in map.iter().enumerate() {
            if i % SWEEP_CHUNK == SWEEP_CHUNK - 1 {
                pause();
            }
            let kept = if slots.iter().any(|s| s.is_expired(now)) {
                let (expired, kept) = self.update(*user, |current| match policy::prune(current, now) {
                    Some((slots, expired)) => {
                        let kept = count(&slots, now);
                        (Some(slots), (expired, kept))
                    }
                    None => (None, (0, count(current, now))),
                });
                swept.expired += expired;
                kept
            } else {
                count(slots, now)
            };
            if kept.0 > 0 {
                swept.users += 1;
                swept.records += kept.0;
                swept.live += kept.1;
            }
        }
        drop(map);
        // papaya's iterator finishes any copy into a resized table before it
        // walks the map, and hands the old table to this thread's batch of
        // retired objects, which is freed only once `RETIRE_BATCH` of them
        // have gathered here: a sweeper that found nothing due would keep
        // it for good (9 MiB at 500k users, 72 MiB at 5M). Hand the batch
        // on now (one `membarrier` a pass); it is freed once no request can
        // still be reading it. If more requests are inside the map this
        // moment than the batch holds objects, a later pass does it.
        current.guard().flush();
        let peak = self.peak_users.fetch_max(swept.users, Ordering::Relaxed).max(swept.users);
        if swept.users == 0 && peak >= COMPACT_AFTER_USERS {
            self.retire(current, now);
        }
        swept
    }

    fn retire(&self, current: Arc<Map>, now: u64) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        if retired.is_none() {
            self.map.store(Arc::new(new_map(self.capacity)));
            self.peak_users.store(0, Ordering::Relaxed);
            *retired = Some((current, now));
        }
    }

    /// Moves whatever requests wrote to the retired map while it was being
    /// swapped out into the current map, once no request can still hold it,
    /// and lets it go; whether it did.
    fn merge_retired(&self, now: u64) -> bool {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let due = retired.as_ref().is_some_and(|(_, at)| now >= at + RETIRE_GRACE_MS);
        if !due {
            return false;
        }
        if let Some((old, _)) = retired.take() {
            let current = self.map.load();
            for (user, slots) in old.pin().iter() {
                freeze(slots);
                self.records.fetch_sub(slots.len() as i64, Ordering::Relaxed);
                Self::update_in(&current, &self.records, *user, |mine| (Some(policy::merge(mine, slots)), ()));
            }
        }
        true
    }
}

/// A session's expiry, in Unix ms. The rules in [`crate::policy`] read and
/// write it like a plain number on their own copies; in the store it is also
/// the one field a heartbeat renews in place (`Expiry::renew`) instead of
/// copying the user's records. A writer that copies records freezes their
/// expiries first (`Expiry::freeze`): from then on an in-place renewal of
/// that copy fails (and takes the copying path), so none is lost. Both steps
/// of that protocol are private to this module.
pub struct Expiry(AtomicU64);

impl Expiry {
    /// Set while a writer copies the records holding this expiry.
    const FROZEN: u64 = 1 << 63;

    pub fn new(ms: u64) -> Expiry {
        // Unix ms stay far below the flag; a larger value saturates.
        Expiry(AtomicU64::new(ms.min(Self::FROZEN - 1)))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire) & !Self::FROZEN
    }

    pub fn set(&mut self, ms: u64) {
        *self = Expiry::new(ms);
    }

    /// Marks the records holding this expiry as being copied: no in-place
    /// renewal can change it any more.
    fn freeze(&self) {
        self.0.fetch_or(Self::FROZEN, Ordering::AcqRel);
    }

    /// Sets the expiry to `to_ms` if it is still after `now` and not frozen.
    fn renew(&self, now: u64, to_ms: u64) -> bool {
        let seen = self.0.load(Ordering::Acquire);
        seen & Self::FROZEN == 0
            && seen > now
            && self.0.compare_exchange(seen, to_ms.min(Self::FROZEN - 1), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl From<u64> for Expiry {
    fn from(ms: u64) -> Expiry {
        Expiry::new(ms)
    }
}

/// A copy is a new record: never frozen.
impl Clone for Expiry {
    fn clone(&self) -> Expiry {
        Expiry::new(self.get())
    }
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Expiry) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Expiry {}

impl std::fmt::Debug for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Every update retires the entry it replaces; the collector frees retired
/// entries in batches, each costing a process-wide memory barrier (an
/// interrupt to every core). A batch of 512 instead of the default 32 makes
/// that cost vanish from the heartbeat profile for ~100 KiB of garbage per
/// thread.
const RETIRE_BATCH: usize = 512;

fn new_map(capacity: usize) -> Map {
    HashMap::builder()
        .hasher(ahash::RandomState::new())
        .capacity(capacity)
        .resize_mode(ResizeMode::Incremental(64))
        .collector(seize::Collector::new().batch_size(RETIRE_BATCH))
        .build()
}

/// Marks `slots` as being copied by a writer: in-place renewals of them
/// fail from here on (see the module docs).
fn freeze(slots: &[Slot]) {
    for slot in slots {
        if let Slot::Live(s) = slot {
            s.expires_ms.freeze();
        }
    }
}

/// (records, live sessions) of one user at `now`.
fn count(slots: &[Slot], now: u64) -> (usize, usize) {
    let live = slots.iter().filter(|s| matches!(s, Slot::Live(l) if l.expires_ms.get() > now)).count();
    (slots.len(), live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Beat, Limits};
    use crate::wire::SessionId;
    use std::sync::Arc;

    fn admission(id: u64, now: u64, limit: u32) -> Admission<'static> {
        Admission {
            session: Session { id: SessionId(id), started_ms: now, expires_ms: (now + 90_000).into(), info: None },
            limits: Limits { limit, policy: Policy::RejectNew, group: None },
            replace: None,
            unknown_until_ms: now + 95_000,
        }
    }

    #[test]
    fn user_keys_are_the_same_hash_for_any_name_length() {
        let store = Store::new(16, [7; 16]);
        for (tenant, user) in [("acme", "alice".to_string()), ("t", "u".repeat(300))] {
            let name = [tenant.as_bytes(), &[0], user.as_bytes()].concat();
            let want = SipHasher24::new_with_key(&[7; 16]).hash(&name).as_u128();
            assert_eq!(store.user_key(tenant, &user), UserKey(want));
        }
        assert_ne!(store.user_key("ab", "c"), store.user_key("a", "bc"));
    }

    #[test]
    fn users_are_separate_and_records_are_counted() {
        let store = Store::new(16, [1; 16]);
        let (a, b) = (store.user_key("acme", "alice"), store.user_key("acme", "bob"));
        assert_ne!(a, b);
        assert_ne!(store.user_key("acme", "x"), store.user_key("acmex", ""));
        store.admit(a, &admission(1, 0, 1), 0).unwrap();
        store.admit(b, &admission(2, 0, 1), 0).unwrap();
        assert!(store.admit(a, &admission(3, 0, 1), 0).is_err());
        assert_eq!(store.records(), 2);
        assert_eq!(store.live(a, Policy::RejectNew, 0).0, 1);
    }

    #[test]
    fn sweep_removes_expired_sessions_and_tombstones() {
        let store = Store::new(16, [1; 16]);
        let a = store.user_key("acme", "alice");
        store.admit(a, &admission(1, 0, 2), 0).unwrap();
        store.stop(
            a,
            &Stop {
                id: SessionId(9),
                reason: crate::wire::StopReason::Kicked,
                by: None,
                keep_until_ms: 0,
                unknown_until_ms: 200_000,
                carried: Vec::new(),
            },
            0,
        );
        let swept = |users, live, records, expired| Swept { users, live, records, expired, released_map: false };
        assert_eq!(store.sweep(1000), swept(1, 1, 2, 0));
        assert_eq!(store.sweep(90_000), swept(1, 0, 1, 1));
        assert_eq!(store.sweep(200_000), swept(1, 0, 1, 0));
        assert_eq!(store.sweep(200_001), swept(0, 0, 0, 0));
        assert_eq!(store.records(), 0);
    }

    #[test]
    fn an_emptied_map_is_replaced_and_late_writes_are_kept() {
        let store = Store::new(16, [1; 16]);
        let users: Vec<UserKey> = (0..COMPACT_AFTER_USERS).map(|i| store.user_key("acme", &i.to_string())).collect();
        for (i, u) in users.iter().enumerate() {
            store.admit(*u, &admission(i as u64, 0, 1), 0).unwrap();
        }
        let before = Arc::as_ptr(&store.map.load_full());
        assert_eq!(store.sweep(1).users, COMPACT_AFTER_USERS);
        assert_eq!(store.sweep(100_000).users, 0, "all expired");
        assert_ne!(Arc::as_ptr(&store.map.load_full()), before, "a fresh map replaced the emptied one");

        // A write that raced the swap lands in the retired map; it is merged back.
        let late = store.user_key("acme", "late");
        let retired = store.retired.lock().unwrap().as_ref().unwrap().0.clone();
        Store::update_in(&retired, &store.records, late, |_| {
            (Some(vec![Slot::Live(admission(7, 100_000, 1).session)].into_boxed_slice()), ())
        });
        store.admit(late, &admission(8, 100_000, 2), 100_000).unwrap();
        assert!(!store.sweep(100_000 + RETIRE_GRACE_MS - 1).released_map, "within the grace period");
        let swept = store.sweep(100_000 + RETIRE_GRACE_MS);
        assert_eq!(swept, Swept { users: 1, live: 2, records: 2, expired: 0, released_map: true });
        assert!(!store.sweep(100_000 + RETIRE_GRACE_MS).released_map, "once");
        assert_eq!(store.records(), 2);
        assert!(store.retired.lock().unwrap().is_none());
    }

    /// The address of `user`'s stored records: the same after an in-place
    /// renewal, new after a copy.
    fn records_at(store: &Store, user: UserKey) -> Option<*const Slot> {
        store.map.load().pin().get(&user).map(|r| r.as_ptr())
    }

    /// The latest expiry among `user`'s live sessions.
    fn latest_expiry(store: &Store, user: UserKey) -> Option<u64> {
        store.live(user, Policy::RejectNew, 1).1.iter().map(|s| s.expires_ms.get()).max()
    }

    fn beat_of<'a>(id: u64, renew_to_ms: u64, rebuild: &'a dyn Fn() -> Session) -> Beat<'a> {
        Beat {
            id: SessionId(id),
            rebuild,
            limits: Limits { limit: 8, policy: Policy::RejectNew, group: None },
            token_expires_ms: renew_to_ms,
            renew_to_ms,
            carried: Vec::new(),
        }
    }

    #[test]
    fn a_plain_heartbeat_renews_in_place() {
        let store = Store::new(16, [1; 16]);
        let a = store.user_key("acme", "alice");
        store.admit(a, &admission(1, 0, 8), 0).unwrap();
        let rebuild = || admission(1, 0, 8).session;
        let before = records_at(&store, a);
        assert!(matches!(store.heartbeat(a, &beat_of(1, 120_000, &rebuild), 1000), BeatOutcome::Renewed { .. }));
        assert_eq!(records_at(&store, a), before, "the same records, renewed in place");
        assert_eq!(store.live(a, Policy::RejectNew, 1000).1[0].expires_ms.get(), 120_000);

        // Anything more than a renewal takes the copying path: here, healing.
        let rebuild2 = || admission(2, 0, 8).session;
        store.heartbeat(a, &beat_of(2, 120_000, &rebuild2), 1000);
        assert_ne!(records_at(&store, a), before);
        assert_eq!(store.live(a, Policy::RejectNew, 1000).0, 2);
    }

    #[test]
    fn renewals_in_place_are_never_lost_to_concurrent_copies() {
        // One thread renews session 1 with ever later expiries while another
        // keeps rewriting the same user's records (a copy, as every start,
        // stop and sweep makes).
        // A renewal written into records that a writer had already copied
        // would be lost: the last renewal must be what the store holds.
        let store = Store::new(16, [1; 16]);
        let a = store.user_key("acme", "alice");
        store.admit(a, &admission(1, 0, 8), 0).unwrap();
        let rounds = 20_000u64;
        let done = std::sync::atomic::AtomicBool::new(false);
        let (last, in_place) = std::thread::scope(|s| {
            let beats = s.spawn(|| {
                let rebuild = || admission(1, 0, 8).session;
                let (mut last, mut in_place) = (0, 0);
                for i in 1..=rounds {
                    let to = 100_000 + i;
                    let before = records_at(&store, a);
                    match store.heartbeat(a, &beat_of(1, to, &rebuild), 1) {
                        BeatOutcome::Renewed { .. } => last = to,
                        other => panic!("{other:?}"),
                    }
                    in_place += usize::from(records_at(&store, a) == before);
                    // Whatever copy the writer installs from now on has it.
                    let held = latest_expiry(&store, a);
                    assert_eq!(held, Some(to), "renewal {i} lost ({in_place} done in place so far)");
                }
                (last, in_place)
            });
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    store.update(a, |current| (Some(current.into()), ()));
                }
            });
            let result = beats.join();
            done.store(true, Ordering::Relaxed);
            result.unwrap()
        });
        assert_eq!(last, 100_000 + rounds);
        assert!(in_place > 0, "no renewal was done in place");
        assert_eq!(latest_expiry(&store, a), Some(last), "the last renewal, once the writer has stopped");
    }

    #[test]
    fn knows_when_every_session_has_expired() {
        let store = Store::new(16, [1; 16]);
        let (a, b) = (store.user_key("acme", "alice"), store.user_key("acme", "bob"));
        assert_eq!(store.sessions_expire_by(), 0, "nothing yet");
        store.admit(a, &admission(1, 500, 8), 500).unwrap();
        assert_eq!(store.sessions_expire_by(), 91_000, "90,500 rounded up to the second");
        store.admit(b, &admission(2, 0, 8), 0).unwrap();
        assert_eq!(store.sessions_expire_by(), 91_000, "an earlier expiry does not lower it");
        let rebuild = || admission(1, 500, 8).session;
        store.heartbeat(a, &beat_of(1, 120_000, &rebuild), 1000);
        assert_eq!(store.sessions_expire_by(), 120_000, "renewed in place");
        let rebuild3 = || admission(3, 0, 8).session;
        store.heartbeat(b, &beat_of(3, 130_001, &rebuild3), 1000);
        assert_eq!(store.sessions_expire_by(), 131_000, "healed: the rebuilt session is renewed");
        assert_eq!(store.sweep(130_000).live, 1, "bob's rebuilt session is the last one live");
        let swept = store.sweep(store.sessions_expire_by());
        assert_eq!(swept, Swept { users: 0, live: 0, records: 0, expired: 1, released_map: false });
    }

    #[test]
    fn parallel_starts_never_exceed_the_limit() {
        for round in 0..50 {
            let store = Arc::new(Store::new(16, [1; 16]));
            let user = store.user_key("acme", "alice");
            let admitted: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|t| {
                        let store = &store;
                        s.spawn(move || {
                            (0..5)
                                .filter(|i| store.admit(user, &admission(t * 100 + i, round, 2), round).is_ok())
                                .count()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(admitted, 2, "round {round}");
            assert_eq!(store.records(), 2);
        }
    }

    #[test]
    fn a_sign_out_is_never_undone_by_a_renewal_in_place() {
        // Heartbeats renew two sessions in place while a sign-out stops both:
        // once it has returned, no heartbeat renews and nothing is live.
        for round in 0..100 {
            let store = Store::new(16, [1; 16]);
            let a = store.user_key("acme", "alice");
            store.admit(a, &admission(1, 0, 8), 0).unwrap();
            store.admit(a, &admission(2, 0, 8), 0).unwrap();
            let by = Arc::new(By { id: None, started_ms: 1, expires_ms: None, info: None });
            let signed_out = std::sync::atomic::AtomicBool::new(false);
            let out = std::thread::scope(|s| {
                let beats = s.spawn(|| {
                    let (one, two) = (|| admission(1, 0, 8).session, || admission(2, 0, 8).session);
                    let mut stopped_seen = 0;
                    for i in 0u64.. {
                        let after = signed_out.load(Ordering::Acquire);
                        let rebuild: &dyn Fn() -> Session = if i % 2 == 0 { &one } else { &two };
                        match store.heartbeat(a, &beat_of(1 + i % 2, 100_000 + i, rebuild), 1) {
                            BeatOutcome::Renewed { .. } => assert!(!after, "round {round}: renewed after the sign-out"),
                            BeatOutcome::AlreadyStopped(t) => {
                                assert_eq!(t.reason, crate::wire::StopReason::Kicked);
                                stopped_seen += 1;
                            }
                            other => panic!("{other:?}"),
                        }
                        if stopped_seen >= 4 {
                            return i;
                        }
                    }
                    unreachable!()
                });
                std::thread::yield_now();
                let out = store.sign_out(a, &by, 200_000, 1);
                signed_out.store(true, Ordering::Release);
                beats.join().unwrap();
                out
            });
            assert_eq!(out, SignedOut { stopped: 2, expired: 0 }, "round {round}");
            assert_eq!(store.live(a, Policy::RejectNew, 1).0, 0);
            assert_eq!(store.records(), 3, "two tombstones and the sign-out");
        }
    }
}
