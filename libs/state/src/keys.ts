// Every Redis key is named here. `{callId}` is a hash tag: one call's keys share a cluster slot.
export const keys = {
  meta: (callId: string) => `vb:{${callId}}:meta`,
  transcript: (callId: string) => `vb:{${callId}}:transcript`,
  toolCalls: (callId: string) => `vb:{${callId}}:tools`,
  turns: (callId: string) => `vb:{${callId}}:turns`,
  speech: (callId: string) => `vb:{${callId}}:speech`,
  dialog: (callId: string) => `vb:{${callId}}:dialog`,
  hints: (callId: string) => `vb:{${callId}}:asr-hints`,
  lease: (callId: string, role: string) => `vb:{${callId}}:lease:${role}`,
  /** How far a role's lease owner got with the call, for the replica that takes it over (store.saveProgress). */
  progress: (callId: string, role: string) => `vb:{${callId}}:progress:${role}`,
  /** Hash of the ids seen once (commitDialog's `once`, tool claims), fields `scope:id`: one key per call, so endCall deletes them all. */
  once: (callId: string) => `vb:{${callId}}:once`,
  /** Hash of the tools' stored results by toolCallId, for requests repeated while the call is live. */
  toolResults: (callId: string) => `vb:{${callId}}:tool-results`,
  /** The hang-up or transfer the bot asked for, until the call ends (store.saveFinalAction). */
  finalAction: (callId: string) => `vb:{${callId}}:final-action`,
  /** Live calls per owner role, scored by lease expiry, so a replica can find calls whose owner died. */
  leaseIndex: (role: string) => `vb:leases:${role}`,
  cache: (namespace: string, digest: string) => `vb:cache:${namespace}:${digest}`,
  /** A client request's Idempotency-Key (store.claimRequest), by its digest: what it asked and what it was answered. */
  request: (scope: string, digest: string) => `vb:request:${scope}:${digest}`,
} as const;

/** Keys that make up the call record; they outlive the call by the record TTL. */
export const recordKeys = (callId: string) => [
  keys.meta(callId),
  keys.transcript(callId),
  keys.toolCalls(callId),
  keys.turns(callId),
  keys.speech(callId),
];

/** Keys that only matter while the call is live; deleted when it ends. */
export const liveKeys = (callId: string, roles: readonly string[]) => [
  keys.dialog(callId),
  keys.hints(callId),
  keys.once(callId),
  keys.toolResults(callId),
  keys.finalAction(callId),
  ...roles.flatMap((role) => [keys.lease(callId, role), keys.progress(callId, role)]),
];
