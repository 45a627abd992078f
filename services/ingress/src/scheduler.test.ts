import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { CallPlayout, type PlayoutListener } from "./playout.js";
import { PlayoutScheduler, type Pacer } from "./scheduler.js";

/** A pacer that records when it was pumped, and says whether it still has work. */
class RecordingPacer implements Pacer {
  readonly ticks: number[] = [];
  readonly wakes: number[] = [];
  busy = true;
  fail = false;

  pump(nowMs: number, onTick: boolean): boolean {
    if (this.fail) throw new Error("broken call");
    (onTick ? this.ticks : this.wakes).push(nowMs);
    return this.busy;
  }
}

describe("PlayoutScheduler", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  const clock = () => Date.now();

  it("pumps every call once per tick period, spread over the phases so no tick pumps them all", () => {
    const errors: unknown[] = [];
    const scheduler = new PlayoutScheduler(20, (e) => errors.push(e), clock, 4);
    const pacers = Array.from({ length: 8 }, () => new RecordingPacer());
    for (const pacer of pacers) scheduler.wake(pacer);
    for (const pacer of pacers) expect(pacer.wakes).toHaveLength(1);

    const perTick: number[] = [];
    for (let i = 0; i < 8; i++) {
      const before = pacers.reduce((n, p) => n + p.ticks.length, 0);
      vi.advanceTimersByTime(5);
      perTick.push(pacers.reduce((n, p) => n + p.ticks.length, 0) - before);
    }
    // Two of the eight calls on each 5 ms tick, not eight on every fourth.
    expect(perTick).toEqual([2, 2, 2, 2, 2, 2, 2, 2]);
    for (const pacer of pacers) {
      expect(pacer.ticks).toHaveLength(2);
      expect(pacer.ticks[1] - pacer.ticks[0]).toBe(20);
    }
    expect(errors).toEqual([]);
    scheduler.close();
  });

  it("keeps its ticks on a fixed grid when pumping takes time, so no call's tick drifts later", () => {
    // The scheduler's clock runs 1 ms further during every tick's pump: the work of sending the frames. A timer
    // restarted a period after each tick's work would pump each call 4 ms later every 20 ms here.
    let workMs = 0;
    const clockNow = () => Date.now() + workMs;
    const scheduler = new PlayoutScheduler(20, () => {}, clockNow, 4);
    const pumpedAt: number[][] = [[], []];
    const slow = (i: number): Pacer => ({
      pump: (_now, onTick) => {
        if (!onTick) return true;
        pumpedAt[i].push(clockNow());
        workMs += 1;
        return true;
      },
    });
    scheduler.wake(slow(0));
    scheduler.wake(slow(1));
    vi.advanceTimersByTime(400);
    for (const times of pumpedAt) {
      const periods = times.slice(1).map((t, i) => t - times[i]);
      expect(periods.length).toBeGreaterThan(15);
      for (const period of periods) expect(period).toBe(20);
    }
    scheduler.close();
  });

  it("a call woken from inside a tick does not start a second timer", () => {
    const scheduler = new PlayoutScheduler(20, () => {}, clock, 4);
    const late = new RecordingPacer();
    let woke = false;
    const waker: Pacer = {
      pump: (_now, onTick) => {
        if (onTick && !woke) {
          woke = true;
          scheduler.wake(late);
        }
        return true;
      },
    };
    scheduler.wake(waker);
    vi.advanceTimersByTime(5);
    expect(woke).toBe(true);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(200);
    expect(vi.getTimerCount()).toBe(1);
    // One tick per 20 ms for the woken call: ten in 200 ms, not twice that from a second chain.
    expect(late.ticks.length).toBeGreaterThanOrEqual(9);
    expect(late.ticks.length).toBeLessThanOrEqual(11);
    scheduler.close();
    expect(vi.getTimerCount()).toBe(0);
  });

  it("after a stall longer than a tick the calls' times go on from the present, never back", () => {
    let stallMs = 0;
    const scheduler = new PlayoutScheduler(20, () => {}, () => Date.now() + stallMs, 4);
    const pacers = Array.from({ length: 8 }, () => new RecordingPacer());
    for (const pacer of pacers) scheduler.wake(pacer);
    vi.advanceTimersByTime(100);
    stallMs = 22; // the event loop was blocked for 22 ms: every tick from here fires late, then catches up
    vi.advanceTimersByTime(200);
    for (const pacer of pacers) {
      const times = [...pacer.wakes, ...pacer.ticks];
      for (let i = 1; i < times.length; i++) expect(times[i]).toBeGreaterThan(times[i - 1]);
      expect(times.at(-1)!).toBeGreaterThan(Date.now() + stallMs - 25);
    }
    scheduler.close();
  });

  it("a call at its lead gets one frame per tick while the timer fires a few ms early or late", () => {
    // The clock the scheduler reads differs from the timer's by -3..+5 ms at every read: a timer that fires early
    // (its loop time was stale) or late (the loop was busy).
    let seed = 3;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const jittery = () => Date.now() + (random() * 8 - 3);
    const noEvents: PlayoutListener = {
      turnStarted() {},
      chunkPlayed() {},
      turnPlayed() {},
      interrupted() {},
      chunkSkipped() {},
      turnAbandoned() {},
      underrun() {},
    };
    const scheduler = new PlayoutScheduler(20, () => {}, jittery, 4);
    const calls = Array.from({ length: 12 }, () => {
      const perTick: number[] = [];
      const output = { sendMedia: (_payload: Buffer, frames: number) => perTick.push(frames), sendMark() {}, sendClear() {} };
      const playout = new CallPlayout({ leadMs: 100, stallMs: 1_000, aloneStallMs: 3_000 }, output, noEvents, () => 0);
      return { playout, perTick };
    });
    for (const [i, call] of calls.entries()) {
      vi.advanceTimersByTime(1 + (i % 7)); // turns start at different moments
      const payload = Buffer.alloc(600 * 160, 9);
      call.playout.addAudio({ turnId: "t1", chunkSeq: 0, partSeq: 0, payload, chunkDone: true, turnDone: true, text: "", timing: undefined }, jittery());
      scheduler.wake(call.playout);
    }
    vi.advanceTimersByTime(5_000);
    for (const { perTick } of calls) {
      // The turn's start fills the lead; from then on one frame per message, never two at once.
      expect(perTick.length).toBeGreaterThan(240);
      expect(perTick.slice(3).filter((frames) => frames !== 1)).toEqual([]);
    }
    scheduler.close();
  });

  it("with one phase pumps every call on the same tick", () => {
    const scheduler = new PlayoutScheduler(20, () => {}, clock, 1);
    const pacers = Array.from({ length: 3 }, () => new RecordingPacer());
    for (const pacer of pacers) scheduler.wake(pacer);
    vi.advanceTimersByTime(20);
    for (const pacer of pacers) expect(pacer.ticks).toHaveLength(1);
    expect(new Set(pacers.map((p) => p.ticks[0])).size).toBe(1);
    scheduler.close();
  });

  it("drops a call with nothing left to pace and stops its timer when no call has work", () => {
    const scheduler = new PlayoutScheduler(20, () => {}, clock, 4);
    const pacer = new RecordingPacer();
    scheduler.wake(pacer);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(20);
    expect(pacer.ticks).toHaveLength(1);
    pacer.busy = false;
    vi.advanceTimersByTime(20);
    expect(pacer.ticks).toHaveLength(2);
    expect(scheduler.activeCount).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(100);
    expect(pacer.ticks).toHaveLength(2);

    // New audio wakes it again.
    pacer.busy = true;
    scheduler.wake(pacer);
    vi.advanceTimersByTime(20);
    expect(pacer.ticks).toHaveLength(3);
    scheduler.remove(pacer);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("a call whose pump throws is dropped and reported; the other calls keep their pacing", () => {
    const errors: unknown[] = [];
    const scheduler = new PlayoutScheduler(20, (e) => errors.push(e), clock, 2);
    const broken = new RecordingPacer();
    const healthy = [new RecordingPacer(), new RecordingPacer(), new RecordingPacer()];
    scheduler.wake(broken);
    for (const pacer of healthy) scheduler.wake(pacer);
    broken.fail = true;
    vi.advanceTimersByTime(40);
    expect(errors).toHaveLength(1);
    expect(scheduler.activeCount).toBe(3);
    for (const pacer of healthy) expect(pacer.ticks).toHaveLength(2);
    scheduler.close();
    expect(vi.getTimerCount()).toBe(0);
  });
});
