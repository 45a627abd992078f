import { createHash } from "node:crypto";
import { Redis } from "ioredis";
import { redisConnectionOptions, type RedisTarget } from "./connection.js";
import { keys, liveKeys, recordKeys } from "./keys.js";

/** dialing: an outbound call placed and not answered yet (no stream); live: streaming; ended. */
export type CallState = "dialing" | "live" | "ended";

export interface TranscriptEntry {
  role: "caller" | "bot";
  text: string;
  /** ISO time. */
  at: string;
  /** How the caller's input came in. */
  source?: "speech" | "keypad";
  /** Recognition confidence for speech. */
  confidence?: number;
  /** The bot was cut off: text holds only what the caller heard. */
  interrupted?: boolean;
}

export interface ToolCallEntry {
  name: string;
  arguments: unknown;
  result: unknown;
  ok: boolean;
  error?: string;
  ms: number;
  at: string;
}

export interface TurnEntry {
  turnId: string;
  /** Caller input end -> first bot audio sent to the caller, ms. */
  latencyMs: number;
  inputEndAt: string;
  firstAudioAt: string;
  /** The split by stage, in ms, where known. */
  stages: Record<string, number>;
}

/** One synthesized chunk of bot speech: how long the TTS stage took to its first audio. */
export interface SpeechChunkEntry {
  turnId: string;
  chunkSeq: number;
  /** "engine" or "cache". */
  source: string;
  engine: string;
  /** Request received by tts -> first audio published, ms. */
  firstAudioMs: number;
  at: string;
}

export interface CallMeta {
  callSid: string;
  provider: string;
  streamSid: string;
  agent: string;
  from: string;
  to: string;
  startedAt: string;
}

export interface CallRecord extends CallMeta {
  state: CallState;
  endedAt: string | null;
  endReason: string | null;
  transcript: TranscriptEntry[];
  toolCalls: ToolCallEntry[];
  turns: TurnEntry[];
  /** Per chunk of bot speech, the TTS time to first audio. */
  speech: SpeechChunkEntry[];
  /** Who answered a placed call, when answering machine detection ran (Twilio's AnsweredBy: human, machine_end_beep, fax...). */
  answeredBy?: string;
  /** Where a call that ended with reason `transfer` was sent (a phone number or SIP URI), when the voice webhook dials it. */
  transferTo?: string;
  /** Oldest entries dropped from the lists to keep a long call's record bounded (CALL_RECORD_MAX_ENTRIES a list). */
  trimmedEntries?: number;
}

/** What store.createCall did: wrote the record, or found the call ended or live on another stream. */
export type CallCreation = "created" | "ended" | "live_elsewhere";

/** A hang-up or transfer the bot asked for (store.saveFinalAction). */
export interface FinalAction {
  action: "hangup" | "transfer";
  /** For a transfer: the number or SIP URI to dial. */
  target?: string;
  reason: string;
}

function parseFinalAction(text: string | undefined): FinalAction | undefined {
  if (!text) return undefined;
  try {
    const parsed = JSON.parse(text) as Partial<FinalAction>;
    if (parsed.action !== "hangup" && parsed.action !== "transfer") return undefined;
    return { action: parsed.action, reason: String(parsed.reason ?? ""), ...(typeof parsed.target === "string" ? { target: parsed.target } : {}) };
  } catch {
    return undefined;
  }
}

export type RequestClaim = { kind: "claimed" | "pending" | "mismatch" } | { kind: "done"; answer: string };

function digestOf(text: string): string {
  return createHash("sha256").update(text).digest("base64url");
}

/** What the voice webhook needs of a call to resume it, hang it up or transfer it ("" for a field not set). */
export interface CallParties {
  state: CallState | undefined;
  agent: string;
  from: string;
  to: string;
  endReason: string;
  transferTo: string;
  /** ISO time the call started ("" when unknown). */
  startedAt: string;
  /** A placed call's stream parameters (createDialingCall); {} for none. */
  streamParams: Record<string, string>;
}

/** A JSON object of strings, as createDialingCall stored it; anything else reads as none. */
function parseStreamParams(text: string | null): Record<string, string> {
  if (!text) return {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) return {};
    return Object.fromEntries(Object.entries(parsed).filter((entry): entry is [string, string] => typeof entry[1] === "string"));
  } catch {
    return {};
  }
}

export interface CallStoreOptions {
  /** How long a live call's keys live without activity (safety net for a lost hang-up). */
  liveTtlMs: number;
  /** How long the record stays after the call ends. */
  recordTtlMs: number;
  /**
   * How long a connection may wait for a reply before it is taken for dead, dropped and made again (with Sentinel:
   * to whoever is master now). A link that stops answering without closing (a partition, a node gone dark) would
   * otherwise hold every command until TCP gives up, many minutes. Default 5 s: far above any reply a loaded Redis
   * gave in the benchmarks (~0.3 s), and longer than a short stall that passes by itself.
   */
  linkTimeoutMs?: number;
  /**
   * Most entries a call record keeps per list (caller lines, turns, tool calls, speech chunks): a call that goes on
   * for hours keeps its latest ones, and the record says how many older ones it dropped. Default 2,000.
   */
  recordMaxEntries?: number;
}

const DEFAULT_LINK_TIMEOUT_MS = 5_000;
/** CallStoreOptions.recordMaxEntries when not given (CALL_RECORD_MAX_ENTRIES). */
export const DEFAULT_RECORD_MAX_ENTRIES = 2_000;

export const defaultStoreOptions: CallStoreOptions = {
  liveTtlMs: 6 * 60 * 60 * 1000,
  recordTtlMs: 2 * 60 * 60 * 1000,
};

/** Roles that hold per-call leases; their leases are dropped when the call ends. */
/** asr: who recognizes the call; dialog: who takes its turn; stream: which ingress streams it (Twilio's socket). */
export const leaseRoles = ["asr", "dialog", "stream"] as const;

// KEYS: meta, final action. ARGV: the new stream's id. A call resumed on a new media stream: the record names that
// stream, if the call is still live, and the hand-over mark of its last stream is taken. Returns {state or '',
// startedAt or '', handedOver '1' or '', the final action's JSON or '', the no-input wait at the hand-over or ''}.
const RESUME_SCRIPT = `
local call = redis.call('HGET', KEYS[1], 'state')
local handover = redis.call('HGET', KEYS[1], 'handover') or ''
local wait = redis.call('HGET', KEYS[1], 'handoverNoInputMs') or ''
if call == 'live' then redis.call('HSET', KEYS[1], 'streamSid', ARGV[1]) end
redis.call('HDEL', KEYS[1], 'handover', 'handoverNoInputMs')
return {call or '', redis.call('HGET', KEYS[1], 'startedAt') or '', handover, redis.call('GET', KEYS[2]) or '', wait}`;

// KEYS: meta, final action. ARGV: the action's JSON, TTL. Kept only for a live call. Returns 1 if saved.
const FINAL_ACTION_SCRIPT = `
if redis.call('HGET', KEYS[1], 'state') ~= 'live' then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1`;

// KEYS: meta. ARGV: the caller's no-input wait at that moment (ms, or ''). Marks a live call's stream as handed over
// on purpose (never creates or revives a record).
const MARK_HANDOVER_SCRIPT = `
if redis.call('HGET', KEYS[1], 'state') ~= 'live' then return 0 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'handoverNoInputMs', ARGV[1]) end
return redis.call('HSET', KEYS[1], 'handover', '1')`;

const LEASE_SCRIPT = `
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`;

// KEYS: the dialog lease, the dialog state. ARGV: owner, TTL, the state's version the owner last saw. Extends the
// lease while it is still this owner's. One that expired (Redis was unreachable past its TTL) is taken again only if
// it is free and the state is still at that version: nobody took the turn over and saved meanwhile. Returns 1 if held.
const EXTEND_DIALOG_SCRIPT = `
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder == false and (redis.call('HGET', KEYS[2], 'v') or '0') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`;

const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

// KEYS: lease, meta, progress. ARGV: owner, TTL, progress or '', progress TTL. One call's lease renewal and its
// state, in its own slot; the owner's progress is saved with it (only while it holds the lease). An ended call's
// lease is not taken again (endCall deleted it). Returns {held, call state or ''}.
const RENEW_SCRIPT = `
local call = redis.call('HGET', KEYS[2], 'state')
if call == 'ended' then return {0, 'ended'} end
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return {0, call or ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
return {1, call or ''}`;

// KEYS: lease, progress. ARGV: owner, progress, TTL. Saves the owner's progress while it holds the lease (an owner
// that lost it must not overwrite its successor's). Returns 1 if saved.
const PROGRESS_SCRIPT = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1`;

// KEYS: meta, lease, dialog state, once hash. ARGV: owner, lease TTL, mark or '', once field, live TTL, '1' to mark
// only while there is no state yet. The start of a dialog turn: the call must be live, the lease free or ours; then
// the state (version v, data d) and the mark of the input in progress (p). With a mark and no input in progress,
// this input becomes the one in progress in the same step (v bumped, once field set), unless d still holds a mark
// of the older format (inside the data).
// Returns {call state or ''} | {'live', 0} (lease busy) | {'live', 1, version, data or '', mark or '', 1/0 first
// time for the once field when this call set the mark, else -1}.
const TAKE_TURN_SCRIPT = `
local call = redis.call('HGET', KEYS[1], 'state')
if call ~= 'live' then return {call or ''} end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return {'live', 0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local loaded = redis.call('HMGET', KEYS[3], 'v', 'd', 'p')
local version = loaded[1] or '0'
local data = loaded[2] or ''
if ARGV[3] ~= '' and not loaded[3] and (ARGV[6] ~= '1' or data == '') and not string.find(data, '"inProgress":', 1, true) then
  version = tostring(tonumber(version) + 1)
  redis.call('HSET', KEYS[3], 'v', version, 'p', ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  local first = redis.call('HSETNX', KEYS[4], ARGV[4], '1')
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  return {'live', 1, version, data, ARGV[3], first}
end
return {'live', 1, version, data, loaded[3] or '', -1}`;

// KEYS: dialog state, meta, once hash, hints, lease. ARGV: version, data, ttl, once field or '', hints JSON or '',
// lease owner to release or '', what to do with the mark of the input in progress ('keep', 'clear' or 'set'), the
// mark to set. The versioned save of the dialog state, refused for an ended call; with it, only when it is saved:
// the mark, the once field, the hints, the lease's release. Returns {-1, 'ended'} | {0, call state or ''} (another
// save came first) | {new version, 1/0 first time for the once field, or -1 without one}.
const COMMIT_SCRIPT = `
local call = redis.call('HGET', KEYS[2], 'state')
if call == 'ended' then return {-1, 'ended'} end
if ARGV[9] ~= '' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[9] then return {-2, call or ''} end
end
local version = redis.call('HGET', KEYS[1], 'v') or '0'
if version ~= ARGV[1] then return {0, call or ''} end
local nextVersion = tonumber(version) + 1
redis.call('HSET', KEYS[1], 'v', tostring(nextVersion), 'd', ARGV[2])
if call == 'live' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
if ARGV[7] == 'set' then redis.call('HSET', KEYS[1], 'p', ARGV[8]) elseif ARGV[7] == 'clear' then redis.call('HDEL', KEYS[1], 'p') end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local first = -1
if ARGV[4] ~= '' then
  first = redis.call('HSETNX', KEYS[3], ARGV[4], '1')
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[3]) end
if ARGV[6] ~= '' and redis.call('GET', KEYS[5]) == ARGV[6] then redis.call('DEL', KEYS[5]) end
return {nextVersion, first}`;

// KEYS: dialog state. ARGV: mark. Clears the mark of the input in progress if it is still this one.
const CLEAR_MARK_SCRIPT = `
if redis.call('HGET', KEYS[1], 'p') == ARGV[1] then return redis.call('HDEL', KEYS[1], 'p') end
return 0`;

// KEYS: the lease that must be free, the record keys (meta first), the live keys, the lease indexes. ARGV: check the
// lease and that the call is live ('1') or not ('0'), how many record and live keys, record TTL, call id, endedAt,
// reason, transferTo or ''. Marks the call ended, keeps its record for the record TTL and deletes the rest.
// Returns 1, or 0 when the check failed (nothing changed).
const END_CALL_SCRIPT = `
local records, lives = tonumber(ARGV[2]), tonumber(ARGV[3])
local meta = KEYS[2]
if ARGV[1] == '1' and (redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HGET', meta, 'state') ~= 'live') then return 0 end
redis.call('HSET', meta, 'state', 'ended', 'endedAt', ARGV[6], 'endReason', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', meta, 'transferTo', ARGV[8]) end
for i = 2, 1 + records do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
for i = 2 + records, 1 + records + lives do redis.call('DEL', KEYS[i]) end
for i = 2 + records + lives, #KEYS do redis.call('ZREM', KEYS[i], ARGV[5]) end
return 1`;

// KEYS: a record list. ARGV: index, the entry expected there, its replacement. Replaces it only if it is still there
// (an append that trimmed the list moves every entry). Returns 1 if replaced.
const REPLACE_ENTRY_SCRIPT = `
if redis.call('LINDEX', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('LSET', KEYS[1], ARGV[1], ARGV[3])
return 1`;

// KEYS: meta, record list, once hash. ARGV: entry, live TTL, record TTL, once field or '', most entries. Appends to
// a record list, dropping its oldest entries past the most (counted in the record's 'trimmed' field).
// Once the call has ended the list keeps the record's remaining life (an append must not renew it to the live
// TTL), and the once field is not checked: endCall deleted the once hash, and no input of an ended call is redone.
// An entry equal to one of the list's latest is not appended again: ioredis sends a command again when its link
// dropped before the reply, though Redis may have run it (every entry carries its time, so two distinct ones differ).
// Returns 0 when the once field or the entry was seen before (nothing appended), else 1.
/** How many of a list's latest entries an append compares with (appends of other stages may land in between). */
const RESENT_APPEND_WINDOW = 16;

const APPEND_SCRIPT = `
local state = redis.call('HGET', KEYS[1], 'state')
local ended = state == 'ended'
-- A live call's record lives the live TTL from its last activity, not from its start.
if state == 'live' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[4] ~= '' and not ended then
  if redis.call('HSETNX', KEYS[3], ARGV[4], '1') == 0 then return 0 end
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
for _, recent in ipairs(redis.call('LRANGE', KEYS[2], -${RESENT_APPEND_WINDOW}, -1)) do
  if recent == ARGV[1] then return 0 end
end
local length = redis.call('RPUSH', KEYS[2], ARGV[1])
local most = tonumber(ARGV[5])
if length > most then
  redis.call('LTRIM', KEYS[2], length - most, -1)
  -- Only a record that exists (and so expires) is counted in: a stray append must not make a meta without a TTL.
  if state then redis.call('HINCRBY', KEYS[1], 'trimmed', length - most) end
end
local ttl = tonumber(ARGV[2])
if ended then
  ttl = redis.call('PTTL', KEYS[1])
  if ttl <= 0 then ttl = tonumber(ARGV[3]) end
end
redis.call('PEXPIRE', KEYS[2], ttl)
return 1`;

// KEYS: meta. ARGV: live TTL, the stream's id, then field, value pairs. A call's record, unless the call has ended
// (a call sid is used once: a stream that starts one again, not a resume, must not bring it back to life) or is live
// on another stream (a start for a live call is not Twilio's: it resumes a call with a resume, and must not take
// it over). The same stream writing it again (a retry) is fine. Returns 1 if written, 0 ended, -1 live elsewhere.
const CREATE_SCRIPT = `
local found = redis.call('HMGET', KEYS[1], 'state', 'streamSid')
if found[1] == 'ended' then return 0 end
if found[1] == 'live' and found[2] ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('HSET', KEYS[1], 'state', 'live')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1`;

// KEYS: meta. ARGV: TTL, call sid, agent, from, to. An outbound call just placed: its record says dialing, unless
// a status callback (or the answered call's stream) got there first, which only the agent is added to.
const DIALING_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'agent', ARGV[3])
  return 0
end
redis.call('HSET', KEYS[1], 'callSid', ARGV[2], 'agent', ARGV[3], 'provider', 'twilio', 'from', ARGV[4], 'to', ARGV[5], 'state', 'dialing')
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'streamParams', ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1`;

// KEYS: request. ARGV: fingerprint, claim TTL, holder. The first request with an Idempotency-Key claims it; a later
// one finds the answer it got (or that it is still being answered, or that the key came with another request). The
// holder's own claim sent again (ioredis resends a script whose reply a lost link took) is claimed, not pending.
const CLAIM_REQUEST_SCRIPT = `
local fingerprint = redis.call('HGET', KEYS[1], 'f')
if not fingerprint then
  redis.call('HSET', KEYS[1], 'f', ARGV[1], 'h', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
if fingerprint ~= ARGV[1] then return {'mismatch'} end
local answer = redis.call('HGET', KEYS[1], 'a')
if answer then return {'done', answer} end
if redis.call('HGET', KEYS[1], 'h') == ARGV[3] then return {'claimed'} end
return {'pending'}`;

// KEYS: meta. ARGV: call sid, endedAt, reason, record TTL, from, to. An outbound call that ended without a stream
// (busy, no answer, failed, cancelled, or answered while the stream never came): ended with that reason, whether its
// record says dialing or does not exist yet; a call that went live is left to its stream. Returns 1 if it ended it.
const END_UNANSWERED_SCRIPT = `
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'dialing' then return 0 end
if not state then redis.call('HSET', KEYS[1], 'callSid', ARGV[1], 'provider', 'twilio', 'from', ARGV[5], 'to', ARGV[6]) end
redis.call('HSET', KEYS[1], 'state', 'ended', 'endedAt', ARGV[2], 'endReason', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1`;

// KEYS: meta, tool results hash, once hash. ARGV: toolCallId, once field, TTL, holder, claim TTL, take a stale
// claim ('1' or '0'). Before running a tool: the call must be live; then its stored result, else the claim
// ("<holder> <expires at, Redis ms>", kept alive by its holder while the tool runs; the holder names the request).
// Returns {call state or ''} | {'live', 'stored', result} | {'live', 'claimed' | 'retaken'} | {'live', 'taken'}
// (another request holds the claim) | {'live', 'stale'} (its holder stopped keeping it: died or froze; not taken
// over). A claim the same holder already has is claimed again: ioredis sends a script again after a lost link
// when its reply was lost, and that request must not find itself holding the claim and wait for itself.
const TOOL_CLAIM_SCRIPT = `
local call = redis.call('HGET', KEYS[1], 'state')
if call ~= 'live' then return {call or ''} end
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored then return {'live', 'stored', stored} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HGET', KEYS[3], ARGV[2])
local kind = 'claimed'
if held then
  -- A claim without an expiry was written by an older version: it is held for good, as it was then.
  local holder, expiry = string.match(held, '^(.*) (%d+)$')
  if holder ~= ARGV[4] then
    local expires = tonumber(expiry)
    if not expires or expires > now then return {'live', 'taken'} end
    if ARGV[6] ~= '1' then return {'live', 'stale'} end
    kind = 'retaken'
  end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4] .. ' ' .. (now + tonumber(ARGV[5])))
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {'live', kind}`;

// KEYS: once hash. ARGV: once field, holder, claim TTL. Extends a tool claim this holder still has (1), else 0:
// the call ended (the hash is gone) or the claim was taken over.
const TOOL_KEEP_SCRIPT = `
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or string.sub(held, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])))
return 1`;

// KEYS: meta, tool results hash. ARGV: toolCallId, result, TTL. Not stored for an ended call (returns 0).
const TOOL_SAVE_SCRIPT = `
if redis.call('HGET', KEYS[1], 'state') == 'ended' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1`;

export interface Versioned<T> {
  value: T | undefined;
  /** Pass back to commitDialog; "0" when nothing is stored yet. */
  version: string;
}

/** The dialog state with the mark of the input in progress, kept beside it (loadDialog, takeDialogTurn). */
export interface DialogVersioned<T> extends Versioned<T> {
  /** What commitDialog's `mark` or takeDialogTurn's `mark` stored; undefined when no input is in progress. */
  mark?: string;
}

/** The start of a dialog turn (store.takeDialogTurn). */
export type DialogTurnStart<T> =
  /** The call is not live (ended, or no record): no lease was taken. */
  | { kind: "not_live"; call: CallState | undefined }
  /** Another owner holds the lease. */
  | { kind: "busy" }
  /**
   * The lease is this owner's; the dialog state as it was when it was taken. `marked`: the mark asked for was set
   * in the same step (no input was in progress), and whether its once field was new.
   */
  | { kind: "held"; dialog: DialogVersioned<T>; marked?: { firstTime: boolean } };

/** The input a turn works on, marked in progress when the turn starts (takeDialogTurn). */
export interface TurnMark {
  /** Stored as the dialog's mark (DialogVersioned.mark). */
  mark: string;
  /** Marked seen with it: `firstTime` tells whether an earlier attempt (of any replica) marked it before. */
  once: { scope: string; id: string };
  /** Mark only while the call has no dialog state yet (an input that state would make a no-op, e.g. a start). */
  onlyWithoutState?: boolean;
}

/** What store.commitDialog did. */
export type DialogCommit =
  | {
      saved: true;
      /** The version now stored: pass it to the next commit. */
      version: string;
      /** With `once`: whether this was the first time the id was marked (undefined without `once`). */
      firstTime?: boolean;
    }
  /**
   * Not saved: the call ended, or another save came first (reload and redo); `call` is the call's state.
   * `leaseLost`: the `fencedBy` owner no longer holds the lease (another replica has the turn: stop, do not redo).
   */
  | { saved: false; call: CallState | undefined; leaseLost?: true };

export interface DialogCommitOptions {
  /** Marks `scope:id` as seen (once per call while it is live), only when the state is saved. */
  once?: { scope: string; id: string };
  /** The asr's recognition hints (keys.hints), written only when the state is saved. */
  hints?: unknown;
  /** Releases the `dialog` lease of this owner once the state is saved (the turn is over); implies `fencedBy`. */
  releaseLeaseOf?: string;
  /**
   * Saves only while the `dialog` lease is this owner's or free: a replica that paused past its lease (frozen, starved)
   * must not overwrite the turn of the replica that took the lease meanwhile.
   */
  fencedBy?: string;
  /** The mark of the input in progress, saved with the state: a new one, null to clear it, undefined to keep it. */
  mark?: string | null;
}

/** One call's lease renewal (store.renewLeases). */
export type LeaseRenewal =
  | { callId: string; held: boolean; call: CallState | undefined }
  | { callId: string; error: Error };

/** Before a tool runs (store.claimToolCall). */
export type ToolClaim<T> =
  | { kind: "not_live"; call: CallState | undefined }
  /** A repeated request: the first execution's result. */
  | { kind: "stored"; result: T }
  /** This request runs the tool; `takenOver`: from a holder that stopped keeping its claim. */
  | { kind: "claimed"; takenOver?: true }
  /** Another request runs it: wait for its stored result. */
  | { kind: "taken" }
  /** The request that claimed it stopped keeping its claim (its replica died or froze) and stored no result. */
  | { kind: "stale" };

/** Who claims a tool call (store.claimToolCall), and for how long without keeping it (store.keepToolClaims). */
export interface ToolClaimHolder {
  /** Names the request that claims: the replica and the request (no spaces), so that a claim resent is its own. */
  holder: string;
  ttlMs: number;
  /** Take over a stale claim (the tool may run twice); else it is reported as stale. */
  takeStale: boolean;
}

/**
 * Per-call state in Redis. Everything a stateless stage needs to take any turn of any call lives here,
 * keyed by call id; every write sets a TTL so nothing outlives its use.
 */
export class CallStore {
  constructor(
    readonly redis: Redis,
    readonly options: CallStoreOptions = defaultStoreOptions,
  ) {
    redis.defineCommand("vbLease", { numberOfKeys: 1, lua: LEASE_SCRIPT });
    redis.defineCommand("vbRelease", { numberOfKeys: 1, lua: RELEASE_SCRIPT });
    redis.defineCommand("vbExtendDialog", { numberOfKeys: 2, lua: EXTEND_DIALOG_SCRIPT });
    redis.defineCommand("vbRenew", { numberOfKeys: 3, lua: RENEW_SCRIPT });
    redis.defineCommand("vbProgress", { numberOfKeys: 2, lua: PROGRESS_SCRIPT });
    redis.defineCommand("vbTakeTurn", { numberOfKeys: 4, lua: TAKE_TURN_SCRIPT });
    redis.defineCommand("vbCommit", { numberOfKeys: 5, lua: COMMIT_SCRIPT });
    redis.defineCommand("vbClearMark", { numberOfKeys: 1, lua: CLEAR_MARK_SCRIPT });
    redis.defineCommand("vbAppend", { numberOfKeys: 3, lua: APPEND_SCRIPT });
    redis.defineCommand("vbReplaceEntry", { numberOfKeys: 1, lua: REPLACE_ENTRY_SCRIPT });
    redis.defineCommand("vbEndCall", { lua: END_CALL_SCRIPT }); // the key count comes first
    redis.defineCommand("vbToolClaim", { numberOfKeys: 3, lua: TOOL_CLAIM_SCRIPT });
    redis.defineCommand("vbToolSave", { numberOfKeys: 2, lua: TOOL_SAVE_SCRIPT });
    redis.defineCommand("vbToolKeep", { numberOfKeys: 1, lua: TOOL_KEEP_SCRIPT });
    redis.defineCommand("vbResume", { numberOfKeys: 2, lua: RESUME_SCRIPT });
    redis.defineCommand("vbFinalAction", { numberOfKeys: 2, lua: FINAL_ACTION_SCRIPT });
    redis.defineCommand("vbMarkHandover", { numberOfKeys: 1, lua: MARK_HANDOVER_SCRIPT });
    redis.defineCommand("vbCreate", { numberOfKeys: 1, lua: CREATE_SCRIPT });
    redis.defineCommand("vbDialing", { numberOfKeys: 1, lua: DIALING_SCRIPT });
    redis.defineCommand("vbClaimRequest", { numberOfKeys: 1, lua: CLAIM_REQUEST_SCRIPT });
    redis.defineCommand("vbEndUnanswered", { numberOfKeys: 1, lua: END_UNANSWERED_SCRIPT });
  }

  /**
   * Connects with bounded retries per command so callers see errors instead of hanging while Redis is down, and
   * drops a connection that stops answering (see linkTimeoutMs).
   */
  static connect(target: string | RedisTarget, options: CallStoreOptions = defaultStoreOptions): CallStore {
    const linkTimeoutMs = options.linkTimeoutMs ?? DEFAULT_LINK_TIMEOUT_MS;
    const redis = new Redis({
      ...redisConnectionOptions(typeof target === "string" ? { url: target } : target),
      maxRetriesPerRequest: 2,
      connectTimeout: 2_000,
      retryStrategy: (times) => Math.min(50 * times, 1_000),
      enableAutoPipelining: true,
      // ioredis destroys the socket (and reconnects) when a reply is this late. The commands it was waiting for are
      // sent again once a connection is ready, so each also gets a deadline of its own: its caller hears of the dark
      // link (and may try again) rather than wait for it to come back.
      socketTimeout: linkTimeoutMs,
      commandTimeout: linkTimeoutMs + 1_000,
    });
    redis.on("error", () => undefined); // status changes are reported through `ready`; avoid unhandled-error noise
    const store = new CallStore(redis, options);
    // The socket timeout only runs while a command waits: a PING now and then finds a dead link on an idle replica
    // too, before a call's first command has to (and takes the replica out of readiness meanwhile).
    store.heartbeat = setInterval(() => {
      if (store.ready) redis.ping().catch(() => undefined);
    }, Math.max(200, Math.floor(linkTimeoutMs / 4)));
    store.heartbeat.unref();
    return store;
  }

  private heartbeat: NodeJS.Timeout | undefined;

  get ready(): boolean {
    return this.redis.status === "ready";
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  // ---- call record ----

  /**
   * The record of a call whose stream started (state live): "created", or, with nothing written, "ended" when the call
   * has ended or "live_elsewhere" when it is live on another stream (see CREATE_SCRIPT).
   */
  async createCall(meta: CallMeta): Promise<CallCreation> {
    const fields = Object.entries(meta).flatMap(([name, value]) => (value === undefined ? [] : [name, String(value)]));
    const outcome = await scripts(this.redis).vbCreate(keys.meta(meta.callSid), this.options.liveTtlMs, meta.streamSid, ...fields);
    return outcome === 1 ? "created" : outcome === 0 ? "ended" : "live_elsewhere";
  }

  /**
   * The record of an outbound call just placed (state dialing) for `ttlMs`: until its stream starts (createCall) or
   * a status callback ends it (endUnanswered). Nothing is overwritten if either got there first.
   */
  /**
   * Records a placed call as dialing until its stream starts. `streamParams`: the custom parameters its TwiML gives
   * the stream, kept so that a call whose first stream never connected starts with them through the redirect.
   */
  async createDialingCall(
    call: { callSid: string; agent: string; from: string; to: string; streamParams?: Record<string, string> },
    ttlMs: number,
  ): Promise<boolean> {
    const { callSid, agent, from, to, streamParams } = call;
    const params = streamParams ? JSON.stringify(streamParams) : "";
    return (await scripts(this.redis).vbDialing(keys.meta(callSid), ttlMs, callSid, agent, from, to, params)) === 1;
  }

  /**
   * Claims a client request's Idempotency-Key in `scope` for `fingerprint` (what the request asked) for
   * `claimTtlMs`, the longest it may take to answer: `claimed` (go ahead, then settleRequest), `done` with the
   * answer the first request got, `pending` (the first is still being answered), or `mismatch` (the key came with
   * another request). The key is stored as its digest. `holder` names this request (unique per request).
   */
  async claimRequest(scope: string, key: string, fingerprint: string, claimTtlMs: number, holder: string): Promise<RequestClaim> {
    const [kind, answer] = await scripts(this.redis).vbClaimRequest(keys.request(scope, digestOf(key)), fingerprint, claimTtlMs, holder);
    if (kind === "done") return { kind, answer: answer ?? "" };
    return { kind: kind as "claimed" | "pending" | "mismatch" };
  }

  /**
   * Settles a claimed request: with `answer`, later requests with its key get it for `keepMs`; without, the claim
   * is let go (nothing was done: the key may be used again).
   */
  async settleRequest(scope: string, key: string, answer: string | undefined, keepMs: number): Promise<void> {
    const request = keys.request(scope, digestOf(key));
    if (answer === undefined) await this.redis.del(request);
    else await this.redis.multi().hset(request, "a", answer).pexpire(request, keepMs).exec();
  }

  /** Ends an outbound call that never streamed (see END_UNANSWERED_SCRIPT). True if this ended it. */
  async endUnanswered(call: { callSid: string; from: string; to: string }, reason: string, endedAt = new Date()): Promise<boolean> {
    const { callSid, from, to } = call;
    return (await scripts(this.redis).vbEndUnanswered(keys.meta(callSid), callSid, endedAt.toISOString(), reason, this.options.recordTtlMs, from, to)) === 1;
  }

  /**
   * A live call continues on a new media stream (its ingress died or handed it over): the record names the new
   * stream. Returns the call's state and start time; nothing is written unless it is live.
   */
  async resumeCall(
    callId: string,
    streamSid: string,
  ): Promise<{ state: CallState | undefined; startedAt: string | undefined; handedOver: boolean; finalAction: FinalAction | undefined; noInputMs: number | undefined }> {
    const [state, startedAt, handover, final, wait] = (await scripts(this.redis).vbResume(keys.meta(callId), keys.finalAction(callId), streamSid)) as string[];
    const noInputMs = wait ? Number(wait) : Number.NaN;
    return {
      state: callStateOf(state),
      startedAt: startedAt || undefined,
      handedOver: handover === "1",
      finalAction: parseFinalAction(final),
      noInputMs: Number.isInteger(noInputMs) && noInputMs >= 0 ? noInputMs : undefined,
    };
  }

  /**
   * Keeps the hang-up or transfer the bot asked for while the call is live: the control message reaches only the
   * stream of that moment, and a stream that resumes the call (its ingress died first) acts on it. False when the
   * call is not live.
   */
  async saveFinalAction(callId: string, action: FinalAction): Promise<boolean> {
    return (await scripts(this.redis).vbFinalAction(keys.meta(callId), keys.finalAction(callId), JSON.stringify(action), this.options.liveTtlMs)) === 1;
  }

  /**
   * The call's stream is being handed over on purpose (nothing cut): the stream that resumes it learns so, and how
   * long the caller's silence may last there before they are prompted again (`noInputMs`: the wait running now).
   */
  async markHandover(callId: string, noInputMs?: number): Promise<void> {
    await scripts(this.redis).vbMarkHandover(keys.meta(callId), noInputMs === undefined ? "" : String(Math.round(noInputMs)));
  }

  /** Names the agent that actually runs the call in its record (one that asked for an unknown agent gets the default). */
  async setAgent(callId: string, agent: string): Promise<void> {
    await this.setRecordFields(callId, ["agent", agent]);
  }

  /**
   * What answering machine detection found for a placed call (and how long Twilio took to decide), into its record if
   * there is one. Returns the call's state as of that write (undefined: no record): a stream that starts after it
   * finds the verdict (machineVerdict), so exactly one of the two sees a live call without the verdict's having been
   * seen.
   */
  async setAnsweredBy(callId: string, answeredBy: string, detectionMs: number): Promise<CallState | undefined> {
    return this.setRecordFields(callId, ["answeredBy", answeredBy, "machineDetectionMs", String(Math.round(detectionMs))]);
  }

  /** The verdict of answering machine detection on the call, if any came. */
  async machineVerdict(callId: string): Promise<{ answeredBy: string; detectionMs: number } | undefined> {
    const [answeredBy, detectionMs] = await this.redis.hmget(keys.meta(callId), "answeredBy", "machineDetectionMs");
    return answeredBy ? { answeredBy, detectionMs: Number(detectionMs) || 0 } : undefined;
  }

  /**
   * Fields of a call's record (name, value, ...), only into a record that exists (never a bare one for a call that
   * is gone). Returns the record's state at the write (undefined: no record, or one without a state).
   */
  private async setRecordFields(callId: string, fieldsAndValues: string[]): Promise<CallState | undefined> {
    const state = await this.redis.eval(
      "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) return redis.call('HGET', KEYS[1], 'state') or '' end return false",
      1,
      keys.meta(callId),
      ...fieldsAndValues,
    );
    return typeof state === "string" ? callStateOf(state) : undefined;
  }

  /** The call's state and who it is between (for resuming it on a new stream); undefined without a record. */
  async callParties(callId: string): Promise<CallParties | undefined> {
    const [state, agent, from, to, endReason, transferTo, startedAt, streamParams] = await this.redis.hmget(
      keys.meta(callId),
      ...["state", "agent", "from", "to", "endReason", "transferTo", "startedAt", "streamParams"],
    );
    if (state === null) return undefined;
    return {
      state: callStateOf(state),
      agent: agent ?? "",
      from: from ?? "",
      to: to ?? "",
      endReason: endReason ?? "",
      transferTo: transferTo ?? "",
      startedAt: startedAt ?? "",
      streamParams: parseStreamParams(streamParams),
    };
  }

  async callState(callId: string): Promise<CallState | undefined> {
    return ((await this.redis.hget(keys.meta(callId), "state")) as CallState | null) ?? undefined;
  }

  /**
   * Marks the call ended, keeps its record for the record TTL and deletes everything else it had: live state,
   * leases, and the idempotency marks and stored tool results (nothing acts for an ended call any more: every
   * write that depends on them checks the call's state in the same script).
   */
  async endCall(callId: string, reason: string, endedAt = new Date(), { transferTo }: { transferTo?: string } = {}): Promise<void> {
    await this.end(callId, reason, endedAt, transferTo ?? "", "");
  }

  /**
   * endCall, only if the call is live and nobody holds its `role` lease, checked in the same script: a call that a
   * new stream took up a moment ago is not ended as lost. Returns whether it ended the call.
   */
  async endCallUnlessLeased(callId: string, role: (typeof leaseRoles)[number], reason: string, endedAt = new Date()): Promise<boolean> {
    return (await this.end(callId, reason, endedAt, "", keys.lease(callId, role))) === 1;
  }

  private async end(callId: string, reason: string, endedAt: Date, transferTo: string, unlessLeased: string): Promise<number> {
    const record = recordKeys(callId);
    const live = liveKeys(callId, leaseRoles);
    const indexes = leaseRoles.map((role) => keys.leaseIndex(role));
    const all = [unlessLeased || keys.meta(callId), ...record, ...live, ...indexes];
    const args = [unlessLeased ? "1" : "0", record.length, live.length, this.options.recordTtlMs, callId, endedAt.toISOString(), reason, transferTo];
    return scripts(this.redis).vbEndCall(all.length, ...all, ...args);
  }

  async appendTranscript(callId: string, entry: TranscriptEntry): Promise<void> {
    await this.append(callId, keys.transcript(callId), entry);
  }

  async appendToolCall(callId: string, entry: ToolCallEntry): Promise<void> {
    await this.append(callId, keys.toolCalls(callId), entry);
  }

  async appendTurn(callId: string, entry: TurnEntry): Promise<void> {
    await this.append(callId, keys.turns(callId), entry);
  }

  async appendSpeechChunk(callId: string, entry: SpeechChunkEntry): Promise<void> {
    await this.append(callId, keys.speech(callId), entry);
  }

  /**
   * Appends the caller's line once per `scope:id` while the call is live (a redone input does not record it twice).
   * False when it was recorded before.
   */
  async appendTranscriptOnce(callId: string, scope: string, id: string, entry: TranscriptEntry): Promise<boolean> {
    return (await this.append(callId, keys.transcript(callId), entry, onceField(scope, id))) === 1;
  }

  /** The call's transcript as stored (JSON lines), for replaceTranscriptEntry. */
  async transcriptLines(callId: string): Promise<string[]> {
    return this.redis.lrange(keys.transcript(callId), 0, -1);
  }

  /** Replaces the transcript line at `index` if it is still `expected` (see REPLACE_ENTRY_SCRIPT). */
  async replaceTranscriptEntry(callId: string, index: number, expected: string, replacement: TranscriptEntry): Promise<boolean> {
    return (await scripts(this.redis).vbReplaceEntry(keys.transcript(callId), index, expected, JSON.stringify(replacement))) === 1;
  }

  private async append(callId: string, key: string, entry: unknown, once = ""): Promise<number> {
    const { liveTtlMs, recordTtlMs } = this.options;
    const most = this.options.recordMaxEntries ?? DEFAULT_RECORD_MAX_ENTRIES;
    return scripts(this.redis).vbAppend(keys.meta(callId), key, keys.once(callId), JSON.stringify(entry), liveTtlMs, recordTtlMs, once, most);
  }

  async getRecord(callId: string): Promise<CallRecord | undefined> {
    const [meta, transcript, toolCalls, turns, speech] = await Promise.all([
      this.redis.hgetall(keys.meta(callId)),
      this.redis.lrange(keys.transcript(callId), 0, -1),
      this.redis.lrange(keys.toolCalls(callId), 0, -1),
      this.redis.lrange(keys.turns(callId), 0, -1),
      this.redis.lrange(keys.speech(callId), 0, -1),
    ]);
    if (!meta.callSid) return undefined;
    return {
      callSid: meta.callSid,
      provider: meta.provider ?? "",
      streamSid: meta.streamSid ?? "",
      agent: meta.agent ?? "",
      from: meta.from ?? "",
      to: meta.to ?? "",
      startedAt: meta.startedAt ?? "",
      state: (meta.state as CallState) ?? "live",
      endedAt: meta.endedAt ?? null,
      endReason: meta.endReason ?? null,
      transcript: transcript.map((e) => JSON.parse(e) as TranscriptEntry),
      toolCalls: toolCalls.map((e) => JSON.parse(e) as ToolCallEntry),
      turns: turns.map((e) => JSON.parse(e) as TurnEntry),
      speech: speech.map((e) => JSON.parse(e) as SpeechChunkEntry),
      ...(meta.answeredBy ? { answeredBy: meta.answeredBy } : {}),
      ...(meta.transferTo ? { transferTo: meta.transferTo } : {}),
      ...(meta.trimmed ? { trimmedEntries: Number(meta.trimmed) } : {}),
    };
  }

  // ---- live state with optimistic concurrency ----

  async loadDialog<T>(callId: string): Promise<DialogVersioned<T>> {
    const [version, data, mark] = await this.redis.hmget(keys.dialog(callId), "v", "d", "p");
    return { value: data ? (JSON.parse(data) as T) : undefined, version: version ?? "0", ...(mark ? { mark } : {}) };
  }

  /**
   * Saves the dialog state over `version` (refused for an ended call or when another save came first), in one
   * round trip with what must only happen when it is saved: see DialogCommitOptions.
   */
  async commitDialog<T>(callId: string, value: T, version: string, options: DialogCommitOptions = {}): Promise<DialogCommit> {
    const { once, hints, releaseLeaseOf, mark } = options;
    const fencedBy = options.fencedBy ?? releaseLeaseOf;
    const [outcome, detail] = await scripts(this.redis).vbCommit(
      keys.dialog(callId),
      keys.meta(callId),
      keys.once(callId),
      keys.hints(callId),
      keys.lease(callId, "dialog"),
      version,
      JSON.stringify(value),
      this.options.liveTtlMs,
      once ? onceField(once.scope, once.id) : "",
      hints === undefined ? "" : JSON.stringify(hints),
      releaseLeaseOf ?? "",
      mark === undefined ? "keep" : mark === null ? "clear" : "set",
      mark ?? "",
      fencedBy ?? "",
    );
    if (outcome === -2) return { saved: false, call: callStateOf(detail), leaseLost: true };
    if (outcome <= 0) return { saved: false, call: callStateOf(detail) };
    return { saved: true, version: String(outcome), ...(once ? { firstTime: detail === 1 } : {}) };
  }

  /**
   * The start of a dialog turn in one round trip: the call must be live, then the `dialog` lease is taken for
   * `owner` (when free or already its own), then the dialog state is read. With `mark`, when no input is in progress
   * the turn's input is marked in progress in the same step (see TurnMark). The lease has no orphan-index entry: a
   * dead replica's inputs come back through JetStream, not through an orphan scan.
   */
  async takeDialogTurn<T>(callId: string, owner: string, ttlMs: number, mark?: TurnMark): Promise<DialogTurnStart<T>> {
    const reply = await scripts(this.redis).vbTakeTurn(
      keys.meta(callId),
      keys.lease(callId, "dialog"),
      keys.dialog(callId),
      keys.once(callId),
      owner,
      ttlMs,
      mark?.mark ?? "",
      mark ? onceField(mark.once.scope, mark.once.id) : "",
      this.options.liveTtlMs,
      mark?.onlyWithoutState ? "1" : "",
    );
    const call = callStateOf(reply[0]);
    if (call !== "live") return { kind: "not_live", call };
    if (reply[1] !== 1) return { kind: "busy" };
    const data = String(reply[3]);
    const stored = String(reply[4]);
    const dialog: DialogVersioned<T> = { value: data ? (JSON.parse(data) as T) : undefined, version: String(reply[2]), ...(stored ? { mark: stored } : {}) };
    return reply[5] === -1 ? { kind: "held", dialog } : { kind: "held", dialog, marked: { firstTime: reply[5] === 1 } };
  }

  /** Clears the dialog's mark of the input in progress if it is still `mark` (an input marked, then dropped). */
  async clearDialogMark(callId: string, mark: string): Promise<boolean> {
    return (await scripts(this.redis).vbClearMark(keys.dialog(callId), mark)) === 1;
  }

  async setJson(key: string, value: unknown, ttlMs = this.options.liveTtlMs): Promise<void> {
    await this.redis.set(key, JSON.stringify(value), "PX", ttlMs);
  }

  async getJson<T>(key: string): Promise<T | undefined> {
    const raw = await this.redis.get(key);
    return raw ? (JSON.parse(raw) as T) : undefined;
  }

  // ---- ownership ----

  /**
   * Takes or renews the lease of `role` on a call for `owner`. True while this owner holds it.
   * The lease index lets other replicas find calls whose owner stopped renewing.
   */
  async acquireLease(callId: string, role: string, owner: string, ttlMs: number, { index = true } = {}): Promise<boolean> {
    const held = (await scripts(this.redis).vbLease(keys.lease(callId, role), owner, ttlMs)) === 1;
    if (held && index) await this.redis.zadd(keys.leaseIndex(role), Date.now() + ttlMs, callId);
    return held;
  }

  /** Takes `role`'s lease for `owner` whoever holds it: a newer claim that outranks the holder (a resumed stream). */
  async takeLease(callId: string, role: string, owner: string, ttlMs: number): Promise<void> {
    await this.redis.set(keys.lease(callId, role), owner, "PX", ttlMs);
    await this.redis.zadd(keys.leaseIndex(role), Date.now() + ttlMs, callId);
  }

  /**
   * Renews `owner`'s leases of `role` on many calls in one round trip (one pipeline: a script per call, each in its
   * call's slot, and one ZADD of the lease index), and reads each call's state with it. A lease held by another
   * owner is not taken; an ended call's lease is not renewed. The index gets every call of the round: a call that
   * turns out ended or lost is the caller's to drop and forget (store.releaseLease / forgetLease). Throws when
   * Redis cannot be reached; a failure of one call's script is that call's `error`.
   */
  async renewLeases(
    callIds: readonly string[],
    role: string,
    owner: string,
    ttlMs: number,
    progressOf: (callId: string) => string | undefined = () => undefined,
  ): Promise<LeaseRenewal[]> {
    if (callIds.length === 0) return [];
    const pipeline = this.redis.pipeline() as unknown as ScriptPipeline;
    const progressTtlMs = this.options.liveTtlMs;
    for (const callId of callIds) {
      pipeline.vbRenew(keys.lease(callId, role), keys.meta(callId), keys.progress(callId, role), owner, ttlMs, progressOf(callId) ?? "", progressTtlMs);
    }
    const expiry = Date.now() + ttlMs;
    pipeline.zadd(keys.leaseIndex(role), ...callIds.flatMap((callId) => [expiry, callId]));
    const replies = await pipeline.exec();
    if (!replies) throw new Error("lease renewal pipeline was discarded");
    return callIds.map((callId, i): LeaseRenewal => {
      const [error, reply] = replies[i];
      if (error) return { callId, error };
      const [held, call] = reply as [number, string];
      return { callId, held: held === 1, call: callStateOf(call) };
    });
  }

  /**
   * Gives up the lease (when this owner holds it) and takes the call out of the orphan index. Without `index`
   * (a lease taken without one) only the lease.
   */
  /**
   * Extends `owner`'s `dialog` lease by `ttlMs` from now. False when another owner has it, or when it expired and
   * the dialog state moved on from `version` (another replica took the turn and saved): never taken back then.
   */
  async extendDialogLease(callId: string, owner: string, ttlMs: number, version: string): Promise<boolean> {
    return (await scripts(this.redis).vbExtendDialog(keys.lease(callId, "dialog"), keys.dialog(callId), owner, ttlMs, version)) === 1;
  }

  async releaseLease(callId: string, role: string, owner: string, { index = true } = {}): Promise<void> {
    if ((await scripts(this.redis).vbRelease(keys.lease(callId, role), owner)) === 1 && index) {
      await this.redis.zrem(keys.leaseIndex(role), callId);
    }
  }

  /**
   * Gives up `owner`'s lease now and marks the call orphaned in the lease index, so another replica's orphan
   * scan takes it over at once instead of after the lease would have expired. False if `owner` did not hold it.
   */
  async handOver(callId: string, role: string, owner: string): Promise<boolean> {
    const released = (await scripts(this.redis).vbRelease(keys.lease(callId, role), owner)) === 1;
    if (released) await this.redis.zadd(keys.leaseIndex(role), Date.now(), callId);
    return released;
  }

  /**
   * Saves how far `owner` got with the call (what a successor resumes from: see renewLeases' `progressOf`), while
   * it holds the `role` lease. False when it does not.
   */
  async saveProgress(callId: string, role: string, owner: string, progress: string): Promise<boolean> {
    return (await scripts(this.redis).vbProgress(keys.lease(callId, role), keys.progress(callId, role), owner, progress, this.options.liveTtlMs)) === 1;
  }

  /** The progress the call's last `role` owner saved (undefined: none yet). */
  async progress(callId: string, role: string): Promise<string | undefined> {
    return (await this.redis.get(keys.progress(callId, role))) ?? undefined;
  }

  async leaseOwner(callId: string, role: string): Promise<string | undefined> {
    return (await this.redis.get(keys.lease(callId, role))) ?? undefined;
  }

  /** Calls whose `role` lease expired before `now` without the call ending: an owner died or stalled. */
  async orphanedCalls(role: string, now = Date.now(), limit = 100): Promise<string[]> {
    return this.redis.zrangebyscore(keys.leaseIndex(role), "-inf", now, "LIMIT", 0, limit);
  }

  async forgetLease(callId: string, role: string): Promise<void> {
    await this.redis.zrem(keys.leaseIndex(role), callId);
  }

  // ---- idempotency and caching ----

  /**
   * Before running a tool, in one round trip: the call must be live; a repeated request gets the stored result;
   * otherwise the first request claims the execution (once per toolCallId while the call is live). A claim lasts
   * `ttlMs` unless its holder keeps it (keepToolClaims): one whose holder died or froze goes stale.
   */
  async claimToolCall<T>(callId: string, toolCallId: string, claim: ToolClaimHolder): Promise<ToolClaim<T>> {
    const reply = await scripts(this.redis).vbToolClaim(
      keys.meta(callId),
      keys.toolResults(callId),
      keys.once(callId),
      toolCallId,
      onceField("tool", toolCallId),
      this.options.liveTtlMs,
      claim.holder,
      claim.ttlMs,
      claim.takeStale ? "1" : "0",
    );
    const call = callStateOf(reply[0]);
    if (call !== "live") return { kind: "not_live", call };
    switch (reply[1]) {
      case "stored":
        return { kind: "stored", result: JSON.parse(String(reply[2])) as T };
      case "claimed":
        return { kind: "claimed" };
      case "retaken":
        return { kind: "claimed", takenOver: true };
      case "stale":
        return { kind: "stale" };
      default:
        return { kind: "taken" };
    }
  }

  /** Extends the tool claims `holder` still has, in one round trip; returns how many it still had. */
  async keepToolClaims(claims: ReadonlyArray<{ callId: string; toolCallId: string; holder: string }>, ttlMs: number): Promise<number> {
    if (claims.length === 0) return 0;
    const pipeline = this.redis.pipeline() as unknown as ScriptPipeline;
    for (const { callId, toolCallId, holder } of claims) pipeline.vbToolKeep(keys.once(callId), onceField("tool", toolCallId), holder, ttlMs);
    const replies = await pipeline.exec();
    if (!replies) throw new Error("tool claim pipeline was discarded");
    let kept = 0;
    for (const [error, reply] of replies) {
      if (error) throw error;
      if (reply === 1) kept++;
    }
    return kept;
  }

  /** Stores a tool's result for repeated requests while the call is live; false (not stored) once it ended. */
  async saveToolResult(callId: string, toolCallId: string, result: unknown): Promise<boolean> {
    const saved = await scripts(this.redis).vbToolSave(keys.meta(callId), keys.toolResults(callId), toolCallId, JSON.stringify(result), this.options.liveTtlMs);
    return saved === 1;
  }

  async toolResult<T>(callId: string, toolCallId: string): Promise<T | undefined> {
    const raw = await this.redis.hget(keys.toolResults(callId), toolCallId);
    return raw ? (JSON.parse(raw) as T) : undefined;
  }

  async getBuffer(key: string): Promise<Buffer | undefined> {
    return (await this.redis.getBuffer(key)) ?? undefined;
  }

  async setBuffer(key: string, value: Uint8Array, ttlMs: number): Promise<void> {
    await this.redis.set(key, Buffer.from(value.buffer, value.byteOffset, value.byteLength), "PX", ttlMs);
  }
}

/** The field of `scope:id` in the call's once hash. */
function onceField(scope: string, id: string): string {
  return `${scope}:${id}`;
}

/** A call state as the scripts return it ('' or nil for a call without a record). */
function callStateOf(raw: unknown): CallState | undefined {
  return raw === "live" || raw === "ended" || raw === "dialing" ? raw : undefined;
}

function scripts(redis: Redis): RedisWithScripts {
  return redis as RedisWithScripts;
}

type Arg = string | number;

interface RedisWithScripts extends Redis {
  vbLease(key: string, owner: string, ttlMs: number): Promise<number>;
  vbExtendDialog(lease: string, dialog: string, owner: string, ttlMs: number, version: string): Promise<number>;
  vbRelease(key: string, owner: string): Promise<number>;
  vbProgress(lease: string, progress: string, owner: string, value: string, ttlMs: number): Promise<number>;
  vbTakeTurn(...keysThenArgs: Arg[]): Promise<Array<string | number>>;
  vbCommit(...keysThenArgs: Arg[]): Promise<[number, string | number]>;
  vbClearMark(dialog: string, mark: string): Promise<number>;
  vbReplaceEntry(list: string, index: number, expected: string, replacement: string): Promise<number>;
  vbEndCall(numberOfKeys: number, ...keysThenArgs: Arg[]): Promise<number>;
  vbAppend(meta: string, list: string, once: string, entry: string, liveTtlMs: number, recordTtlMs: number, onceField: string, mostEntries: number): Promise<number>;
  vbToolClaim(meta: string, results: string, once: string, toolCallId: string, field: string, ttlMs: number, holder: string, claimTtlMs: number, takeStale: string): Promise<string[]>;
  vbToolKeep(once: string, field: string, holder: string, claimTtlMs: number): Promise<number>;
  vbResume(meta: string, finalAction: string, streamSid: string): Promise<string[]>;
  vbFinalAction(meta: string, finalAction: string, action: string, ttlMs: number): Promise<number>;
  vbMarkHandover(meta: string, noInputMs: string): Promise<number>;
  vbToolSave(meta: string, results: string, toolCallId: string, result: string, ttlMs: number): Promise<number>;
  vbCreate(meta: string, ttlMs: number, ...fields: string[]): Promise<number>;
  vbDialing(meta: string, ttlMs: number, callSid: string, agent: string, from: string, to: string, streamParams: string): Promise<number>;
  vbClaimRequest(request: string, fingerprint: string, claimTtlMs: number, holder: string): Promise<string[]>;
  vbEndUnanswered(meta: string, callSid: string, endedAt: string, reason: string, recordTtlMs: number, from: string, to: string): Promise<number>;
}

interface ScriptPipeline {
  vbRenew(lease: string, meta: string, progress: string, owner: string, ttlMs: number, value: string, progressTtlMs: number): ScriptPipeline;
  vbToolKeep(once: string, field: string, holder: string, claimTtlMs: number): ScriptPipeline;
  zadd(key: string, ...scoresAndMembers: Arg[]): ScriptPipeline;
  exec(): Promise<Array<[Error | null, unknown]> | null>;
}
