import { describe, expect, it } from "vitest";
import { RecentCallerAudio } from "./recent-audio.js";

/** `count` frames from `first` on, each frame's bytes its own index (mod 256). */
function block(first: number, count: number): Buffer {
  const payload = Buffer.alloc(count * 160);
  for (let i = 0; i < count; i++) payload.fill((first + i) % 256, i * 160, (i + 1) * 160);
  return payload;
}

const valuesOf = (payload: Buffer) => Array.from({ length: payload.length / 160 }, (_, i) => payload[i * 160]);

describe("recent caller audio", () => {
  it("gives back the frames from the one asked for on, as they were published", () => {
    const recent = new RecentCallerAudio(100);
    recent.add(0, block(0, 1), 1_000);
    recent.add(1, block(1, 10), 1_020); // a batch of quiet frames
    recent.add(11, block(11, 1), 1_240);
    const replay = recent.since(5)!;
    expect(replay.firstFrame).toBe(5);
    expect(replay.frameCount).toBe(7);
    expect(valuesOf(replay.payload)).toEqual([5, 6, 7, 8, 9, 10, 11]);
    expect(replay.receivedAtMs).toBe(1_240);
    expect(recent.since(12)).toBeUndefined();
  });

  it("keeps only the newest frames once the ring wraps, and says where they start", () => {
    const recent = new RecentCallerAudio(8);
    for (let frame = 0; frame < 30; frame += 3) recent.add(frame, block(frame, 3), frame);
    const replay = recent.since(0)!;
    expect(replay.firstFrame).toBe(22);
    expect(valuesOf(replay.payload)).toEqual([22, 23, 24, 25, 26, 27, 28, 29]);
    // A block longer than the ring: its last frames.
    recent.add(30, block(30, 20), 0);
    expect(valuesOf(recent.since(0)!.payload)).toEqual([42, 43, 44, 45, 46, 47, 48, 49]);
  });

  it("keeps frames that never came as silence, and ignores frames it has already", () => {
    const recent = new RecentCallerAudio(20);
    recent.add(3, block(3, 2), 0); // the stream's first frames were lost before the jitter buffer
    recent.add(8, block(8, 1), 0); // 5-7 lost
    recent.add(7, block(100, 3), 0); // overlaps 7-8: only 9 is new
    const replay = recent.since(0)!;
    expect(replay.firstFrame).toBe(3);
    expect(valuesOf(replay.payload)).toEqual([3, 4, 0xff, 0xff, 0xff, 8, 102]);
  });

  it("keeps a silence batch's frames as silence, and holds no buffer for a stretch of them", () => {
    const recent = new RecentCallerAudio(100);
    recent.add(0, block(0, 30), 0); // speech: frames 0-29
    for (let frame = 30; frame < 300; frame += 10) recent.add(frame, block(frame, 10), 0, true); // the caller listens
    recent.add(300, block(300, 2), 0); // and speaks again
    const replay = recent.since(0)!;
    expect(replay.firstFrame).toBe(202);
    expect(valuesOf(replay.payload)).toEqual([...new Array(98).fill(0xff), 300 % 256, 301 % 256]);
    // Only the block the new speech is in holds audio (5 s of frames in half-second blocks: 11 slots).
    const buffers = (recent as unknown as { blocks: Array<Buffer | undefined> }).blocks.filter(Boolean);
    expect(buffers).toHaveLength(1);
    // Quiet frames in a block that holds audio are kept as they came.
    recent.add(302, block(302, 3), 0, true);
    expect(valuesOf(recent.since(300)!.payload)).toEqual([44, 45, 46, 47, 48]);
  });

  it("has nothing before the first frame", () => {
    expect(new RecentCallerAudio(10).since(0)).toBeUndefined();
  });
});
