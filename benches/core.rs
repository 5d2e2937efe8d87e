//! Hot functions of the request path, each beside a naive baseline in the
//! same group: grant and lease-token verification and minting, and admission
//! and renewal on a store holding 1M users, against a `Mutex<HashMap>` store
//! that runs the same per-user rules, renewals also from two threads at once;
//! and the core's whole heartbeat (verify, store, renew) for a user whose
//! token carries no stops, one and four.
//!
//! `cargo bench --bench core` (about 3 minutes here).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use streamcap::config::{Config, DEV_TENANT, DEV_TENANT_KEY, Overrides};
use streamcap::grant::{self, GrantClaims, PollBounds, Tenant, Tenants};
use streamcap::keys::{Key, KeyRing};
use streamcap::limiter::Limiter;
use streamcap::metrics::Metrics;
use streamcap::policy::{self, Admission, Beat, BeatOutcome, Limits};
use streamcap::session::{Session, Slot};
use streamcap::store::{Store, UserKey};
use streamcap::token::{Lease, LeaseClaims};
use streamcap::wire::{Policy, SessionId};

const NOW: u64 = 1_800_000_000_000;
const TTL: u64 = 90_000;
const USERS: u64 = 1_000_000;
const BOUNDS: PollBounds = PollBounds { default: 30, min: 1, max: 3600 };

fn tenants() -> Tenants {
    let keys = KeyRing::new(vec![Key { kid: "k1".into(), secret: [7; 32] }]).unwrap();
    let mut t = Tenants::default();
    t.insert("acme".into(), Tenant { keys, default_policy: Policy::RejectNew });
    t
}

fn claims() -> LeaseClaims<'static> {
    LeaseClaims {
        tenant: "acme",
        user: "user-123456",
        session: SessionId(0x1234_5678_9abc_def0),
        started_ms: NOW,
        expires_ms: NOW + TTL,
        limit: 3,
        policy: Policy::RejectNew,
        group: None,
        device: Some("device-123456"),
        label: None,
        content: None,
        poll_secs: 30,
    }
}

/// The same claims as a JSON token of the grant's shape: what a lease token
/// would cost without the binary layout.
fn json_token(key: &[u8; 32]) -> String {
    GrantClaims {
        tenant: "acme".into(),
        sub: "user-123456".into(),
        limit: 3,
        device: Some("device-123456".into()),
        exp: (NOW / 1000 + 90) as i64,
        poll: Some(30),
        ..Default::default()
    }
    .mint(key)
}

fn tokens(c: &mut Criterion) {
    let server = KeyRing::new(vec![Key { kid: "s1".into(), secret: [3; 32] }]).unwrap();
    let token = claims().mint(server.signing()).unwrap();
    let json = json_token(&[7; 32]);
    let tenants = tenants();

    let mut g = c.benchmark_group("grant_verify");
    g.bench_function("streamcap", |b| b.iter(|| grant::verify(black_box(&json), &tenants, BOUNDS, NOW).unwrap()));
    g.bench_function("baseline_mac_only", |b| {
        let (signed, _) = json.rsplit_once('.').unwrap();
        b.iter(|| blake3::keyed_hash(&[7; 32], black_box(signed.as_bytes())))
    });
    g.finish();

    let mut g = c.benchmark_group("lease_verify");
    g.bench_function("streamcap_binary", |b| b.iter(|| Lease::verify(black_box(&token), &server, NOW).unwrap()));
    g.bench_function("baseline_json_token", |b| {
        b.iter(|| grant::verify(black_box(&json), &tenants, BOUNDS, NOW).unwrap())
    });
    g.finish();

    let lease = Lease::verify(&token, &server, NOW).unwrap();
    let mut g = c.benchmark_group("lease_mint");
    g.bench_function("streamcap_mint", |b| b.iter(|| black_box(claims()).mint(server.signing()).unwrap()));
    g.bench_function("streamcap_renew", |b| b.iter(|| lease.renew(black_box(NOW + 1), &server)));
    g.bench_function("baseline_json_mint", |b| {
        let c =
            GrantClaims { tenant: "acme".into(), sub: "user-123456".into(), limit: 3, exp: 1, ..Default::default() };
        b.iter(|| black_box(&c).mint(&[7; 32]))
    });
    g.finish();
}

/// The naive store: one lock around a std map, running the same rules.
struct MutexStore(Mutex<HashMap<UserKey, Box<[Slot]>, ahash::RandomState>>);

impl MutexStore {
    fn admit(&self, user: UserKey, a: &Admission<'_>, now: u64) -> bool {
        let mut map = self.0.lock().unwrap();
        let current = map.get(&user).map_or(&[][..], |v| &v[..]);
        match policy::admit(current, a, now) {
            (Some(slots), Ok(_)) => {
                map.insert(user, slots);
                true
            }
            _ => false,
        }
    }

    fn heartbeat(&self, user: UserKey, b: &Beat<'_>, now: u64) -> bool {
        let mut map = self.0.lock().unwrap();
        let current = map.get(&user).map_or(&[][..], |v| &v[..]);
        match policy::heartbeat(current, b, now) {
            (Some(slots), BeatOutcome::Renewed { .. }) => {
                map.insert(user, slots);
                true
            }
            _ => false,
        }
    }
}

const LIMITS: Limits<'static> = Limits { limit: 2, policy: Policy::RejectNew, group: None };

fn admission(id: u64, now: u64) -> Admission<'static> {
    Admission {
        session: Session { id: SessionId(id), started_ms: now, expires_ms: (now + TTL).into(), info: None },
        limits: LIMITS,
        replace: None,
        unknown_until_ms: now + TTL,
    }
}

/// The heartbeat of user `i`'s session (id `i`), renewing it to a full ttl.
fn beat_of(i: usize) -> Beat<'static> {
    fn rebuild() -> Session {
        unreachable!("every benchmarked session exists: a rebuild means one was lost")
    }
    let id = SessionId(i as u64);
    Beat {
        id,
        rebuild: &rebuild,
        limits: LIMITS,
        token_expires_ms: NOW + TTL,
        renew_to_ms: NOW + TTL,
        carried: Vec::new(),
    }
}

/// Exercises one store through `admit` and `heartbeat` closures.
fn store_benches<A, H>(c: &mut Criterion, group: &str, name: &str, admit: A, heartbeat: H)
where
    A: Fn(UserKey, &Admission<'_>, u64) -> bool,
    H: Fn(UserKey, &Beat<'_>, u64) -> bool + Sync,
{
    let hasher = Store::new(0, [5; 16]);
    let keys: Vec<UserKey> = (0..USERS).map(|i| hasher.user_key("acme", &format!("user-{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        assert!(admit(*key, &admission(i as u64, NOW), NOW));
    }

    let mut g = c.benchmark_group(group);
    g.sample_size(30);
    // Renew: every user holds one session; each heartbeat rewrites it.
    let mut i = 0usize;
    g.bench_function(format!("renew_{name}"), |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            assert!(heartbeat(keys[i], &beat_of(i), NOW + 1));
        })
    });
    // The same renewals from two threads at once, on disjoint strides (this
    // machine has two cores): wall time per renewal, so the lock shows.
    g.bench_function(format!("renew_2_threads_{name}"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            thread::scope(|s| {
                for t in 0..2 {
                    let (keys, heartbeat) = (&keys, &heartbeat);
                    s.spawn(move || {
                        let mut i = t * keys.len() / 2;
                        for _ in 0..iters.div_ceil(2) {
                            i = (i + 7919) % keys.len();
                            assert!(heartbeat(keys[i], &beat_of(i), NOW + 1));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    // Admit: time moves on a full ttl per lap, so each visit finds the
    // user's previous session expired and replaces it: one session per user.
    let (mut lap, mut j, mut next_id) = (1u64, 0usize, USERS);
    g.bench_function(format!("admit_{name}"), |b| {
        b.iter(|| {
            j += 1;
            if j == keys.len() {
                (j, lap) = (0, lap + 1);
            }
            next_id += 1;
            let now = NOW + lap * (TTL + 1);
            assert!(admit(keys[j], &admission(next_id, now), now));
        })
    });
    g.finish();
}

fn stores(c: &mut Criterion) {
    let store = Store::new(USERS as usize, [5; 16]);
    store_benches(
        c,
        "store_1m_users",
        "papaya",
        |u, a, now| store.admit(u, a, now).is_ok(),
        |u, b, now| matches!(store.heartbeat(u, b, now), BeatOutcome::Renewed { .. }),
    );
    drop(store);
    let naive = MutexStore(Mutex::new(HashMap::with_capacity_and_hasher(USERS as usize, Default::default())));
    store_benches(
        c,
        "store_1m_users",
        "baseline_mutex_hashmap",
        |u, a, now| naive.admit(u, a, now),
        |u, b, now| naive.heartbeat(u, b, now),
    );
}

/// The core's heartbeat of one session (`Limiter::heartbeat`: verify the
/// token, record its stops, renew in place, renew the token) for a user
/// with 0, 1 and 4 recent stops, in one run: what carrying stops costs, and
/// that a user without them pays nothing for the feature.
fn heartbeats(c: &mut Criterion) {
    let settings = Config::load(&Overrides::default(), None).unwrap().core;
    let limiter = Limiter::new(settings, Arc::new(Metrics::default())).unwrap();
    let secret = Key::parse("dev", DEV_TENANT_KEY).unwrap().secret;
    let now = streamcap::clock::now_ms();
    let grant = |user: &str, label: &str| {
        GrantClaims {
            tenant: DEV_TENANT.into(),
            sub: user.to_owned().into(),
            limit: 8,
            device: Some(format!("{label}-device").into()),
            label: Some(label.to_owned().into()),
            exp: (now / 1000 + 3600) as i64,
            ..Default::default()
        }
        .mint(&secret)
    };
    let mut g = c.benchmark_group("heartbeat_core");
    for stops in [0, 1, 4] {
        let user = format!("viewer-{stops}");
        let me = limiter.start(&user, &grant(&user, "Living room TV"), None, now).unwrap().lease;
        // Sessions kicked by another device of the same user.
        for i in 0..stops {
            let other = limiter.start(&user, &grant(&user, &format!("tv {i}")), None, now).unwrap().lease;
            limiter.stop(&user, other.session_id, &grant(&user, "Phone"), now).unwrap();
        }
        // The player's token after one heartbeat carries the user's stops.
        let token = limiter.heartbeat(&user, me.session_id, &me.token, now).unwrap().token;
        let carried = Lease::verify(&token, limiter_keys(), now).unwrap().stops().count();
        assert_eq!(carried, stops);
        eprintln!("heartbeat_core/{stops}_stops: token of {} bytes", token.len());
        g.bench_function(format!("{stops}_stops"), |b| {
            b.iter(|| limiter.heartbeat(&user, me.session_id, black_box(&token), now + 1).unwrap())
        });
    }
    g.finish();
}

/// The dev server key ring, which the dev-mode limiter above signs with.
fn limiter_keys() -> &'static KeyRing {
    static KEYS: std::sync::OnceLock<KeyRing> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Config::load(&Overrides::default(), None).unwrap().core.server_keys)
}

criterion_group!(benches, tokens, stores, heartbeats);
criterion_main!(benches);
