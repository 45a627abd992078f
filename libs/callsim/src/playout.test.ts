import { describe, expect, test } from "vitest";
import { PlayoutBuffer } from "./playout.js";

const ms = (n: number) => new Uint8Array(n * 8).fill(0x7f);

function buffer() {
  const played: Array<[string, number]> = [];
  let now = 0;
  const playout = new PlayoutBuffer((name) => played.push([name, now]));
  return {
    playout,
    played,
    at(t: number) {
      now = t;
      return t;
    },
  };
}

describe("PlayoutBuffer", () => {
  test("a mark is played when the audio queued before it has played at real time", () => {
    const b = buffer();
    b.playout.pushAudio(ms(1000), b.at(0));
    b.playout.pushMark("t1.0", b.at(0));
    b.playout.advance(b.at(999));
    expect(b.played).toEqual([]);
    expect(b.playout.bufferedMs).toBeCloseTo(1, 0);
    b.playout.advance(b.at(1000));
    expect(b.played).toEqual([["t1.0", 1000]]);
    expect(b.playout.idle).toBe(true);
    expect(b.playout.drainedAt).toBe(1000);
  });

  test("audio arriving while audio plays is queued behind it; arriving into an empty buffer plays at once", () => {
    const b = buffer();
    b.playout.pushAudio(ms(200), b.at(0));
    b.playout.pushAudio(ms(200), b.at(100)); // queued: ends at 400
    b.playout.pushMark("a", b.at(100));
    b.playout.advance(b.at(399));
    expect(b.played).toEqual([]);
    b.playout.advance(b.at(400));
    expect(b.played.map(([n]) => n)).toEqual(["a"]);
    // The buffer ran dry: new audio at 1000 plays 1000..1100, not from where the old audio ended.
    b.playout.pushAudio(ms(100), b.at(1000));
    b.playout.pushMark("b", b.at(1000));
    b.playout.advance(b.at(1099));
    expect(b.played.map(([n]) => n)).toEqual(["a"]);
    b.playout.advance(b.at(1100));
    expect(b.played.map(([n]) => n)).toEqual(["a", "b"]);
  });

  test("a mark with nothing before it is echoed immediately; marks between chunks come out in order", () => {
    const b = buffer();
    b.playout.pushMark("empty", b.at(5));
    expect(b.played).toEqual([["empty", 5]]);
    b.playout.pushAudio(ms(100), b.at(10));
    b.playout.pushMark("c0", b.at(10));
    b.playout.pushAudio(ms(100), b.at(10));
    b.playout.pushMark("c1", b.at(10));
    b.playout.advance(b.at(150));
    expect(b.played.map(([n]) => n)).toEqual(["empty", "c0"]);
    // A late tick catches up: everything due by then is played, in order.
    b.playout.advance(b.at(500));
    expect(b.played.map(([n]) => n)).toEqual(["empty", "c0", "c1"]);
  });

  test("clear drops the queued audio and echoes every pending mark at once", () => {
    const b = buffer();
    b.playout.pushAudio(ms(2000), b.at(0));
    b.playout.pushMark("t1.0", b.at(0));
    b.playout.pushAudio(ms(1000), b.at(0));
    b.playout.pushMark("t1.1", b.at(0));
    const dropped = b.playout.clear(b.at(300));
    expect(dropped).toBeCloseTo(2700, 0);
    expect(b.played).toEqual([
      ["t1.0", 300],
      ["t1.1", 300],
    ]);
    expect(b.playout.idle).toBe(true);
    expect(b.playout.bufferedMs).toBe(0);
    // Audio after the clear starts afresh.
    b.playout.pushAudio(ms(100), b.at(400));
    b.playout.pushMark("t2.0", b.at(400));
    b.playout.advance(b.at(500));
    expect(b.played.at(-1)).toEqual(["t2.0", 500]);
  });
});
