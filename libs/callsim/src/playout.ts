/** μ-law at 8 kHz: one byte per sample, 8 bytes per millisecond. */
export const BYTES_PER_MS = 8;

type Item = { kind: "audio"; bytes: Uint8Array; offset: number } | { kind: "mark"; name: string };

/**
 * Twilio's outbound playout buffer, modelled in time: audio plays at real time from the moment it arrives
 * (or right after what is already queued), and a mark is "played" once every byte queued before it has played.
 * Time is passed in, so the model is exact and testable; the simulator advances it on every tick and message.
 */
export class PlayoutBuffer {
  private items: Item[] = [];
  /** Wall-clock ms up to which queued audio has played; undefined while nothing is queued. */
  private clock: number | undefined;
  private queuedBytes = 0;
  /** Wall-clock ms at which the buffer last ran empty (audio finished or cleared). */
  drainedAt = 0;

  constructor(private readonly onMarkPlayed: (name: string) => void) {}

  /** Audio still waiting to be played, in ms. */
  get bufferedMs(): number {
    return this.queuedBytes / BYTES_PER_MS;
  }

  /** True when nothing is queued (no audio, no marks). */
  get idle(): boolean {
    return this.items.length === 0;
  }

  get pendingMarks(): string[] {
    return this.items.flatMap((item) => (item.kind === "mark" ? [item.name] : []));
  }

  pushAudio(bytes: Uint8Array, now: number): void {
    this.advance(now);
    if (bytes.length === 0) return;
    // An empty buffer starts playing the new audio right away.
    if (this.items.length === 0) this.clock = now;
    this.items.push({ kind: "audio", bytes, offset: 0 });
    this.queuedBytes += bytes.length;
  }

  pushMark(name: string, now: number): void {
    this.advance(now);
    // Nothing before it left to play: Twilio echoes it at once.
    if (this.items.length === 0) this.onMarkPlayed(name);
    else this.items.push({ kind: "mark", name });
  }

  /** `clear`: drop queued audio; every pending mark is echoed at once. Returns the ms of audio dropped. */
  clear(now: number): number {
    this.advance(now);
    const droppedMs = this.bufferedMs;
    const marks = this.pendingMarks;
    this.items = [];
    this.queuedBytes = 0;
    this.clock = undefined;
    this.drainedAt = now;
    for (const name of marks) this.onMarkPlayed(name);
    return droppedMs;
  }

  /** Plays out everything due by `now`, echoing the marks it passes. */
  advance(now: number): void {
    if (this.clock === undefined) return;
    let budget = Math.floor((now - this.clock) * BYTES_PER_MS);
    while (this.items.length > 0) {
      const head = this.items[0];
      if (head.kind === "mark") {
        this.items.shift();
        this.onMarkPlayed(head.name);
        continue;
      }
      const take = Math.min(budget, head.bytes.length - head.offset);
      head.offset += take;
      budget -= take;
      this.queuedBytes -= take;
      this.clock += take / BYTES_PER_MS;
      if (head.offset < head.bytes.length) return; // still playing this audio
      this.items.shift();
    }
    this.drainedAt = this.clock;
    this.clock = undefined;
  }
}
