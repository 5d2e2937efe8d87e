// The player module's use of the API, type-checked against the types that
// openapi-typescript generates from docs/openapi.yaml (generated/, by
// `npm run check`). Nothing here runs: `tsc` compiling this file is the check.
//
// Each block below is one call of clients/js/streamcap-player.js: its method
// and path, the statuses it branches on, and every field it reads from the
// answer, fed into the module's own result types (its JSDoc typedefs and
// method return types, read from the module by `allowJs`). A field renamed,
// removed or retyped in the document, a status the module relies on that the
// document drops, or a module typedef that no longer fits the document fails
// the build.
//
// The licence route's calls (licenceUrl, licenceAnswer, attachShaka) come
// from a DRM player, not from the module's own fetch: the checks below hold
// the module's system names, the response headers it reads and the
// statuses it branches on to the document.

import type { components, paths } from './generated/streamcap-api.js';
import type { SessionView, StartResult, StopInfo, StreamcapPlayer } from '../js/streamcap-player.js';
import type { KEY_SYSTEMS } from '../js/streamcap-player.js';

type Schemas = components['schemas'];

/** The operation the document gives `method` on `path`; `never` when there is none. */
type Op<P extends keyof paths, M extends string> = M extends keyof paths[P]
  ? paths[P][M] extends { responses: object }
    ? paths[P][M]
    : never
  : never;

/** The JSON body of `status` in an operation's answers; `never` when it has none. */
type Json<O, S extends number> = O extends { responses: infer R }
  ? S extends keyof R
    ? R[S] extends { content: { 'application/json': infer B } }
      ? B
      : never
    : never
  : never;

/** Every JSON error body an operation documents. */
type ErrorBodies<O> = O extends { responses: infer R }
  ? { [S in keyof R]: S extends 200 | 201 | 204 ? never : R[S] extends { content: { 'application/json': infer B } } ? B : never }[keyof R]
  : never;

type IsNever<T> = [T] extends [never] ? true : false;
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
/** Compiles only when `T` is `true`. */
function holds<T extends true>(): T | void {}

type StartOp = Op<'/v1/users/{user}/sessions', 'post'>;
type ListOp = Op<'/v1/users/{user}/sessions', 'get'>;
type HeartbeatOp = Op<'/v1/users/{user}/sessions/{session_id}/heartbeat', 'post'>;
type StopOp = Op<'/v1/users/{user}/sessions/{session_id}', 'delete'>;
type Result<K extends 'start' | 'kick' | 'list'> = Awaited<ReturnType<StreamcapPlayer[K]>>;

// The four calls exist with the methods the module sends.
holds<Equal<IsNever<StartOp | ListOp | HeartbeatOp | StopOp>, false>>();
holds<Equal<IsNever<StartOp>, false>>();
holds<Equal<IsNever<ListOp>, false>>();
holds<Equal<IsNever<HeartbeatOp>, false>>();
holds<Equal<IsNever<StopOp>, false>>();

// The session view: the module's typedef has the document's fields, no
// more, and takes the views of lists, 409s and `by` (kicks included).
holds<Equal<keyof SessionView, keyof Schemas['SessionView']>>();
holds<Equal<keyof SessionView, keyof Schemas['StoppedBy']>>();
export const listed: SessionView = {} as Schemas['SessionView'];
export const stopper: SessionView = {} as Schemas['StoppedBy'];

// start(): POST /v1/users/{user}/sessions[?replace={session_id}] with the grant.
declare const started: Json<StartOp, 201>;
declare const refused: Json<StartOp, 409>;
export const replaceQuery: NonNullable<StartOp['parameters']['query']> = { replace: started.session_id };
export const onStarted: StartResult & Result<'start'> = {
  ok: true,
  status: 201,
  sessionId: started.session_id,
  active: started.active,
  limit: started.limit,
  evicted: started.evicted,
};
export const startLease: { token: string; poll_after: number; expires_at: number } = started; // #renew
export const onRefused: StartResult = {
  ok: false,
  status: 409,
  error: refused.error,
  message: refused.message,
  limit: refused.limit,
  active: refused.active,
  sessions: refused.sessions,
};
// Any other answer: #errorOf reads `error` and `message` of whatever body came.
export const startErrors: { error: string; message: string } = {} as ErrorBodies<StartOp>;
// A lost race with stop(): the module stops the session it just got, with its token.
export const orphanStop: [string, string] = [started.session_id, started.token];

// Heartbeats: POST /v1/users/{user}/sessions/{session_id}/heartbeat with the newest token.
declare const renewed: Json<HeartbeatOp, 200>;
declare const stopped: Json<HeartbeatOp, 410>;
export const heartbeatLease: { session_id: string; token: string; poll_after: number; expires_at: number } = renewed;
export const onStopped: StopInfo = {
  reason: stopped.reason,
  by: stopped.by,
  status: 410,
  local: false,
  error: stopped.error,
  message: stopped.message,
};
// 401 and 403 end the session too (the module's DEFINITIVE map): both documented, with an error body.
holds<Equal<IsNever<Json<HeartbeatOp, 401>>, false>>();
holds<Equal<IsNever<Json<HeartbeatOp, 403>>, false>>();
export const heartbeatErrors: { error: string; message: string } = {} as ErrorBodies<HeartbeatOp>;
export const stopReasons: StopInfo['reason'] = {} as Schemas['StopReason'];

// stop() and kick(): DELETE /v1/users/{user}/sessions/{session_id}, 204 without a body.
holds<Equal<IsNever<Json<StopOp, 204>>, true>>();
holds<Equal<204 extends keyof StopOp['responses'] ? true : false, true>>();
export const onKicked: Result<'kick'> = { ok: true, status: 204 };
export const kickErrors: Result<'kick'> & { error: string; message: string } = {
  ok: false,
  status: 403,
  ...({} as ErrorBodies<StopOp>),
};

// list(): GET /v1/users/{user}/sessions with the grant.
declare const listing: Json<ListOp, 200>;
export const onListed: Result<'list'> = {
  ok: true,
  status: 200,
  limit: listing.limit,
  active: listing.active,
  sessions: listing.sessions,
};
export const listErrors: { error: string; message: string } = {} as ErrorBodies<ListOp>;

// signOutEverywhere(): DELETE /v1/users/{user}/sessions with the grant, 200 {stopped}.
type SignOutOp = Op<'/v1/users/{user}/sessions', 'delete'>;
type SignOutResult = Awaited<ReturnType<StreamcapPlayer['signOutEverywhere']>>;
holds<Equal<IsNever<SignOutOp>, false>>();
declare const signedOut: Json<SignOutOp, 200>;
export const onSignedOut: SignOutResult = { ok: true, status: 200, stopped: signedOut.stopped };
export const signOutErrors: SignOutResult & { error: string; message: string } = {
  ok: false,
  status: 403,
  ...({} as ErrorBodies<SignOutOp>),
};

// Retry-After: the module reads it from any answer (#call) for the retry
// delay; in a browser it is readable only when the API exposes it.
type Headers<O, S extends string | number> = O extends { responses: infer R }
  ? S extends keyof R
    ? R[S] extends { headers: infer H }
      ? H
      : never
    : never
  : never;
/** The header names listed in an `Access-Control-Expose-Headers` value. */
type Listed<V> = V extends `${infer A}, ${infer B}` ? Lowercase<A> | Listed<B> : V extends string ? Lowercase<V> : never;
holds<Equal<'retry-after' extends Listed<Headers<StartOp, 503>['Access-Control-Expose-Headers']> ? true : false, true>>();
holds<Equal<'retry-after' extends Listed<Headers<HeartbeatOp, 503>['Access-Control-Expose-Headers']> ? true : false, true>>();
export const retryAfter: number = {} as Headers<StartOp, 503>['Retry-After'];

// The licence gate: POST /v1/users/{user}/sessions/{session_id}/licence/{system}
// with the newest lease token, as licenceUrl(system) builds it for a DRM player.
type LicenceOp = Op<'/v1/users/{user}/sessions/{session_id}/licence/{system}', 'post'>;
type LicencePreflightOp = Op<'/v1/users/{user}/sessions/{session_id}/licence/{system}', 'options'>;
holds<Equal<IsNever<LicenceOp>, false>>();
holds<Equal<IsNever<LicencePreflightOp>, false>>();
// licenceUrl's `system` and the gate's names in KEY_SYSTEMS are the document's systems, all of them.
type ModuleSystem = Parameters<StreamcapPlayer['licenceUrl']>[0];
holds<Equal<ModuleSystem, LicenceOp['parameters']['path']['system']>>();
holds<Equal<ModuleSystem, Schemas['DrmSystem']>>();
export const keySystems: Record<string, Schemas['DrmSystem']> = {} as typeof KEY_SYSTEMS;
holds<Equal<(typeof KEY_SYSTEMS)[keyof typeof KEY_SYSTEMS], Schemas['DrmSystem']>>();
export const licencePath: LicenceOp['parameters']['path'] = {
  user: 'alice',
  session_id: started.session_id,
  system: 'clearkey' satisfies ModuleSystem,
};

// licenceAnswer(): an answer that carries the renewed lease renews it (the
// licence server's answer, whatever its status, and the gate's 502 and 504).
// It reads Streamcap-Token, Streamcap-Expires-At and Streamcap-Poll-After:
// each is a header of those answers, exposed to pages, and holds what a
// heartbeat's `token`, `expires_at` and `poll_after` hold.
type LeaseHeaders = 'streamcap-token' | 'streamcap-expires-at' | 'streamcap-poll-after';
type Renewing = Headers<LicenceOp, 'default'> | Headers<LicenceOp, 502> | Headers<LicenceOp, 504>;
type Named<H> = Lowercase<Extract<keyof H, string>>;
holds<Equal<LeaseHeaders extends Named<Headers<LicenceOp, 'default'>> ? true : false, true>>();
holds<Equal<LeaseHeaders extends Named<Headers<LicenceOp, 502>> ? true : false, true>>();
holds<Equal<LeaseHeaders extends Named<Headers<LicenceOp, 504>> ? true : false, true>>();
holds<Equal<LeaseHeaders extends Listed<Renewing['Access-Control-Expose-Headers']> ? true : false, true>>();
declare const licenceAnswered: Headers<LicenceOp, 'default'>;
export const licenceLease: { token: string; expires_at: number; poll_after: number } = {
  token: licenceAnswered['Streamcap-Token'],
  expires_at: licenceAnswered['Streamcap-Expires-At'],
  poll_after: licenceAnswered['Streamcap-Poll-After'],
};
export const sameLease: [string, number, number] = [renewed.token, renewed.expires_at, renewed.poll_after];
export const licenceHeaderTypes: [Schemas['LeaseToken'], Schemas['UnixSeconds'], Schemas['PollAfter']] = [
  licenceAnswered['Streamcap-Token'],
  licenceAnswered['Streamcap-Expires-At'],
  licenceAnswered['Streamcap-Poll-After'],
];
// The gate's own refusals: 410, 401 and 403 end the session as a heartbeat's
// do (the module's DEFINITIVE map), with the same bodies; the 410 gives
// StopInfo its `reason` and `by`.
declare const licenceStopped: Json<LicenceOp, 410>;
export const onLicenceStopped: StopInfo = {
  reason: licenceStopped.reason,
  by: licenceStopped.by,
  status: 410,
  local: false,
  error: licenceStopped.error,
  message: licenceStopped.message,
};
holds<Equal<Json<LicenceOp, 410>, Json<HeartbeatOp, 410>>>();
holds<Equal<Json<LicenceOp, 401>, Json<HeartbeatOp, 401>>>();
holds<Equal<Json<LicenceOp, 403>, Json<HeartbeatOp, 403>>>();
// The gate's 502 and 504 say `upstream_unavailable` and `upstream_timeout`,
// codes of the document's ErrorCode; every error body has `error` and `message`.
holds<Equal<Json<LicenceOp, 502>['error'] | Json<LicenceOp, 504>['error'], 'upstream_unavailable' | 'upstream_timeout'>>();
holds<Equal<'upstream_unavailable' | 'upstream_timeout' extends Schemas['ErrorCode'] ? true : false, true>>();
export const licenceErrors: { error: Schemas['ErrorCode']; message: string } = {} as ErrorBodies<LicenceOp>;
