//! docs/spec.md §5 admission policies end to end: `reject_new`, `evict_oldest`
//! (the Brightcove story), `reject_new_device`, and group limits under
//! eviction.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use streamcap::grant::GrantClaims;

/// Distinct start times (millisecond precision) so "oldest" is unambiguous.
fn tick() {
    std::thread::sleep(Duration::from_millis(5));
}

fn labelled(user: &str, limit: i64, policy: &str, label: &str) -> String {
    GrantClaims { policy: some(policy), label: some(label), ..claims(user, limit) }.mint(&dev_secret())
}

#[test]
fn reject_new_refuses_and_changes_nothing() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("acct");
    let g = grant_with(&user, 2, "reject_new");
    let mut a = api.start_ok(&user, &g);
    tick();
    let mut b = api.start_ok(&user, &g);
    for _ in 0..3 {
        let body = api.start(&user, &g).expect_error(409, "limit_reached");
        assert_eq!(body["active"], 2);
    }
    api.beat_ok(&mut a);
    api.beat_ok(&mut b);
    assert_eq!(api.listed_ids(&user, &g), vec![a.id.clone(), b.id.clone()]);
}

#[test]
fn the_tenant_default_policy_is_reject_new() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("acct");
    api.start_ok(&user, &grant(&user, 1));
    api.start(&user, &grant(&user, 1)).expect_error(409, "limit_reached");
}

/// Ben, Jason and Sarah share one account with a limit of 3 and play;
/// Jamie starts: Ben, the oldest, is evicted and learns who took his slot.
#[test]
fn evict_oldest_brightcove_story() {
    let server = TestServer::dev();
    let api = server.api;
    let account = unique("family");
    let policy = "evict_oldest";
    let mut ben = api.start_ok(&account, &labelled(&account, 3, policy, "Ben"));
    tick();
    let mut jason = api.start_ok(&account, &labelled(&account, 3, policy, "Jason"));
    tick();
    let mut sarah = api.start_ok(&account, &labelled(&account, 3, policy, "Sarah"));
    tick();
    for s in [&mut ben, &mut jason, &mut sarah] {
        api.beat_ok(s);
    }

    let body = api.start(&account, &labelled(&account, 3, policy, "Jamie")).expect(201);
    assert_eq!(body["evicted"], json!([ben.id]), "{body}");
    assert_eq!(body["active"], 3);
    assert_eq!(body["limit"], 3);
    let mut jamie = Session {
        user: account.clone(),
        id: body["session_id"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    };

    let stopped = api.beat_stopped(&ben, "evicted");
    let by = &stopped["by"];
    assert_eq!(by["session_id"], jamie.id.as_str(), "{stopped}");
    assert_eq!(by["label"], "Jamie");
    assert!(by["started_at"].is_u64() && by["expires_at"].is_u64(), "{by}");
    // Definitive: Ben stays stopped.
    api.beat_stopped(&ben, "evicted");

    for s in [&mut jason, &mut sarah, &mut jamie] {
        api.beat_ok(s);
    }
    let g = labelled(&account, 3, policy, "list");
    assert_eq!(api.listed_ids(&account, &g), vec![jason.id.clone(), sarah.id.clone(), jamie.id.clone()]);

    // Next, Ben starts again: Jason is now the oldest.
    let body = api.start(&account, &labelled(&account, 3, policy, "Ben again")).expect(201);
    assert_eq!(body["evicted"], json!([jason.id]));
    assert_eq!(api.beat_stopped(&jason, "evicted")["by"]["label"], "Ben again");
}

#[test]
fn evict_oldest_with_a_lowered_limit_evicts_enough() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("shrink");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(api.start_ok(&user, &grant_with(&user, 3, "evict_oldest")));
        tick();
    }
    // The backend lowered the plan to 1 stream: one start evicts all three.
    let body = api.start(&user, &grant_with(&user, 1, "evict_oldest")).expect(201);
    let mut evicted: Vec<String> =
        body["evicted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    evicted.sort();
    let mut want: Vec<String> = held.iter().map(|s| s.id.clone()).collect();
    want.sort();
    assert_eq!(evicted, want);
    assert_eq!(body["active"], 1);
    for s in &held {
        api.beat_stopped(s, "evicted");
    }
}

#[test]
fn evict_oldest_in_a_group_evicts_the_oldest_of_that_group() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("studio");
    let grouped = |group: &str| {
        GrantClaims { policy: some("evict_oldest"), group: some(group), group_limit: Some(1), ..claims(&user, 3) }
            .mint(&dev_secret())
    };
    let plain = api.start_ok(&user, &grant_with(&user, 3, "evict_oldest"));
    tick();
    let first = api.start_ok(&user, &grouped("studio-a"));
    tick();
    let body = api.start(&user, &grouped("studio-a")).expect(201);
    assert_eq!(body["evicted"], json!([first.id]), "the oldest overall is not in the group");
    api.beat_stopped(&first, "evicted");
    let mut plain = plain;
    api.beat_ok(&mut plain);
}

#[test]
fn reject_new_device_replaces_the_same_device_and_refuses_a_new_one() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("devices");
    let on = |device: &str| {
        GrantClaims { policy: some("reject_new_device"), device: some(device), label: some(device), ..claims(&user, 2) }
            .mint(&dev_secret())
    };
    let tv = api.start_ok(&user, &on("tv"));
    tick();
    let mut phone = api.start_ok(&user, &on("phone"));
    tick();
    // The TV app restarts (or crashed and left an orphan): same device, replaced.
    let body = api.start(&user, &on("tv")).expect(201);
    assert_eq!(body["active"], 2);
    let mut tv2 = Session {
        user: user.clone(),
        id: body["session_id"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    };
    let stopped = api.beat_stopped(&tv, "replaced");
    assert_eq!(stopped["by"]["session_id"], tv2.id.as_str(), "{stopped}");
    assert_eq!(stopped["by"]["device"], "tv");
    // A third device is over the limit of 2 devices.
    let refused = api.start(&user, &on("laptop")).expect_error(409, "limit_reached");
    assert_eq!(refused["limit"], 2);
    assert_eq!(refused["active"], 2);
    let devices: Vec<&Value> = refused["sessions"].as_array().unwrap().iter().map(|s| &s["device"]).collect();
    assert_eq!(devices, vec!["phone", "tv"], "oldest first: {refused}");
    api.beat_ok(&mut phone);
    api.beat_ok(&mut tv2);
    // Once the phone stops, the laptop may play.
    assert_eq!(api.stop(&user, &phone.id, &phone.token).status, 204);
    api.start_ok(&user, &on("laptop"));
}

#[test]
fn replace_lets_a_full_account_switch_streams() {
    let server = TestServer::dev();
    let api = server.api;
    let user = unique("switch");
    let g = grant_with(&user, 2, "reject_new");
    let a = api.start_ok(&user, &g);
    let mut b = api.start_ok(&user, &g);
    api.start(&user, &g).expect_error(409, "limit_reached");
    // "Stop the stream on the other TV and play here."
    let body = api.start_replacing(&user, &g, &a.id).expect(201);
    assert_eq!(body["active"], 2);
    let by = api.beat_stopped(&a, "replaced")["by"].clone();
    assert_eq!(by["session_id"], body["session_id"]);
    api.beat_ok(&mut b);
}
