import { describe, expect, it } from "vitest";
import { SpeakRequest, TurnTiming } from "@voicebot/proto";
import { Limiter, QueueAbortedError } from "./limiter.js";
import { dueAt } from "./speaker.js";

describe("Limiter", () => {
  it("runs at most max holders and hands slots out in arrival order", async () => {
    const limiter = new Limiter(2);
    const a = await limiter.acquire();
    const b = await limiter.acquire();
    const order: string[] = [];
    const c = limiter.acquire().then((release) => (order.push("c"), release));
    const d = limiter.acquire().then((release) => (order.push("d"), release));
    expect(limiter.active).toBe(2);
    expect(limiter.queued).toBe(2);
    a();
    a(); // a second release of the same slot changes nothing
    const releaseC = await c;
    expect(order).toEqual(["c"]);
    expect(limiter.queued).toBe(1);
    b();
    (await d)();
    releaseC();
    expect(limiter.active).toBe(0);
  });

  it("serves waiters by when they are due, equals in arrival order", async () => {
    const limiter = new Limiter(1);
    const release = await limiter.acquire();
    const order: string[] = [];
    const waiters = (
      [
        ["later chunk", 2_000],
        ["first chunk", 1_000],
        ["another first chunk", 1_000],
        ["earliest", 500],
      ] as const
    ).map(([name, dueAt]) =>
      limiter.acquire(undefined, dueAt).then((next) => {
        order.push(name);
        next(); // the slot passes on to the next waiter
      }),
    );
    release();
    await Promise.all(waiters);
    expect(order).toEqual(["earliest", "first chunk", "another first chunk", "later chunk"]);
    expect(limiter.active).toBe(0);
  });

  it("drops a waiter whose signal aborts, without taking a slot", async () => {
    const limiter = new Limiter(1);
    const release = await limiter.acquire();
    const controller = new AbortController();
    const waiting = limiter.acquire(controller.signal);
    controller.abort();
    await expect(waiting).rejects.toBeInstanceOf(QueueAbortedError);
    expect(limiter.queued).toBe(0);
    release();
    expect(limiter.active).toBe(0);
    await expect(limiter.acquire(controller.signal)).rejects.toBeInstanceOf(QueueAbortedError);
  });

  it("tells background work when a slot is free and nobody waits, without taking the slot", async () => {
    const limiter = new Limiter(1);
    expect(limiter.hasSpare).toBe(true);
    await limiter.whenSpare();
    const first = await limiter.acquire();
    let spare = false;
    const whenSpare = limiter.whenSpare().then(() => (spare = true));
    const second = limiter.acquire();
    first(); // the slot goes straight to the waiting holder: still no spare capacity
    const releaseSecond = await second;
    await Promise.resolve();
    expect(spare).toBe(false);
    releaseSecond();
    await whenSpare;
    expect(spare).toBe(true);
    expect(limiter.active).toBe(0);
    (await limiter.acquire())(); // whenSpare took no slot

    const busy = await limiter.acquire();
    const controller = new AbortController();
    const abandoned = limiter.whenSpare(controller.signal);
    controller.abort();
    await expect(abandoned).rejects.toBeInstanceOf(QueueAbortedError);
    busy();
  });
});

describe("dueAt (synthesis slot order)", () => {
  const chunk = (chunkSeq: number, dialogFirstTextMs: number) =>
    SpeakRequest.create({ callId: "CA1", turnId: "t2", chunkSeq, timing: TurnTiming.create({ dialogFirstTextMs }) });

  it("puts a turn's first chunk at its arrival and each later one a second per chunk after the turn's first text", () => {
    expect(dueAt(chunk(0, 99_000), 100_000)).toBe(99_000);
    // Chunk 3 streamed in 2.5 s after the turn began: due 3 s after the turn began, not 3 s after it arrived.
    expect(dueAt(chunk(3, 100_000), 102_500)).toBe(103_000);
  });

  it("counts from the chunk's arrival when the dialog's time is missing or implausible (another host's clock)", () => {
    expect(dueAt(chunk(2, 0), 100_000)).toBe(102_000);
    expect(dueAt(chunk(2, 100_500), 100_000)).toBe(102_000); // after the chunk arrived
    expect(dueAt(chunk(2, 1_000), 100_000_000)).toBe(100_002_000); // long before
  });
});
