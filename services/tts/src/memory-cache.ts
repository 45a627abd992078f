// The replica's own copy of the audio it serves most: the agents' fixed lines come back on every call, and reading
// them from Redis costs a round trip on the turn's path (and, on a busy node, whatever Redis waits for a core).
// Keys name everything that shapes the audio (engine, voice, rate, format, text), so an entry never goes stale and
// replicas need not agree: this is only a faster way to the bytes Redis holds. Entries are still read again from
// Redis after a while, so that a line an operator deleted there (a glitch in the engine's audio) is spoken anew
// everywhere without restarting the replicas.

interface Entry {
  audio: Buffer;
  /** When it was copied here (ms, the cache's clock). */
  at: number;
}

/** Least recently used audio, bounded by bytes. */
export class MemoryAudioCache {
  private readonly entries = new Map<string, Entry>();
  private total = 0;

  /**
   * `maxBytes` 0 turns it off; an entry over an eighth of it is not kept (it would push out many prompts). An
   * entry older than `maxAgeMs` is a miss (and dropped).
   */
  constructor(
    private readonly maxBytes: number,
    private readonly maxAgeMs = Infinity,
    private readonly now: () => number = Date.now,
  ) {}

  get bytes(): number {
    return this.total;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Frees the entries past their age that no read has dropped yet (so the bytes reported are bytes in use). */
  dropExpired(): void {
    const now = this.now();
    for (const [key, entry] of this.entries) if (this.expired(entry, now)) this.delete(key);
  }

  get(key: string): Buffer | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (this.expired(entry, this.now())) {
      this.delete(key);
      return undefined;
    }
    // Most recently used goes last (a Map iterates in insertion order).
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.audio;
  }

  set(key: string, audio: Buffer): void {
    if (audio.length === 0 || audio.length > this.maxBytes / 8) return;
    this.delete(key);
    // A copy in memory of its own: a Buffer read from Redis is a view into the client's read buffers, which it
    // would keep alive whole (and the byte count would not see them); Buffer.from would use the shared small pool.
    const own = Buffer.allocUnsafeSlow(audio.length);
    audio.copy(own);
    this.entries.set(key, { audio: own, at: this.now() });
    this.total += audio.length;
    for (const oldest of this.entries.keys()) {
      if (this.total <= this.maxBytes) break;
      this.delete(oldest);
    }
  }

  private expired(entry: Entry, now: number): boolean {
    return now - entry.at > this.maxAgeMs;
  }

  private delete(key: string): void {
    const old = this.entries.get(key);
    if (!old) return;
    this.entries.delete(key);
    this.total -= old.audio.length;
  }
}
