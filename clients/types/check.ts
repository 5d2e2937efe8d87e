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
// The licence route (licenceUrl, licenceAnswer, attachShaka) is checked once
// the document describes it.

import type { components, paths } from './generated/streamcap-api.js';
import type { SessionView, StartResult, StopInfo, StreamcapPlayer } from '../js/streamcap-player.js';

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
