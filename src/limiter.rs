//! The service's core: verifies grants and lease tokens, turns them into
//! store operations, mints the answers and counts what happened. Takes
//! `now` (Unix milliseconds) as an argument and knows nothing of HTTP; its
//! [`Error`] speaks in domain words and is mapped to statuses by the HTTP
//! adapter alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::grant::{self, Grant, InvalidGrant, PollBounds, Tenants};
use crate::keys::KeyRing;
use crate::metrics::{Metrics, Rejection};
use crate::policy::{Admission, Admitted, Beat, BeatOutcome, Limits, Refusal, Refused, SignedOut, Stop, StopOutcome};
use crate::session::{By, Info, Session, Tombstone};
use crate::store::{Store, Swept};
use crate::sweeper::FreedHook;
use crate::token::{InvalidToken, Lease, LeaseClaims, StopClaim};
use crate::wire::{self, SessionId, SessionView, StopReason};

/// New ids a start tries before answering `503`: ids come from a counter,
/// so a second clash within one user's records takes remembered stops of
/// exactly the ids about to be issued.
const ID_ATTEMPTS: usize = 4;

/// What the core needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub poll: PollBounds,
    pub ttl_factor: u32,
    pub max_sessions: u64,
    pub server_keys: KeyRing,
    pub tenants: Tenants,
}

impl Settings {
    fn ttl_ms(&self, poll_secs: u32) -> u64 {
        poll_secs as u64 * self.ttl_factor as u64 * 1000
    }

    /// The longest any token of this server can live, with leeway.
    fn max_token_life_ms(&self) -> u64 {
        self.ttl_ms(self.poll.max) + wire::TOKEN_LEEWAY_MS
    }
}

/// Why a request failed, in domain words.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    InvalidGrant(&'static str),
    InvalidToken(&'static str),
    Forbidden(&'static str),
    LimitReached {
        group: bool,
        limit: u32,
        active: usize,
        sessions: Vec<SessionView>,
    },
    /// The session has stopped (a `410`): why, and who stopped it.
    SessionStopped {
        reason: StopReason,
        by: Option<Box<SessionView>>,
    },
    OverCapacity,
    /// The session's tenant has no licence upstream for the DRM system asked for.
    NoLicenceUpstream,
}

impl From<InvalidGrant> for Error {
    fn from(e: InvalidGrant) -> Error {
        Error::InvalidGrant(e.0)
    }
}

impl From<InvalidToken> for Error {
    fn from(e: InvalidToken) -> Error {
        Error::InvalidToken(e.0)
    }
}

/// A lease token handed to a player, by a start or a heartbeat.
#[derive(Debug)]
pub struct Issued {
    pub session_id: SessionId,
    pub token: String,
    pub poll_after: u32,
    pub expires_ms: u64,
}

/// A start's answer: the new session's lease, the limit it counts against,
/// and the admission as the store decided it.
#[derive(Debug)]
pub struct Started {
    pub lease: Issued,
    pub limit: u32,
    pub admitted: Admitted,
}

#[derive(Debug)]
pub struct Listing {
    pub limit: u32,
    pub active: usize,
    pub sessions: Vec<SessionView>,
}

pub struct Limiter {
    /// Swapped whole on reload; requests read it without locking.
    settings: ArcSwap<Settings>,
    store: Arc<Store>,
    ids: SessionIds,
    metrics: Arc<Metrics>,
}

impl Limiter {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Result<Limiter, getrandom::Error> {
        let mut hash_key = [0u8; 16];
        getrandom::fill(&mut hash_key)?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed)?;
        Ok(Limiter {
            settings: ArcSwap::from_pointee(settings),
            store: Arc::new(Store::new(1024, hash_key)),
            ids: SessionIds { seed: u64::from_le_bytes(seed), next: AtomicU64::new(0) },
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Puts new keys, tenants and bounds in force for every later request;
    /// sessions are untouched.
    pub fn reload(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    fn grant_for(&self, s: &Settings, user: &str, token: &str, now: u64) -> Result<Grant, Error> {
        let g = grant::verify(token, &s.tenants, s.poll, now)?;
        if &*g.sub != user {
            return Err(Error::Forbidden("the grant is for another user"));
        }
        Ok(g)
    }

    fn lease_for<'t>(
        &self,
        s: &Settings,
        user: &str,
        id: SessionId,
        token: &'t str,
        now: u64,
    ) -> Result<Lease<'t>, Error> {
        let lease = Lease::verify(token, &s.server_keys, now)?;
        if !s.tenants.contains_key(lease.tenant()) {
            return Err(Error::InvalidToken("unknown tenant"));
        }
        if lease.user() != user || lease.session() != id {
            return Err(Error::Forbidden("the token is for another user or session"));
        }
        Ok(lease)
    }

    /// docs/spec.md §4 start and §5 admission.
    pub fn start(&self, user: &str, token: &str, replace: Option<SessionId>, now: u64) -> Result<Started, Error> {
        let settings = self.settings.load();
        let s = &**settings;
        let g = self.grant_for(s, user, token, now).inspect_err(|e| self.count_start_error(e))?;
        if self.store.records() >= s.max_sessions {
            self.metrics.start_refused(Rejection::OverCapacity);
            return Err(Error::OverCapacity);
        }
        let expires_ms = now + s.ttl_ms(g.poll_secs);
        let group = g.group.as_ref().map(|(name, limit)| (&**name, *limit));
        let user_key = self.store.user_key(&g.tenant, &g.sub);
        // A new id that the user's records already hold (a stop or
        // `?replace=` can remember any id) is refused; the next one is tried.
        for _ in 0..ID_ATTEMPTS {
            let id = self.ids.next();
            let claims = LeaseClaims {
                tenant: &g.tenant,
                user: &g.sub,
                session: id,
                started_ms: now,
                expires_ms,
                limit: g.limit,
                policy: g.policy,
                group,
                device: g.device.as_deref(),
                label: g.label.as_deref(),
                content: g.content.as_deref(),
                poll_secs: g.poll_secs,
            };
            let token = claims.mint(s.server_keys.signing()).ok_or_else(|| {
                self.metrics.start_refused(Rejection::InvalidGrant);
                Error::InvalidGrant("tenant, sub, group and device are too long together for a lease token")
            })?;
            let admission = Admission {
                session: Session {
                    id,
                    started_ms: now,
                    expires_ms: expires_ms.into(),
                    info: Info::new(claims.device, claims.label, claims.content, group.map(|g| g.0)),
                },
                limits: Limits { limit: g.limit, policy: g.policy, group },
                replace,
                unknown_until_ms: now + s.max_token_life_ms(),
            };
            match self.store.admit(user_key, &admission, now) {
                Ok(admitted) => {
                    self.metrics.start_admitted(&admitted);
                    // The user's stops, this start's included, travel in its token.
                    let token = match admitted.carry.is_empty() {
                        true => token,
                        false => {
                            let carry: Vec<StopClaim<'_>> = admitted.carry.iter().map(stop_claim).collect();
                            claims.mint_with(s.server_keys.signing(), &carry).unwrap_or(token)
                        }
                    };
                    let lease = Issued { session_id: id, token, poll_after: g.poll_secs, expires_ms };
                    return Ok(Started { lease, limit: g.limit, admitted });
                }
                Err(Refusal::IdTaken) => continue,
                Err(Refusal::Full) => {
                    self.metrics.start_refused(Rejection::OverCapacity);
                    return Err(Error::OverCapacity);
                }
                Err(Refusal::Limit(Refused { group, limit, active, sessions })) => {
                    self.metrics.start_refused(if group {
                        Rejection::GroupLimitReached
                    } else {
                        Rejection::LimitReached
                    });
                    let sessions = sessions.iter().map(Session::view).collect();
                    return Err(Error::LimitReached { group, limit, active, sessions });
                }
            }
        }
        self.metrics.start_refused(Rejection::OverCapacity);
        Err(Error::OverCapacity)
    }

    fn count_start_error(&self, e: &Error) {
        self.metrics.start_refused(match e {
            Error::Forbidden(_) => Rejection::Forbidden,
            _ => Rejection::InvalidGrant,
        });
    }

    /// docs/spec.md §4 heartbeat and §6 healing and re-validation.
    pub fn heartbeat(&self, user: &str, id: SessionId, token: &str, now: u64) -> Result<Issued, Error> {
        self.heartbeat_then(user, id, token, now, |_| Ok(())).map(|(renewed, ())| renewed)
    }

    /// A heartbeat for a route that does more than renew (the licence gate,
    /// docs/spec.md §10): `admit` sees the verified token's claims first and
    /// may refuse, before anything is healed, renewed or counted; what it
    /// returns comes back with the renewal.
    pub fn heartbeat_then<T>(
        &self,
        user: &str,
        id: SessionId,
        token: &str,
        now: u64,
        admit: impl FnOnce(&LeaseClaims<'_>) -> Result<T, Error>,
    ) -> Result<(Issued, T), Error> {
        let settings = self.settings.load();
        let s = &**settings;
        let lease = self.lease_for(s, user, id, token, now).inspect_err(|_| {
            self.metrics.heartbeat_invalid();
        })?;
        let c = lease.claims();
        let admitted = admit(&c)?;
        let renew_to_ms = now + s.ttl_ms(c.poll_secs);
        let rebuild = || Session {
            id,
            started_ms: c.started_ms,
            expires_ms: c.expires_ms.into(),
            info: Info::new(c.device, c.label, c.content, c.group.map(|g| g.0)),
        };
        let beat = Beat {
            id,
            rebuild: &rebuild,
            limits: Limits { limit: c.limit, policy: c.policy, group: c.group },
            token_expires_ms: c.expires_ms,
            renew_to_ms,
            carried: lease.stops().map(tombstone_of).collect(),
        };
        let user_key = self.store.user_key(c.tenant, c.user);
        let outcome = self.store.heartbeat(user_key, &beat, now);
        self.metrics.heartbeat(&outcome);
        match outcome {
            BeatOutcome::Renewed { carry, .. } => {
                let carry: Vec<StopClaim<'_>> = carry.iter().map(stop_claim).collect();
                let token = lease.renew_with(renew_to_ms, &carry, &s.server_keys);
                Ok((Issued { session_id: id, token, poll_after: c.poll_secs, expires_ms: renew_to_ms }, admitted))
            }
            BeatOutcome::Lost { .. } => Err(Error::SessionStopped { reason: StopReason::LimitExceeded, by: None }),
            BeatOutcome::Full => Err(Error::OverCapacity),
            BeatOutcome::AlreadyStopped(t) => {
                Err(Error::SessionStopped { reason: t.reason, by: t.by.map(|b| Box::new(b.view())) })
            }
        }
    }

    /// docs/spec.md §4 stop: with the session's own lease token (`ended`) or a grant
    /// for the user (`kicked`). Idempotent.
    pub fn stop(&self, user: &str, id: SessionId, token: &str, now: u64) -> Result<(), Error> {
        let settings = self.settings.load();
        let s = &**settings;
        let (user_key, stop) = if token.starts_with("g1.") {
            let g = self.grant_for(s, user, token, now)?;
            let stop = Stop {
                id,
                reason: StopReason::Kicked,
                by: Some(kicker(&g, now)),
                keep_until_ms: 0,
                unknown_until_ms: now + s.max_token_life_ms(),
                carried: Vec::new(),
            };
            (self.store.user_key(&g.tenant, &g.sub), stop)
        } else {
            let lease = self.lease_for(s, user, id, token, now)?;
            let c = lease.claims();
            // Newer tokens than the one presented may exist; none was issued
            // after now, so none expires after now + ttl.
            let until = c.expires_ms.max(now + s.ttl_ms(c.poll_secs)) + wire::TOKEN_LEEWAY_MS;
            let stop = Stop {
                id,
                reason: StopReason::Ended,
                by: None,
                keep_until_ms: until,
                unknown_until_ms: until,
                carried: lease.stops().map(tombstone_of).collect(),
            };
            (self.store.user_key(c.tenant, c.user), stop)
        };
        let outcome = self.store.stop(user_key, &stop, now);
        self.metrics.session_stop(stop.reason, &outcome);
        match outcome {
            StopOutcome::Full => Err(Error::OverCapacity),
            StopOutcome::Tombstoned { .. } | StopOutcome::Remembered { .. } | StopOutcome::AlreadyStopped => Ok(()),
        }
    }

    /// docs/spec.md §4 sign out everywhere: with a grant for the user, kicks
    /// every session of the user that started before now, in one step:
    /// those held here at once, the others when their heartbeats would
    /// rebuild them. Idempotent.
    pub fn sign_out(&self, user: &str, token: &str, now: u64) -> Result<SignedOut, Error> {
        let settings = self.settings.load();
        let g = self.grant_for(&settings, user, token, now)?;
        // Sessions this node does not hold may have tokens from before now,
        // accepted until now + the longest token life at most.
        let until_ms = now + settings.max_token_life_ms();
        let out = self.store.sign_out(self.store.user_key(&g.tenant, &g.sub), &kicker(&g, now), until_ms, now);
        self.metrics.signed_out(&out);
        Ok(out)
    }

    /// docs/spec.md §4 list: live sessions, oldest first.
    pub fn list(&self, user: &str, token: &str, now: u64) -> Result<Listing, Error> {
        let g = self.grant_for(&self.settings.load(), user, token, now)?;
        let (active, sessions) = self.store.live(self.store.user_key(&g.tenant, &g.sub), g.policy, now);
        Ok(Listing { limit: g.limit, active, sessions: sessions.iter().map(Session::view).collect() })
    }

    /// One pass of the background sweeper (docs/spec.md §7), run now.
    pub fn sweep(&self, now: u64) -> Swept {
        let swept = self.store.sweep(now);
        self.metrics.swept(&swept);
        swept
    }

    /// Starts the store's sweeper: a pass every `every` (see
    /// [`crate::sweeper`]) until `stop` changes.
    pub fn spawn_sweeper(
        &self,
        every: Duration,
        freed: Option<FreedHook>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        self.store.spawn_sweeper(self.metrics.clone(), every, freed, stop)
    }

    /// Puts the exact number of records held into `streamcap_records` (the
    /// other gauges are as of the last sweep).
    pub fn publish_records(&self) {
        self.metrics.records_held(self.store.records());
    }
}

/// The `by` of a kick: the grant holder, who has no session id or expiry;
/// started at the time of the kick, with the grant's text.
fn kicker(g: &Grant, now: u64) -> Arc<By> {
    let info =
        Info::new(g.device.as_deref(), g.label.as_deref(), g.content.as_deref(), g.group.as_ref().map(|g| &*g.0));
    Arc::new(By { id: None, started_ms: now, expires_ms: None, info })
}

/// A stop as a token carries it: times to the second (`until` rounded up,
/// so it is never remembered for less), `by`'s text as the node holds it
/// (the token may shorten it, docs/spec.md §3).
fn stop_claim(t: &Tombstone) -> StopClaim<'_> {
    let secs = |ms: u64| u32::try_from(wire::unix_secs(ms)).unwrap_or(u32::MAX);
    let by = t.by.as_deref();
    let info = by.and_then(|b| b.info.as_deref());
    let text = |f: fn(&Info) -> &Option<Box<str>>| info.and_then(|i| f(i).as_deref());
    StopClaim {
        session: t.id,
        reason: t.reason,
        until_secs: u32::try_from(t.until_ms.div_ceil(1000)).unwrap_or(u32::MAX),
        by_started_secs: by.map_or(0, |b| secs(b.started_ms)),
        by_session: by.and_then(|b| Some((b.id?, secs(b.expires_ms?)))),
        by_device: text(|i| &i.device),
        by_label: text(|i| &i.label),
        by_content: text(|i| &i.content),
        by_group: text(|i| &i.group),
    }
}

/// The tombstone a carried stop stands for on a node that learns it.
fn tombstone_of(c: StopClaim<'_>) -> Tombstone {
    let by = By {
        id: c.by_session.map(|b| b.0),
        started_ms: c.by_started_secs as u64 * 1000,
        expires_ms: c.by_session.map(|b| b.1 as u64 * 1000),
        info: Info::new(c.by_device, c.by_label, c.by_content, c.by_group),
    };
    Tombstone { id: c.session, reason: c.reason, until_ms: c.until_secs as u64 * 1000, by: Some(Arc::new(by)) }
}

/// Session ids: a process-random seed plus a counter, through a bijective
/// mixer, so ids never repeat within a process and are unpredictable across
/// restarts and nodes.
struct SessionIds {
    seed: u64,
    next: AtomicU64,
}

impl SessionIds {
    fn next(&self) -> SessionId {
        // splitmix64's finaliser.
        let mut z =
            self.seed.wrapping_add(self.next.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        SessionId(z ^ (z >> 31))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEV_TENANT, DEV_TENANT_KEY, Overrides};
    use crate::grant::GrantClaims;
    use crate::keys::Key;

    /// A dev-mode limiter, the time now, and a grant for "alice" (limit 2)
    /// with `policy`.
    fn dev_limiter(policy: Option<&str>) -> (Limiter, u64, String) {
        let config = Config::load(&Overrides::default(), None).unwrap();
        let limiter = Limiter::new(config.core, Arc::new(Metrics::default())).unwrap();
        let now = crate::clock::now_ms();
        let secret = Key::parse("dev", DEV_TENANT_KEY).unwrap().secret;
        let grant = GrantClaims {
            tenant: DEV_TENANT.into(),
            sub: "alice".into(),
            limit: 2,
            exp: (now / 1000 + 300) as i64,
            policy: policy.map(Into::into),
            ..Default::default()
        }
        .mint(&secret);
        (limiter, now, grant)
    }

    #[test]
    fn a_start_never_takes_an_id_the_user_already_holds() {
        // A user who can tell which ids come next (they come from a counter)
        // kicks them first: each kick of an unknown id is remembered. A start
        // that drew such an id once put a second record with it in the
        // user's records, which under evict_oldest spun forever.
        let (limiter, now, grant) = dev_limiter(Some("evict_oldest"));
        let upcoming = |k: u64| {
            let ids = &limiter.ids;
            SessionIds { seed: ids.seed, next: AtomicU64::new(ids.next.load(Ordering::Relaxed) + k) }.next()
        };
        for k in 0..ID_ATTEMPTS as u64 {
            limiter.stop("alice", upcoming(k), &grant, now).unwrap();
        }
        // Every id this start draws is taken: refused (503), nothing stored.
        assert!(matches!(limiter.start("alice", &grant, None, now), Err(Error::OverCapacity)));
        let fresh = upcoming(0);
        let started = limiter.start("alice", &grant, None, now + 1).unwrap();
        assert_eq!(started.lease.session_id, fresh);
        limiter.start("alice", &grant, None, now + 2).unwrap();
        let third = limiter.start("alice", &grant, None, now + 3).unwrap();
        assert_eq!(third.admitted.evicted, vec![fresh], "evict_oldest evicts the oldest live session");
        let renewed = limiter.heartbeat("alice", third.lease.session_id, &third.lease.token, now + 4).unwrap();
        assert_eq!(renewed.session_id, third.lease.session_id);
    }

    #[test]
    fn tells_when_every_session_held_has_expired() {
        let (limiter, now, grant) = dev_limiter(None);
        assert_eq!(limiter.store.all_sessions_expired(now), None, "nothing held");
        // A kick of an unknown id leaves a tombstone and no session.
        limiter.stop("alice", SessionId(7), &grant, now).unwrap();
        assert_eq!(limiter.store.all_sessions_expired(now + 86_400_000), None, "no session was ever started");
        let started = limiter.start("alice", &grant, None, now).unwrap();
        let renewed = limiter.heartbeat("alice", started.lease.session_id, &started.lease.token, now + 1000).unwrap();
        let by = renewed.expires_ms.div_ceil(1000) * 1000;
        assert_eq!(limiter.store.all_sessions_expired(by - 1), None, "the session is live until its expiry");
        assert_eq!(limiter.store.all_sessions_expired(by), Some(by));
        assert_eq!(limiter.sweep(by).live, 0);
        assert_eq!(limiter.store.all_sessions_expired(by), Some(by), "the tombstone is still held");
        assert_eq!(limiter.sweep(now + 86_400_000).records, 0);
        assert_eq!(limiter.store.all_sessions_expired(now + 86_400_000), None, "nothing held");
    }
}
