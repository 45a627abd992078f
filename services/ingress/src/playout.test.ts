import { describe, expect, it } from "vitest";
import { CallPlayout, type PlayoutListener } from "./playout.js";
import type { AudioPart } from "./turn-queue.js";

type Sent = { kind: "media"; bytes: Buffer; frames: number } | { kind: "mark"; name: string } | { kind: "clear" };

function setup(leadMs = 100, stallMs = 1_000, aloneStallMs = 3_000) {
  const sent: Sent[] = [];
  const events: string[] = [];
  const listener: PlayoutListener = {
    turnStarted: (turn) => events.push(`started ${turn.id}`),
    chunkPlayed: (turn, seq) => events.push(`chunk ${turn.id}.${seq} "${turn.heardText}"`),
    turnPlayed: (turn) => events.push(`turn ${turn.id} last=${turn.lastHeardChunk} "${turn.heardText}"`),
    interrupted: (turn) => events.push(`interrupted ${turn.id} last=${turn.lastHeardChunk} "${turn.heardText}"`),
    chunkSkipped: (turn, seq, reason) => events.push(`skipped ${turn.id}.${seq} ${reason}`),
    turnAbandoned: (turn, missing) => events.push(`abandoned ${turn.id} at ${missing}`),
    underrun: (turn) => events.push(`underrun ${turn.id}`),
  };
  const playout = new CallPlayout(
    { leadMs, stallMs, aloneStallMs },
    {
      sendMedia: (bytes, frames) => sent.push({ kind: "media", bytes: Buffer.from(bytes), frames }),
      sendMark: (name) => sent.push({ kind: "mark", name }),
      sendClear: () => sent.push({ kind: "clear" }),
    },
    listener,
    () => 0,
  );
  /** Pumps every 20 ms from `from` to `to` (inclusive). */
  const run = (from: number, to: number) => {
    for (let t = from; t <= to; t += 20) playout.pump(t);
  };
  const audio = () => Buffer.concat(sent.flatMap((s) => (s.kind === "media" ? [s.bytes] : [])));
  const order = () => sent.map((s) => (s.kind === "media" ? `media:${[...new Set(s.bytes)].join(",")}` : s.kind === "mark" ? `mark:${s.name}` : "clear"));
  return { playout, sent, events, run, audio, order };
}

/** The sender overwrites its buffer (as a NATS read buffer is reused). */
function payloadsReused(buffer: Buffer): void {
  buffer.fill(7);
}

function part(turnId: string, chunkSeq: number, partSeq: number, frameCount: number, value: number, extra: Partial<AudioPart> = {}): AudioPart {
  return {
    turnId,
    chunkSeq,
    partSeq,
    payload: Buffer.alloc(frameCount * 160, value),
    chunkDone: false,
    turnDone: false,
    text: "",
    timing: undefined,
    ...extra,
  };
}

describe("CallPlayout", () => {
  it("plays out-of-order parts in chunk and part order, with a mark after each chunk", () => {
    const { playout, events, run, audio, sent } = setup();
    // chunk 1 arrives before chunk 0, parts reversed.
    playout.addAudio(part("t1", 1, 1, 2, 4, { chunkDone: true, turnDone: true }), 0);
    playout.addAudio(part("t1", 1, 0, 2, 3, { text: "How are you?" }), 0);
    playout.addAudio(part("t1", 0, 1, 2, 2, { chunkDone: true }), 0);
    expect(playout.pump(0)).toBe(true); // waiting for chunk 0 part 0
    expect(sent).toEqual([]);
    playout.addAudio(part("t1", 0, 0, 2, 1, { text: "Hello." }), 0);
    run(0, 400);
    const bytes = audio();
    expect(bytes.length).toBe(8 * 160);
    expect([...bytes.subarray(0, 320)].every((b) => b === 1)).toBe(true);
    expect([...bytes.subarray(320, 640)].every((b) => b === 2)).toBe(true);
    expect([...bytes.subarray(640, 960)].every((b) => b === 3)).toBe(true);
    expect([...bytes.subarray(960)].every((b) => b === 4)).toBe(true);
    expect(sent.filter((s) => s.kind === "mark")).toEqual([
      { kind: "mark", name: "t1.0" },
      { kind: "mark", name: "t1.1" },
    ]);
    // The mark for chunk 0 comes right after chunk 0's last frame.
    const beforeMark0 = sent.slice(0, sent.findIndex((s) => s.kind === "mark")).reduce((n, s) => n + (s.kind === "media" ? s.frames : 0), 0);
    expect(beforeMark0).toBe(4);

    expect(playout.markEchoed("t1.0")).toBe(true);
    expect(playout.markEchoed("t1.1")).toBe(true);
    expect(events).toEqual(["started t1", 'chunk t1.0 "Hello."', 'chunk t1.1 "Hello. How are you?"', 'turn t1 last=1 "Hello. How are you?"']);
    expect(playout.isTurnDone("t1")).toBe(true);
  });

  it("cuts frames across parts of any size, in order, padding only the chunk's last frame", () => {
    const { playout, run, audio } = setup();
    const bytes = Buffer.from(Array.from({ length: 420 }, (_, i) => i % 251));
    const sizes = [100, 250, 70]; // frames span parts: 100+60 | 160 | 30+70+silence
    let at = 0;
    sizes.forEach((size, partSeq) => {
      const payload = bytes.subarray(at, at + size);
      at += size;
      playout.addAudio({ ...part("t1", 0, partSeq, 0, 0, { chunkDone: partSeq === 2, turnDone: partSeq === 2 }), payload }, 0);
    });
    payloadsReused(bytes); // the queue keeps copies: the sender's buffer may be reused at once
    run(0, 100);
    const sent = audio();
    expect(sent.length).toBe(3 * 160);
    expect(sent.subarray(0, 420)).toEqual(Buffer.from(Array.from({ length: 420 }, (_, i) => i % 251)));
    expect([...sent.subarray(420)].every((b) => b === 0xff)).toBe(true);
  });

  it("a chunk that fails after some of its audio came plays that audio, whether or not a tick ran in between", () => {
    const { playout, run, order, events } = setup();
    playout.addAudio(part("t1", 0, 0, 2, 1), 0);
    playout.failChunk("t1", 0, "synthesis_failed", 0); // before any tick took the part
    playout.addAudio(part("t1", 1, 0, 1, 2, { chunkDone: true, turnDone: true }), 0);
    run(0, 200);
    expect(order()).toEqual(["media:1", "mark:t1.0", "media:2", "mark:t1.1"]);
    expect(events.filter((e) => e.startsWith("skipped"))).toEqual([]);
  });

  it("keeps at most the lead queued ahead: 5 frames at once, then one per 20 ms", () => {
    const { playout, sent } = setup(100);
    playout.addAudio(part("t1", 0, 0, 50, 9, { chunkDone: true, turnDone: true }), 0);
    playout.pump(0);
    expect(sent).toEqual([expect.objectContaining({ kind: "media", frames: 5 })]);
    playout.pump(10);
    expect(sent.length).toBe(1);
    playout.pump(20);
    expect(sent[1]).toEqual(expect.objectContaining({ frames: 1 }));
    playout.pump(100); // a late tick catches up in one message
    expect(sent[2]).toEqual(expect.objectContaining({ frames: 4 }));
  });

  it("plays turns in the order their first part arrived", () => {
    const { playout, run, order } = setup();
    playout.addAudio(part("t1", 0, 1, 1, 2, { chunkDone: true, turnDone: true }), 0);
    playout.addAudio(part("t2", 0, 0, 1, 3, { chunkDone: true, turnDone: true }), 0);
    run(0, 100);
    expect(order()).toEqual([]);
    playout.addAudio(part("t1", 0, 0, 1, 1), 0);
    run(120, 300);
    expect(order()).toEqual(["media:1,2", "mark:t1.0", "media:3", "mark:t2.0"]);
  });

  it("plays the dialog's turns in its order while they have not begun; ingress's own lines keep their place", () => {
    const { playout, run, order } = setup();
    playout.addAudio(part("t3", 0, 0, 1, 3, { chunkDone: true, turnDone: true }), 0);
    playout.addAudio(part("nosilence-1", 0, 0, 1, 9, { chunkDone: true, turnDone: true }), 0);
    playout.addAudio(part("t2", 0, 0, 1, 2, { chunkDone: true, turnDone: true }), 0);
    run(0, 100);
    expect(order()).toEqual(["media:2", "mark:t2.0", "media:3", "mark:t3.0", "media:9", "mark:nosilence-1.0"]);
  });

  it("drops a dialog turn whose audio first comes after a later dialog turn has begun: it is done, never played", async () => {
    const { playout, run, order, events } = setup();
    playout.addAudio(part("t5", 0, 0, 20, 5, { chunkDone: true, turnDone: true }), 0);
    run(0, 40); // t5 is playing
    const waiting = playout.whenTurnDone("t4");
    expect(playout.dropIfOvertaken("t4")).toBe(true);
    await waiting;
    expect(playout.isTurnDone("t4")).toBe(true);
    expect(playout.dropIfOvertaken("t4")).toBe(false); // reported once; the rest of it is a finished turn's
    expect(playout.addAudio(part("t4", 0, 1, 1, 4, { chunkDone: true, turnDone: true }), 60)).toBe("finished_turn");
    expect(playout.failChunk("t4", 1, "synthesis_failed", 60)).toBe(false);
    // Later turns, ingress's own lines and a turn that was already queued are not overtaken.
    expect(playout.dropIfOvertaken("t6")).toBe(false);
    expect(playout.dropIfOvertaken("nosilence-1")).toBe(false);
    run(60, 600);
    expect(new Set(order().filter((o) => o.startsWith("media")))).toEqual(new Set(["media:5"]));
    expect(events).toEqual(["started t5"]);
  });

  it("a turn cut by a clear counts as begun: an older turn's late audio after it is overtaken", () => {
    const { playout } = setup();
    playout.addAudio(part("t7", 0, 0, 1, 7), 0);
    playout.clear();
    expect(playout.dropIfOvertaken("t6")).toBe(true);
    expect(playout.dropIfOvertaken("t8")).toBe(false);
  });

  it("skips a chunk that failed synthesis and pads a partial last frame with silence", () => {
    const { playout, run, order, events, audio } = setup();
    playout.addAudio({ ...part("t1", 0, 0, 1, 1, { chunkDone: true }), payload: Buffer.alloc(200, 1) }, 0);
    playout.failChunk("t1", 1, "synthesis_failed", 0);
    playout.addAudio(part("t1", 2, 0, 1, 3, { chunkDone: true, turnDone: true }), 0);
    run(0, 200);
    expect(order()).toEqual(["media:1,255", "mark:t1.0", "media:3", "mark:t1.2"]);
    expect(audio().length).toBe(3 * 160);
    expect(events).toContain("skipped t1.1 synthesis_failed");
  });

  it("waits long for a missing chunk when nothing else is queued, shorter when a later turn waits", () => {
    const { playout, run, order, events } = setup(100, 1_000, 3_000);
    playout.addAudio(part("t1", 0, 0, 1, 1, { chunkDone: true }), 0);
    playout.addAudio(part("t1", 2, 0, 1, 3, { chunkDone: true }), 0);
    run(0, 2_900); // alone: a pause inside a turn is fine
    expect(order()).toEqual(["media:1", "mark:t1.0"]);
    run(2_920, 3_200);
    expect(order()).toEqual(["media:1", "mark:t1.0", "media:3", "mark:t1.2"]);
    expect(events).toContain("skipped t1.1 stalled");
    // Nothing after chunk 2 and no turnDone. Once a later turn is queued, t1 is given up after the stall limit.
    playout.markEchoed("t1.0");
    playout.markEchoed("t1.2");
    playout.addAudio(part("t2", 0, 0, 1, 5, { chunkDone: true, turnDone: true }), 3_200);
    run(3_220, 3_960); // t1 has waited since its chunk 2 ended at ~3000
    expect(order().at(-1)).toBe("mark:t1.2");
    run(3_980, 4_400);
    expect(events).toContain("abandoned t1 at 3");
    expect(events).toContain('turn t1 last=2 ""');
    expect(order().slice(-2)).toEqual(["media:5", "mark:t2.0"]);
  });

  it("reports an underrun when the buffer runs dry in the middle of a turn", () => {
    const { playout, run, events } = setup();
    playout.addAudio(part("t1", 0, 0, 2, 1, { chunkDone: true }), 0);
    run(0, 200);
    expect(events).toEqual(["started t1", "underrun t1"]);
  });

  it("clear cuts every unfinished turn, reports what was heard and drops late audio", async () => {
    const { playout, run, order, events } = setup();
    playout.addAudio(part("t1", 0, 0, 2, 1, { chunkDone: true, text: "One." }), 0);
    playout.addAudio(part("t1", 1, 0, 50, 2, { text: "Two." }), 0);
    playout.addAudio(part("t2", 0, 0, 1, 3, { chunkDone: true, turnDone: true }), 0);
    run(0, 100);
    expect(playout.markEchoed("t1.0")).toBe(true);
    const done = playout.whenTurnDone("t1");
    const cut = playout.clear();
    await done;
    expect(cut.map((t) => t.id)).toEqual(["t1", "t2"]);
    expect(events.filter((e) => e.startsWith("interrupted"))).toEqual(['interrupted t1 last=0 "One."', 'interrupted t2 last=-1 ""']);
    expect(order().at(-1)).toBe("clear");
    // Late audio of the cut turns is dropped; a new turn plays.
    expect(playout.addAudio(part("t1", 1, 1, 1, 7, { chunkDone: true, turnDone: true }), 120)).toBe("finished_turn");
    expect(playout.markEchoed("t1.1")).toBe(false);
    playout.addAudio(part("t3", 0, 0, 1, 8, { chunkDone: true, turnDone: true }), 120);
    run(120, 200);
    expect(order().slice(-2)).toEqual(["media:8", "mark:t3.0"]);
  });

  it("drops duplicate and late parts", () => {
    const { playout, run } = setup();
    expect(playout.addAudio(part("t1", 0, 0, 1, 1), 0)).toBe("accepted");
    expect(playout.addAudio(part("t1", 0, 0, 1, 1), 0)).toBe("duplicate");
    expect(playout.addAudio(part("t1", 0, 1, 1, 1, { chunkDone: true, turnDone: true }), 0)).toBe("accepted");
    run(0, 100);
    expect(playout.addAudio(part("t1", 0, 2, 1, 1), 100)).toBe("finished_turn");
  });
});
