//! The session store: every user's records in one lock-free papaya map,
//! keyed by a fixed-size hash of (tenant, user). Each operation on a user is
//! one atomic read-modify-write (`compute`) that runs a pure rule from
//! [`crate::policy`], so two concurrent starts can never both take the last
//! slot. The closure may run more than once under contention: it only
//! computes, and counters are bumped from the final result.

use std::sync::atomic::{AtomicI64, Ordering};

use papaya::{Compute, HashMap, Operation, ResizeMode};

use crate::policy::{self, Admission, Beat, BeatOutcome, Refusal, Session, Slot, Stop, StopOutcome, Tombstone};
use crate::wire::{Policy, SessionId};

/// 128 bits of keyed BLAKE3 over (tenant, user): collisions are out of reach
/// and the key is fixed-size whatever the names' lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserKey(u128);

type Records = Box<[Slot]>;

pub struct Store {
    map: HashMap<UserKey, Records, ahash::RandomState>,
    /// Records held (live, expired-but-unswept and tombstones): the capacity bound.
    records: AtomicI64,
    hash_key: [u8; 32],
}

/// A successful start.
#[derive(Debug)]
pub struct Admitted {
    pub active: usize,
    pub evicted: Vec<SessionId>,
    pub replaced: usize,
    pub expired: usize,
}

/// A heartbeat's result.
#[derive(Debug)]
pub enum Beaten {
    Renewed {
        healed: bool,
        stopped: usize,
        expired: usize,
    },
    Lost {
        healed: bool,
        stopped: usize,
        expired: usize,
    },
    Stopped(Tombstone),
    /// The user is at its record bound: retry later.
    Full,
}

/// Whether a stop was recorded.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Done (or already done); `expired` sessions were dropped on the way.
    Done { expired: usize },
    /// The user is at its record bound: retry later.
    Full,
}

/// What one sweep found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub users: usize,
    pub live: usize,
    pub records: usize,
    /// Live sessions that expired and were removed.
    pub expired: usize,
}

impl Store {
    /// A store sized for `capacity` users; `hash_key` keys the user hash.
    pub fn new(capacity: usize, hash_key: [u8; 32]) -> Store {
        let map = HashMap::builder()
            .hasher(ahash::RandomState::new())
            .capacity(capacity)
            .resize_mode(ResizeMode::Incremental(64))
            .build();
        Store { map, records: AtomicI64::new(0), hash_key }
    }

    pub fn user_key(&self, tenant: &str, user: &str) -> UserKey {
        let mut h = blake3::Hasher::new_keyed(&self.hash_key);
        // Tenant ids never contain a NUL, so the split is unambiguous.
        h.update(tenant.as_bytes());
        h.update(&[0]);
        h.update(user.as_bytes());
        let mut out = [0u8; 16];
        h.finalize_xof().fill(&mut out);
        UserKey(u128::from_le_bytes(out))
    }

    /// Records held now (live sessions, unswept expired ones and tombstones).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed).max(0) as u64
    }

    /// Runs `rule` on `user`'s records as one atomic step. `rule` returns the
    /// new records (or `None` to leave them untouched) and stores what the
    /// caller needs in `out`; it may run several times, the last run counts.
    fn update<T>(&self, user: UserKey, mut rule: impl FnMut(&[Slot]) -> (Option<Records>, T)) -> T {
        let mut out = None;
        let map = self.map.pin();
        let result = map.compute(user, |entry| {
            let current = entry.map_or(&[][..], |(_, v)| &v[..]);
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
            self.records.fetch_add(delta, Ordering::Relaxed);
        }
        // `compute` runs the closure at least once.
        out.expect("compute ran the rule")
    }

    pub fn admit(&self, user: UserKey, a: &Admission<'_>, now: u64) -> Result<Admitted, Refusal> {
        self.update(user, |current| match policy::admit(current, a, now) {
            Ok(ok) => (
                Some(ok.slots),
                Ok(Admitted { active: ok.active, evicted: ok.evicted, replaced: ok.replaced, expired: ok.expired }),
            ),
            Err(refused) => (None, Err(refused)),
        })
    }

    pub fn heartbeat(&self, user: UserKey, b: &Beat<'_>, now: u64) -> Beaten {
        self.update(user, |current| match policy::heartbeat(current, b, now) {
            BeatOutcome::Renewed { slots, healed, stopped, expired } => {
                (Some(slots), Beaten::Renewed { healed, stopped: stopped.len(), expired })
            }
            BeatOutcome::Lost { slots, healed, stopped, expired } => {
                (Some(slots), Beaten::Lost { healed, stopped: stopped.len(), expired })
            }
            BeatOutcome::Stopped(t) => (None, Beaten::Stopped(t)),
            BeatOutcome::Full => (None, Beaten::Full),
        })
    }

    pub fn stop(&self, user: UserKey, s: &Stop, now: u64) -> Stopped {
        self.update(user, |current| match policy::stop(current, s, now) {
            StopOutcome::Stopped { slots, expired } | StopOutcome::Remembered { slots, expired } => {
                (Some(slots), Stopped::Done { expired })
            }
            StopOutcome::AlreadyStopped => (None, Stopped::Done { expired: 0 }),
            StopOutcome::Full => (None, Stopped::Full),
        })
    }

    /// Live sessions oldest first and the units they count as (read only).
    pub fn live(&self, user: UserKey, policy: Policy, now: u64) -> (usize, Vec<Session>) {
        let map = self.map.pin();
        map.get(&user).map_or((0, Vec::new()), |slots| policy::live(slots, policy, now))
    }

    /// Drops everything due at `now` and counts what is left. Safe against
    /// concurrent requests: each user is pruned by its own atomic step.
    pub fn sweep(&self, now: u64) -> Swept {
        let mut swept = Swept::default();
        let map = self.map.pin();
        for (user, slots) in map.iter() {
            if slots.iter().any(|s| s.is_expired(now)) {
                swept.expired += self.update(*user, |current| match policy::prune(current, now) {
                    Some((slots, expired)) => (Some(slots), expired),
                    None => (None, 0),
                });
            }
        }
        for (_, slots) in map.iter() {
            swept.users += 1;
            swept.records += slots.len();
            swept.live += slots.iter().filter(|s| matches!(s, Slot::Live(l) if l.expires_ms > now)).count();
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Limits;
    use std::sync::Arc;

    fn admission(id: u64, now: u64, limit: u32) -> Admission<'static> {
        Admission {
            session: Session { id: SessionId(id), started_ms: now, expires_ms: now + 90_000, info: None },
            limits: Limits { limit, policy: Policy::RejectNew, group: None },
            replace: None,
            unknown_until_ms: now + 95_000,
        }
    }

    #[test]
    fn users_are_separate_and_records_are_counted() {
        let store = Store::new(16, [1; 32]);
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
        let store = Store::new(16, [1; 32]);
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
            },
            0,
        );
        assert_eq!(store.sweep(1000), Swept { users: 1, live: 1, records: 2, expired: 0 });
        assert_eq!(store.sweep(90_000), Swept { users: 1, live: 0, records: 1, expired: 1 });
        assert_eq!(store.sweep(200_000), Swept { users: 1, live: 0, records: 1, expired: 0 });
        assert_eq!(store.sweep(200_001), Swept { users: 0, live: 0, records: 0, expired: 0 });
        assert_eq!(store.records(), 0);
    }

    #[test]
    fn parallel_starts_never_exceed_the_limit() {
        for round in 0..50 {
            let store = Arc::new(Store::new(16, [1; 32]));
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
}
