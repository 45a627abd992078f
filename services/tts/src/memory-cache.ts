// The replica's own copy of the audio it serves most: the agents' fixed lines come back on every call, and reading
// them from Redis costs a round trip on the turn's path (and, on a busy node, whatever Redis waits for a core).
// Keys name everything that shapes the audio (engine, voice, rate, format, text), so an entry never goes stale and
// replicas need not agree: this is only a faster way to the bytes Redis holds.

/** Least recently used audio, bounded by bytes. */
export class MemoryAudioCache {
  private readonly entries = new Map<string, Buffer>();
  private total = 0;

  /** `maxBytes` 0 turns it off; an entry over an eighth of it is not kept (it would push out many prompts). */
  constructor(private readonly maxBytes: number) {}

  get bytes(): number {
    return this.total;
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: string): Buffer | undefined {
    const audio = this.entries.get(key);
    if (audio) {
      // Most recently used goes last (a Map iterates in insertion order).
      this.entries.delete(key);
      this.entries.set(key, audio);
    }
    return audio;
  }

  set(key: string, audio: Buffer): void {
    if (audio.length === 0 || audio.length > this.maxBytes / 8) return;
    this.delete(key);
    // A copy in memory of its own: a Buffer read from Redis is a view into the client's read buffers, which it
    // would keep alive whole (and the byte count would not see them); Buffer.from would use the shared small pool.
    const own = Buffer.allocUnsafeSlow(audio.length);
    audio.copy(own);
    this.entries.set(key, own);
    this.total += audio.length;
    for (const [oldest, bytes] of this.entries) {
      if (this.total <= this.maxBytes) break;
      this.entries.delete(oldest);
      this.total -= bytes.length;
    }
  }

  private delete(key: string): void {
    const old = this.entries.get(key);
    if (!old) return;
    this.entries.delete(key);
    this.total -= old.length;
  }
}
