//! streamcap: a stream-concurrency limiter. Players start a session, renew
//! it with heartbeats and stop it; an account over its limit is refused or
//! loses its oldest stream. All state is in RAM; the lease tokens players
//! hold carry enough to rebuild every session after a restart.
//!
//! # Layout
//!
//! - [`wire`]: the contract: JSON shapes, error codes, limits, defaults.
//! - [`keys`]: key material and key rings.
//! - [`grant`]: grants minted by tenants' backends (parse, verify, mint).
//! - [`token`]: lease tokens minted by the server (mint, verify, renew).
//! - [`session`]: the records held per user: sessions, tombstones, who stopped whom.
//! - [`policy`]: the admission, healing and expiry rules over one user's records, pure.
//! - [`store`]: every user's records in a lock-free map; one atomic step per operation.
//! - [`sweeper`]: the store's background task that drops what expired, paced; memory release.
//! - [`clock`]: the wall clock, read in one place.
//! - [`limiter`]: the core service: credentials in, store operations, answers out.
//! - [`metrics`]: counters and their Prometheus rendering.
//! - [`http`]: the HTTP adapter: routes, bodies, CORS, the one error-to-status map.
//! - [`licence`]: the licence gate's route: a heartbeat, then the challenge forwarded.
//! - [`upstream`]: licence servers per tenant and DRM system, and the pooled client to them.
//! - [`server`]: listeners, the connection cap, shutdown.
//! - [`conn`]: per-connection idle and head timeouts, repeated `Content-Length`.
//! - [`config`]: file, environment and flags, validated; dev mode.
//! - [`app`]: `serve`: runtime, signals, reload on SIGHUP, the dev banner.
//! - [`cli`]: the command line; `mint` and `keygen`.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod grant;
pub mod http;
pub mod keys;
pub mod licence;
pub mod limiter;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod session;
pub mod store;
pub mod sweeper;
pub mod token;
pub mod upstream;
pub mod wire;
