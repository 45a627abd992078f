import { Redis } from "ioredis";
import { keys, liveKeys, recordKeys } from "./keys.js";

export type CallState = "live" | "ended";

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
}

export interface CallStoreOptions {
  /** How long a live call's keys live without activity (safety net for a lost hang-up). */
  liveTtlMs: number;
  /** How long the record stays after the call ends. */
  recordTtlMs: number;
}

export const defaultStoreOptions: CallStoreOptions = {
  liveTtlMs: 6 * 60 * 60 * 1000,
  recordTtlMs: 2 * 60 * 60 * 1000,
};

/** Roles that hold per-call leases; their leases are dropped when the call ends. */
export const leaseRoles = ["asr", "dialog"] as const;

const LEASE_SCRIPT = `
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`;

const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

// KEYS[2] (optional) is the call's meta hash: nothing is saved for a call that already ended, so a turn that
// finishes after the hang-up cannot bring back live state that endCall deleted.
const CAS_SCRIPT = `
if KEYS[2] and redis.call('HGET', KEYS[2], 'state') == 'ended' then return -1 end
local version = redis.call('HGET', KEYS[1], 'v') or '0'
if version ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', tostring(tonumber(ARGV[1]) + 1), 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1`;

export interface Versioned<T> {
  value: T | undefined;
  /** Pass back to saveVersioned; "0" when nothing is stored yet. */
  version: string;
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
    redis.defineCommand("vbCas", { lua: CAS_SCRIPT });
  }

  /** Connects with bounded retries per command so callers see errors instead of hanging while Redis is down. */
  static connect(url: string, options: CallStoreOptions = defaultStoreOptions): CallStore {
    const redis = new Redis(url, {
      maxRetriesPerRequest: 2,
      connectTimeout: 2_000,
      retryStrategy: (times) => Math.min(50 * times, 1_000),
      enableAutoPipelining: true,
    });
    redis.on("error", () => undefined); // status changes are reported through `ready`; avoid unhandled-error noise
    return new CallStore(redis, options);
  }

  get ready(): boolean {
    return this.redis.status === "ready";
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  // ---- call record ----

  async createCall(meta: CallMeta): Promise<void> {
    await this.redis
      .multi()
      .hset(keys.meta(meta.callSid), { ...meta, state: "live" })
      .pexpire(keys.meta(meta.callSid), this.options.liveTtlMs)
      .exec();
  }

  async callState(callId: string): Promise<CallState | undefined> {
    return ((await this.redis.hget(keys.meta(callId), "state")) as CallState | null) ?? undefined;
  }

  /** Marks the call ended, keeps its record for the record TTL and deletes everything else it had. */
  async endCall(callId: string, reason: string, endedAt = new Date()): Promise<void> {
    const tx = this.redis.multi().hset(keys.meta(callId), { state: "ended", endedAt: endedAt.toISOString(), endReason: reason });
    for (const key of recordKeys(callId)) tx.pexpire(key, this.options.recordTtlMs);
    tx.del(...liveKeys(callId, leaseRoles));
    for (const role of leaseRoles) tx.zrem(keys.leaseIndex(role), callId);
    await tx.exec();
  }

  async appendTranscript(callId: string, entry: TranscriptEntry): Promise<void> {
    await this.append(keys.transcript(callId), entry);
  }

  async appendToolCall(callId: string, entry: ToolCallEntry): Promise<void> {
    await this.append(keys.toolCalls(callId), entry);
  }

  async appendTurn(callId: string, entry: TurnEntry): Promise<void> {
    await this.append(keys.turns(callId), entry);
  }

  async appendSpeechChunk(callId: string, entry: SpeechChunkEntry): Promise<void> {
    await this.append(keys.speech(callId), entry);
  }

  private async append(key: string, entry: unknown): Promise<void> {
    await this.redis.multi().rpush(key, JSON.stringify(entry)).pexpire(key, this.options.liveTtlMs).exec();
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
    };
  }

  // ---- live state with optimistic concurrency ----

  async loadVersioned<T>(key: string): Promise<Versioned<T>> {
    const [version, data] = await this.redis.hmget(key, "v", "d");
    return { value: data ? (JSON.parse(data) as T) : undefined, version: version ?? "0" };
  }

  /**
   * Saves only if nobody saved since `version` was read; false means reload and redo.
   * With `callId`, also false once the call has ended (nothing to save for it any more).
   */
  async saveVersioned<T>(key: string, value: T, version: string, callId?: string): Promise<boolean> {
    const keyList = callId ? [key, keys.meta(callId)] : [key];
    const saved = await (this.redis as RedisWithScripts).vbCas(keyList.length, ...keyList, version, JSON.stringify(value), this.options.liveTtlMs);
    return saved === 1;
  }

  async loadDialog<T>(callId: string): Promise<Versioned<T>> {
    return this.loadVersioned<T>(keys.dialog(callId));
  }

  async saveDialog<T>(callId: string, value: T, version: string): Promise<boolean> {
    return this.saveVersioned(keys.dialog(callId), value, version, callId);
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
  async acquireLease(callId: string, role: string, owner: string, ttlMs: number): Promise<boolean> {
    const held = (await (this.redis as RedisWithScripts).vbLease(keys.lease(callId, role), owner, ttlMs)) === 1;
    if (held) await this.redis.zadd(keys.leaseIndex(role), Date.now() + ttlMs, callId);
    return held;
  }

  /** Gives up the lease (when this owner holds it) and takes the call out of the orphan index. */
  async releaseLease(callId: string, role: string, owner: string): Promise<void> {
    if ((await (this.redis as RedisWithScripts).vbRelease(keys.lease(callId, role), owner)) === 1) {
      await this.redis.zrem(keys.leaseIndex(role), callId);
    }
  }

  /**
   * Gives up `owner`'s lease now and marks the call orphaned in the lease index, so another replica's orphan
   * scan takes it over at once instead of after the lease would have expired. False if `owner` did not hold it.
   */
  async handOver(callId: string, role: string, owner: string): Promise<boolean> {
    const released = (await (this.redis as RedisWithScripts).vbRelease(keys.lease(callId, role), owner)) === 1;
    if (released) await this.redis.zadd(keys.leaseIndex(role), Date.now(), callId);
    return released;
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

  /** True the first time `id` is seen in `scope` for this call (within the live TTL). */
  async firstTime(callId: string, scope: string, id: string): Promise<boolean> {
    return (await this.redis.set(keys.once(callId, scope, id), "1", "PX", this.options.liveTtlMs, "NX")) === "OK";
  }

  async getBuffer(key: string): Promise<Buffer | undefined> {
    return (await this.redis.getBuffer(key)) ?? undefined;
  }

  async setBuffer(key: string, value: Uint8Array, ttlMs: number): Promise<void> {
    await this.redis.set(key, Buffer.from(value.buffer, value.byteOffset, value.byteLength), "PX", ttlMs);
  }
}

interface RedisWithScripts extends Redis {
  vbLease(key: string, owner: string, ttlMs: number): Promise<number>;
  vbRelease(key: string, owner: string): Promise<number>;
  vbCas(numberOfKeys: number, ...keysThenArgs: Array<string | number>): Promise<number>;
}
