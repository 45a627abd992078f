import { describe, expect, it } from "vitest";
import { Segmenter, type Frame, type SegmentEvent, type SegmenterOptions } from "./segmenter.js";

const options: SegmenterOptions = {
  startMs: 60,
  preRollMs: 300,
  minSilenceMs: 600,
  maxSilenceMs: 1500,
  minSpeechMs: 150,
  maxUtteranceMs: 15_000,
};

/** Feeds a pattern: "s" = speech frame, "." = silence; frame i is received at 1000 + 20 * i ms. */
function feed(segmenter: Segmenter, pattern: string, from = 0): SegmentEvent[] {
  const events: SegmentEvent[] = [];
  [...pattern].forEach((c, i) => {
    const index = from + i;
    const frame: Frame = { index, pcm: new Int16Array(160), atMs: 1000 + 20 * index };
    events.push(...segmenter.push(frame, c === "s"));
  });
  return events;
}

const ofType = <T extends SegmentEvent["type"]>(events: SegmentEvent[], type: T) =>
  events.filter((e): e is Extract<SegmentEvent, { type: T }> => e.type === type);

describe("Segmenter", () => {
  it("starts after three speech frames, with pre-roll, and ends after the minimum silence", () => {
    const s = new Segmenter(options);
    const events = feed(s, ".".repeat(40) + "s".repeat(20) + ".".repeat(40));
    const [start] = ofType(events, "start");
    expect(start.onset.index).toBe(40);
    // 15 frames (300 ms) of pre-roll before the onset, then the three frames of the start run.
    expect(start.frames.map((f) => f.index)).toEqual(Array.from({ length: 18 }, (_, i) => 25 + i));
    const [end] = ofType(events, "end");
    expect(end.reason).toBe("silence");
    expect(end.lastSpeech.index).toBe(59);
    expect(end.tooShort).toBe(false);
    expect(end.speechMs).toBe(400);
    // The end is decided on the 30th silent frame (600 ms); audio events cover everything after the start run.
    const audio = ofType(events, "audio");
    expect(audio[0].frame.index).toBe(43);
    expect(audio.at(-1)!.frame.index).toBe(89);
    expect(s.inUtterance).toBe(false);
  });

  it("tells the silence since the last speech and the speech after the start run of the utterance in progress", () => {
    const s = new Segmenter(options);
    expect([s.silenceMs, s.speechSinceStartMs]).toEqual([0, 0]);
    feed(s, "sss"); // the start run
    expect([s.silenceMs, s.speechSinceStartMs]).toEqual([0, 0]);
    feed(s, "ss....", 3);
    expect([s.silenceMs, s.speechSinceStartMs]).toEqual([80, 40]);
    feed(s, "s.", 9);
    expect([s.silenceMs, s.speechSinceStartMs]).toEqual([20, 60]);
    feed(s, ".".repeat(29), 11); // the minimum silence ends it
    expect([s.silenceMs, s.speechSinceStartMs]).toEqual([0, 0]);
  });

  it("ignores isolated speech frames shorter than the start run", () => {
    const s = new Segmenter(options);
    expect(feed(s, "ss..s.ss...s.")).toEqual([]);
    expect(s.inUtterance).toBe(false);
  });

  it("gives only the frames it has as pre-roll at the very start of a stream", () => {
    const s = new Segmenter(options);
    const [start] = ofType(feed(s, "..sss"), "start");
    expect(start.frames.map((f) => f.index)).toEqual([0, 1, 2, 3, 4]);
    expect(start.onset.index).toBe(2);
  });

  it("keeps the utterance through pauses shorter than the minimum silence", () => {
    const s = new Segmenter(options);
    const events = feed(s, "sssssss" + ".".repeat(25) + "sssssss" + ".".repeat(30));
    expect(ofType(events, "start")).toHaveLength(1);
    const ends = ofType(events, "end");
    expect(ends).toHaveLength(1);
    expect(ends[0].lastSpeech.index).toBe(38);
  });

  it("flags utterances with less than the minimum speech as too short", () => {
    const s = new Segmenter(options);
    const [end] = ofType(feed(s, "sssss" + ".".repeat(30)), "end");
    expect(end.speechMs).toBe(100);
    expect(end.tooShort).toBe(true);
  });

  it("ends at the maximum silence when stray noise keeps breaking the silence", () => {
    const s = new Segmenter(options);
    // Sustained speech, then a blip every 10 frames: continuous silence never reaches 600 ms.
    const events = feed(s, "s".repeat(10) + ".........s".repeat(20));
    const [end] = ofType(events, "end");
    expect(end.reason).toBe("max_silence");
    expect(end.lastSpeech.index).toBe(9); // the blips were noise
    const decidedAt = ofType(events, "audio").at(-1)!.frame.index;
    expect(decidedAt).toBe(9 + 75); // 1500 ms after the last sustained speech
  });

  it("cuts an utterance at the maximum length and starts a new one if speech goes on", () => {
    const s = new Segmenter({ ...options, maxUtteranceMs: 2_000 });
    const events = feed(s, "s".repeat(150));
    const starts = ofType(events, "start");
    const ends = ofType(events, "end");
    expect(ends[0].reason).toBe("max_length");
    expect(ends[0].lastSpeech.index).toBe(99); // 100 frames from the onset = 2 s
    expect(starts.map((e) => e.onset.index)).toEqual([0, 100]);
  });

  it("applies per-utterance silence overrides and forgets them for the next utterance", () => {
    const s = new Segmenter(options);
    feed(s, "sss");
    s.setSilence(1200, 1000); // max below min is raised to min
    const first = feed(s, "sss" + ".".repeat(55) + "s".repeat(5) + ".".repeat(60), 3);
    expect(ofType(first, "end")).toHaveLength(1); // a 1100 ms pause did not end it
    expect(ofType(first, "end")[0].lastSpeech.index).toBe(65);
    const second = feed(s, "sssss" + ".".repeat(30), 200);
    expect(ofType(second, "end")[0].lastSpeech.index).toBe(204);
    expect(ofType(second, "audio").at(-1)!.frame.index).toBe(234); // back to the 600 ms default
  });

  it("holds an utterance past the minimum silence while the caller seems mid-sentence, up to the maximum", () => {
    const s = new Segmenter(options);
    let unfinished = true;
    s.holdAtSilence = () => unfinished;
    // A 1 s pause after "my order number is": kept open, and the digits join the same utterance.
    const first = feed(s, "s".repeat(20) + ".".repeat(50) + "s".repeat(20) + ".".repeat(29));
    expect(ofType(first, "start")).toHaveLength(1);
    expect(ofType(first, "end")).toHaveLength(0);
    unfinished = false; // the partial now ends in digits
    const end = ofType(feed(s, ".", 119), "end");
    expect(end).toHaveLength(1);
    expect(end[0]).toMatchObject({ reason: "silence", held: true });
    expect(end[0].lastSpeech.index).toBe(89);
  });

  it("ends a held utterance at the maximum silence", () => {
    const s = new Segmenter(options);
    s.holdAtSilence = () => true;
    const events = feed(s, "s".repeat(20) + ".".repeat(100));
    const [end] = ofType(events, "end");
    expect(end).toMatchObject({ reason: "silence", held: true });
    expect(end.lastSpeech.index).toBe(19);
    expect(ofType(events, "audio").at(-1)!.frame.index).toBe(19 + 75); // 1500 ms of silence
  });

  it("does not ask about holding before the minimum silence, and reports unheld ends as such", () => {
    const s = new Segmenter(options);
    let asked = 0;
    s.holdAtSilence = () => {
      asked++;
      return false;
    };
    const [end] = ofType(feed(s, "s".repeat(20) + ".".repeat(30)), "end");
    expect(asked).toBe(1);
    expect(end).toMatchObject({ reason: "silence", held: false });
  });

  describe("complete answers", () => {
    it("ends after the complete-answer silence when the words so far are an expected answer", () => {
      const s = new Segmenter(options);
      let complete = false;
      s.completeAtSilence = () => complete;
      feed(s, "sss");
      s.setSilence(600, 1500, 300);
      // Not complete: a 400 ms pause does not end it.
      expect(ofType(feed(s, "s".repeat(17) + ".".repeat(20), 3), "end")).toEqual([]);
      complete = true; // e.g. the early recognition came back "order status"
      const speechAgain = feed(s, "s".repeat(5) + ".".repeat(15), 40);
      const [end] = ofType(speechAgain, "end");
      expect(end).toMatchObject({ reason: "complete", held: false, tooShort: false });
      expect(end.lastSpeech.index).toBe(44);
      // Decided on the 15th silent frame (300 ms), not the 30th.
      expect(ofType(speechAgain, "audio").at(-1)!.frame.index).toBe(59);
      expect(s.inUtterance).toBe(false);
    });

    it("is not asked before the complete-answer silence, nor at all when that silence is off or not below the minimum", () => {
      for (const completeSilenceMs of [0, 600, 800]) {
        const s = new Segmenter(options);
        let asked = 0;
        s.completeAtSilence = () => {
          asked++;
          return true;
        };
        feed(s, "sss");
        s.setSilence(600, 1500, completeSilenceMs);
        const [end] = ofType(feed(s, "s".repeat(17) + ".".repeat(30), 3), "end");
        expect(end.reason).toBe("silence");
        expect(asked).toBe(0);
      }
      const s = new Segmenter(options);
      const askedAt: number[] = [];
      s.completeAtSilence = () => {
        askedAt.push(s.silenceMs);
        return false;
      };
      feed(s, "sss");
      s.setSilence(600, 1500, 300);
      feed(s, "s".repeat(17) + ".".repeat(30), 3);
      // From the 300th ms of silence until the minimum silence takes over.
      expect(askedAt).toEqual(Array.from({ length: 15 }, (_, i) => 300 + 20 * i));
    });

    it("ends between frames when the answer is known only after the complete-answer silence, and not before it", () => {
      const s = new Segmenter(options);
      let complete = false;
      s.completeAtSilence = () => complete;
      feed(s, "sss");
      s.setSilence(600, 1500, 300);
      feed(s, "s".repeat(17) + ".".repeat(10), 3); // 200 ms of silence
      complete = true;
      expect(s.endIfComplete()).toBeUndefined(); // too early: a breath
      complete = false;
      feed(s, ".".repeat(12), 30); // 440 ms, not known to be complete yet
      expect(s.inUtterance).toBe(true);
      expect(s.endIfComplete()).toBeUndefined();
      complete = true; // the answer comes in between two frames
      const end = s.endIfComplete();
      expect(end).toMatchObject({ type: "end", reason: "complete" });
      expect(end!.lastSpeech.index).toBe(19);
      expect(s.inUtterance).toBe(false);
      expect(s.endIfComplete()).toBeUndefined();
    });

    it("forgets the complete-answer silence for the next utterance", () => {
      const s = new Segmenter(options);
      s.completeAtSilence = () => true;
      feed(s, "sss");
      s.setSilence(600, 1500, 300);
      expect(ofType(feed(s, "s".repeat(17) + ".".repeat(15), 3), "end")[0].reason).toBe("complete");
      const next = ofType(feed(s, "s".repeat(20) + ".".repeat(30), 100), "end");
      expect(next[0].reason).toBe("silence");
    });
  });
});
