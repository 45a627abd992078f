import { describe, expect, it } from "vitest";
import { InboundJitterBuffer, MAX_CONCEAL_FRAMES, MAX_HELD_FRAMES, type JitterSink } from "./jitter.js";

interface Out {
  chunk: number;
  frames: number;
  concealed: boolean;
  bytes: number[];
  receivedAtMs: number;
}

function setup(holdMs = 60) {
  const out: Out[] = [];
  const stats = { reordered: 0, duplicate: 0, late: 0, implausible: 0, missing: 0, concealed: 0 };
  const sink: JitterSink = {
    forward: (chunk, payload, frames, receivedAtMs, concealed) =>
      out.push({ chunk, frames, concealed, bytes: [...new Set(payload)], receivedAtMs }),
    reordered: () => stats.reordered++,
    dropped: (reason) => stats[reason]++,
    gap: (missing, concealed) => {
      stats.missing += missing;
      stats.concealed += concealed;
    },
  };
  const buffer = new InboundJitterBuffer(holdMs, sink);
  /** Frame `chunk` carries bytes equal to chunk % 256 (never 0xff, the silence code, for chunks < 255). */
  const push = (chunk: number, now: number) => buffer.push(chunk, Buffer.alloc(160, chunk % 256), now, 1_000 + now);
  const chunks = () => out.map((o) => (o.concealed ? `~${o.chunk}x${o.frames}` : String(o.chunk)));
  return { buffer, out, stats, push, chunks };
}

describe("InboundJitterBuffer", () => {
  it("passes frames that arrive in order on at once, whatever their timing (bursts included)", () => {
    const { push, chunks, buffer } = setup();
    expect(push(1, 0)).toBe("forwarded");
    expect(chunks()).toEqual(["1"]);
    for (let c = 2; c <= 10; c++) expect(push(c, 500)).toBe("forwarded"); // a burst after a stall
    expect(chunks()).toEqual(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    expect(buffer.holding).toBe(false);
  });

  it("reorders frames that arrive within the hold time", () => {
    const { push, chunks, stats, buffer } = setup();
    push(1, 0);
    expect(push(3, 20)).toBe("held");
    expect(push(4, 21)).toBe("held");
    expect(chunks()).toEqual(["1"]);
    expect(buffer.pump(40)).toBe(true);
    expect(push(2, 45)).toBe("forwarded");
    expect(chunks()).toEqual(["1", "2", "3", "4"]);
    expect(stats).toMatchObject({ reordered: 2, missing: 0, concealed: 0 });
    expect(buffer.holding).toBe(false);
  });

  it("conceals a single lost frame by repeating the previous one, after the hold time", () => {
    const { push, out, chunks, stats, buffer } = setup(60);
    push(1, 0);
    push(2, 20);
    push(4, 60);
    push(5, 80);
    expect(buffer.pump(100)).toBe(true); // 40 ms held: still waiting for 3
    expect(chunks()).toEqual(["1", "2"]);
    expect(buffer.pump(120)).toBe(false);
    expect(chunks()).toEqual(["1", "2", "~3x1", "4", "5"]);
    expect(out[2].bytes).toEqual([2]); // a copy of frame 2
    expect(out[2].receivedAtMs).toBe(1_060); // placed just before frame 4
    expect(stats).toMatchObject({ missing: 1, concealed: 1, reordered: 0 });
    // Frame 3 turning up now is too late: its place was filled.
    expect(push(3, 130)).toBe("late");
    expect(stats.late).toBe(1);
  });

  it("fills a longer gap with μ-law silence, numbered so the next frame keeps its index", () => {
    const { push, out, chunks, stats, buffer } = setup(60);
    push(1, 0);
    push(5, 20);
    buffer.pump(80);
    expect(chunks()).toEqual(["1", "~2x3", "5"]);
    expect(out[1]).toMatchObject({ frames: 3, bytes: [0xff] });
    expect(stats).toMatchObject({ missing: 3, concealed: 3 });
  });

  it("holds from the stream start too (chunk 1 late), and closes several gaps in turn", () => {
    const { push, chunks, buffer } = setup(60);
    push(2, 0);
    push(4, 10);
    push(7, 50);
    buffer.pump(59);
    expect(chunks()).toEqual([]);
    buffer.pump(60); // 2 has waited long enough; 4 and 7 have not
    expect(chunks()).toEqual(["~1x1", "2"]);
    buffer.pump(70);
    expect(chunks()).toEqual(["~1x1", "2", "~3x1", "4"]);
    expect(buffer.holding).toBe(true);
    buffer.pump(110);
    expect(chunks()).toEqual(["~1x1", "2", "~3x1", "4", "~5x2", "7"]);
  });

  it("drops duplicates, whether already passed on or still held", () => {
    const { push, chunks, stats } = setup();
    push(1, 0);
    expect(push(1, 5)).toBe("duplicate");
    push(3, 10);
    expect(push(3, 11)).toBe("duplicate");
    push(2, 12);
    expect(push(2, 13)).toBe("duplicate");
    expect(chunks()).toEqual(["1", "2", "3"]);
    expect(stats).toMatchObject({ duplicate: 3, late: 0 });
  });

  it("passes a gap longer than the concealment limit on as a gap", () => {
    const { push, chunks, stats, buffer } = setup(60);
    push(1, 0);
    const far = 2 + MAX_CONCEAL_FRAMES + 5;
    push(far, 10);
    buffer.pump(70);
    expect(chunks()).toEqual(["1"]); // a lone frame far ahead waits for the next one to show the jump is real
    push(far + 1, 80);
    expect(chunks()).toEqual(["1", String(far), String(far + 1)]);
    expect(stats).toMatchObject({ missing: far - 2, concealed: 0 });
    expect(push(far + 2, 100)).toBe("forwarded");
  });

  it("bounds what it holds: past the limit the oldest gap is closed at once", () => {
    const { push, out, buffer } = setup(60);
    push(1, 0);
    for (let c = 3; c <= 3 + MAX_HELD_FRAMES; c++) push(c, 1);
    expect(out.length).toBe(1 + 1 + MAX_HELD_FRAMES + 1);
    expect(buffer.holding).toBe(false);
  });

  it("with no hold time, conceals a gap as soon as a later frame arrives", () => {
    const { push, chunks, buffer } = setup(0);
    push(1, 0);
    expect(push(3, 20)).toBe("held");
    expect(chunks()).toEqual(["1", "~2x1", "3"]);
    expect(buffer.holding).toBe(false);
  });

  it("flushAll passes on what is held at the end of the stream", () => {
    const { push, chunks, buffer } = setup(60);
    push(1, 0);
    push(3, 20);
    buffer.flushAll();
    expect(chunks()).toEqual(["1", "~2x1", "3"]);
  });

  it("drops a lone frame numbered far ahead while the stream goes on in order, instead of jumping to it", () => {
    const { push, chunks, stats, buffer } = setup();
    for (let c = 1; c <= 3; c++) push(c, c * 20);
    expect(push(100_000, 70)).toBe("held");
    for (let c = 4; c <= 10; c++) expect(push(c, c * 20)).toBe("forwarded");
    buffer.pump(1_000);
    expect(buffer.holding).toBe(false);
    expect(stats.implausible).toBe(1);
    for (let c = 11; c <= 13; c++) expect(push(c, c * 20 + 1_000)).toBe("forwarded");
    expect(chunks()).toEqual(Array.from({ length: 13 }, (_, i) => String(i + 1)));
    expect(stats.duplicate).toBe(0);
  });

  it("drops a few frames numbered far ahead together while the stream goes on in order", () => {
    const { push, chunks, stats, buffer } = setup();
    for (let c = 1; c <= 3; c++) push(c, c * 20);
    push(100_000, 70);
    push(100_001, 71);
    for (let c = 4; c <= 10; c++) expect(push(c, c * 20)).toBe("forwarded");
    buffer.pump(1_000);
    expect(buffer.holding).toBe(false);
    expect(stats).toMatchObject({ implausible: 2, duplicate: 0 });
    expect(push(11, 1_020)).toBe("forwarded");
    expect(chunks()).toEqual(Array.from({ length: 11 }, (_, i) => String(i + 1)));
  });

  it("keeps the stream when a lone frame numbered far ahead comes just before a pause in the audio", () => {
    const { push, chunks, stats, buffer } = setup();
    for (let c = 1; c <= 3; c++) push(c, c * 20);
    expect(push(100_000, 70)).toBe("held");
    for (let t = 80; t <= 1_500; t += 5) buffer.pump(t); // the link stalls for 1.5 s; the hold runs out meanwhile
    for (let c = 4; c <= 10; c++) expect(push(c, 1_500 + c * 20)).toBe("forwarded");
    buffer.pump(1_800);
    expect(buffer.holding).toBe(false);
    expect(chunks()).toEqual(Array.from({ length: 10 }, (_, i) => String(i + 1)));
    expect(stats).toMatchObject({ implausible: 1, duplicate: 0, late: 0, missing: 0 });
  });

  it("jumps over a long real gap when the stream goes on after it with frames of its own out of order or lost", () => {
    const { push, chunks, stats, buffer } = setup();
    push(1, 0);
    push(500, 5_000);
    push(502, 5_040); // 501 never comes
    push(503, 5_060);
    buffer.pump(5_200);
    expect(chunks()).toEqual(["1", "500", "~501x1", "502", "503"]);
    expect(stats).toMatchObject({ implausible: 0, missing: 499 });
  });

  it("drops a stray frame far ahead when the stream goes on further still (a backlog let through in pieces)", () => {
    const { push, chunks, stats, buffer } = setup();
    push(1, 0);
    push(480, 8_000); // a stray of the backlog
    for (let c = 601; c <= 605; c++) push(c, 8_000 + (c - 600) * 20); // the live stream
    buffer.pump(8_200);
    expect(chunks()).toEqual(["1", "601", "602", "603", "604", "605"]);
    expect(stats).toMatchObject({ implausible: 1, missing: 599 });
    expect(buffer.holding).toBe(false);
  });

  it("the frames of one longer message numbered far ahead do not vouch for each other", () => {
    const { buffer, chunks, stats } = setup(0);
    const push = (chunk: number, now: number) => buffer.push(chunk, Buffer.alloc(160, chunk % 256), now, 1_000 + now);
    push(1, 0);
    push(2, 20);
    // A 40 ms message with a wrong chunk number: two frames at once, then the stream goes on in order.
    push(20_001, 30);
    push(20_002, 30);
    expect(chunks()).toEqual(["1", "2"]);
    push(3, 40);
    buffer.pump(50);
    push(4, 60);
    expect(chunks()).toEqual(["1", "2", "3", "4"]);
    expect(stats).toMatchObject({ implausible: 2, duplicate: 0 });

    // A real jump in 40 ms messages: the next message vouches for the first, whose frames all play.
    push(30_001, 100);
    push(30_002, 100);
    push(30_003, 140);
    push(30_004, 140);
    expect(chunks().slice(4)).toEqual(["30001", "30002", "30003", "30004"]);
    expect(stats.implausible).toBe(2);
  });

  it("drops a lone frame far ahead that is still waiting when the stream ends", () => {
    const { push, chunks, stats, buffer } = setup();
    push(1, 0);
    push(5_000, 20);
    buffer.pump(1_000);
    buffer.flushAll();
    expect(chunks()).toEqual(["1"]);
    expect(stats.implausible).toBe(1);
    expect(buffer.holding).toBe(false);
  });

  it("still jumps over a long real gap: nothing came in order after the frame ahead", () => {
    const { push, chunks, stats, buffer } = setup();
    push(1, 0);
    expect(push(500, 5_000)).toBe("held"); // 10 s without frames, then the stream goes on
    push(501, 5_020);
    buffer.pump(5_200);
    expect(chunks()).toEqual(["1", "500", "501"]);
    expect(stats.implausible).toBe(0);
    expect(stats.missing).toBe(498);
  });
});
