//! docs/spec.md §6 with the real binary: a kick, a `?replace=` and an
//! eviction survive a SIGKILL and restart, because the user's other tokens
//! carry them. For each, one user whose other sessions reach the restarted
//! node first (the stopped player then gets `410` with the original reason
//! and `by` at once), and one whose stopped player comes back first (it is
//! rebuilt, then stopped with the original reason as soon as another
//! session of the user arrives; nobody else is stopped).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use streamcap::grant::GrantClaims;

fn tick() {
    std::thread::sleep(Duration::from_millis(5));
}

/// A node with server key s1 and tenant acme (key k1), and its arguments.
fn node(name: &str) -> (TempDir, Vec<String>) {
    let dir = TempDir::new(name);
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let args = Binary::args(&path, free_port());
    (dir, args)
}

fn grant(user: &str, limit: i64, policy: &str, label: &str) -> String {
    GrantClaims { policy: some(policy), label: some(label), device: some(label), ..acme_claims(user, limit) }
        .mint(&secret(KEY_K1))
}

/// Which of a user's sessions reach the restarted node first.
#[derive(Clone, Copy, Debug)]
enum Order {
    OthersFirst,
    StoppedFirst,
}

/// One user's sessions: `stopped` was stopped before the kill (`by` is
/// what its heartbeat was told then), `others` keep playing (their latest
/// tokens were issued after the stop).
struct Story {
    stopped: Session,
    others: Vec<Session>,
    /// What the stopped player must be told: `reason` and `by`.
    reason: &'static str,
    by: Value,
    list_grant: String,
}

impl Story {
    /// After the restart: the sessions arrive in `order`; the stopped one
    /// ends with `410` and its original reason and `by`, every other one
    /// keeps playing, and the user holds exactly the others.
    fn replay(mut self, api: Client, order: Order) {
        let user = self.stopped.user.clone();
        if let Order::StoppedFirst = order {
            // Unknown after the restart: rebuilt from its token.
            api.beat_ok(&mut self.stopped);
        }
        for s in &mut self.others {
            api.beat_ok(s);
        }
        let body = api.beat_stopped(&self.stopped, self.reason);
        assert_eq!(body["by"], self.by, "{order:?}: the 410 must say who stopped it, as before the restart");
        // Nobody else was stopped, then or at their next heartbeat.
        for s in &mut self.others {
            api.beat_ok(s);
        }
        let mut want: Vec<String> = self.others.iter().map(|s| s.id.clone()).collect();
        let mut listed = api.listed_ids(&user, &self.list_grant);
        want.sort();
        listed.sort();
        assert_eq!(listed, want, "{order:?}");
        let again = api.beat_stopped(&self.stopped, self.reason);
        assert_eq!(again["by"], self.by);
    }
}

/// Runs `setup` for two users, SIGKILLs and restarts the node, and replays
/// one user in each order.
fn across_a_restart(name: &str, setup: impl Fn(Client, &str) -> Story) {
    let (_dir, args) = node(name);
    let mut first = Binary::spawn(&args);
    let api = first.api;
    let stories = [setup(api, &unique("others-first")), setup(api, &unique("stopped-first"))];
    first.kill();
    let second = Binary::spawn(&args);
    assert_eq!(second.api.addr, api.addr, "restarted on the same port");
    let [others_first, stopped_first] = stories;
    others_first.replay(api, Order::OthersFirst);
    stopped_first.replay(api, Order::StoppedFirst);
}

fn start_body(api: Client, user: &str, grant: &str) -> (Session, Value) {
    let body = api.start(user, grant).expect(201);
    let s = Session {
        user: user.to_owned(),
        id: body["session_id"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    };
    (s, body)
}

/// The listed view of session `id`: what a `by` naming it shows.
fn view_of(api: Client, user: &str, grant: &str, id: &str) -> Value {
    let list = api.list(user, grant).expect(200);
    list["sessions"].as_array().unwrap().iter().find(|v| v["session_id"] == id).cloned().expect("listed")
}

/// The story: A and B play (limit 2, reject_new); the phone kicks B
/// with a grant and starts C; A and C heartbeat. Before, after a restart
/// with B's heartbeat first, C got `410 limit_exceeded`.
#[test]
fn a_kick_survives_sigkill_and_restart_in_either_order() {
    across_a_restart("stops-kick", |api, user| {
        let g = grant(user, 2, "reject_new", "TV");
        let phone = grant(user, 2, "reject_new", "Phone");
        let mut a = api.start_ok(user, &g);
        tick();
        let b = api.start_ok(user, &g);
        let before = now_secs();
        api.stop(user, &b.id, &phone).expect(204);
        let after = now_secs();
        let mut c = api.start_ok(user, &phone);
        api.beat_ok(&mut a);
        api.beat_ok(&mut c);
        // What B is told without a restart: the kicker's grant, at the kick.
        let by = api.beat_stopped(&b, "kicked")["by"].clone();
        let kicked_at = by["started_at"].as_i64().unwrap();
        assert!((before..=after).contains(&kicked_at));
        let want = serde_json::json!({
            "session_id": null, "started_at": kicked_at, "expires_at": null,
            "device": "Phone", "label": "Phone", "content": null, "group": null,
        });
        assert_eq!(by, want);
        Story { stopped: b, others: vec![a, c], reason: "kicked", by, list_grant: g }
    });
}

/// B is replaced by C (`?replace=`); A keeps playing.
#[test]
fn a_replace_survives_sigkill_and_restart_in_either_order() {
    across_a_restart("stops-replace", |api, user| {
        let g = grant(user, 2, "reject_new", "TV");
        let mut a = api.start_ok(user, &g);
        tick();
        let b = api.start_ok(user, &g);
        let laptop = grant(user, 2, "reject_new", "Laptop");
        let body = api.start_replacing(user, &laptop, &b.id).expect(201);
        let mut c = Session {
            user: user.to_owned(),
            id: body["session_id"].as_str().unwrap().into(),
            token: body["token"].as_str().unwrap().into(),
        };
        // What B is told without a restart: C as it started.
        let mut want = view_of(api, user, &g, &c.id);
        want["expires_at"] = body["expires_at"].clone();
        let by = api.beat_stopped(&b, "replaced")["by"].clone();
        assert_eq!(by, want);
        api.beat_ok(&mut a);
        api.beat_ok(&mut c);
        Story { stopped: b, others: vec![a, c], reason: "replaced", by, list_grant: g }
    });
}

/// Limit 2, evict_oldest: A, B play; C starts and evicts A; B heartbeats.
/// Before, A's heartbeat first after a restart made A come back with
/// `limit_exceeded` instead of `evicted`.
#[test]
fn an_eviction_survives_sigkill_and_restart_in_either_order() {
    across_a_restart("stops-evict", |api, user| {
        let g = grant(user, 2, "evict_oldest", "TV");
        let a = api.start_ok(user, &g);
        tick();
        let mut b = api.start_ok(user, &g);
        tick();
        let (mut c, body) = start_body(api, user, &grant(user, 2, "evict_oldest", "Tablet"));
        assert_eq!(body["evicted"], serde_json::json!([a.id]));
        let mut want = view_of(api, user, &g, &c.id);
        want["expires_at"] = body["expires_at"].clone();
        let by = api.beat_stopped(&a, "evicted")["by"].clone();
        assert_eq!(by, want);
        api.beat_ok(&mut b);
        api.beat_ok(&mut c);
        Story { stopped: a, others: vec![b, c], reason: "evicted", by, list_grant: g }
    });
}
