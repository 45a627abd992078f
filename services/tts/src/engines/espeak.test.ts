import { readdirSync, readFileSync } from "node:fs";
import { describe, it, expect, afterAll } from "vitest";
import { EspeakEngine } from "./espeak.js";
import { RequestRefusedError } from "../engine.js";

const SENTENCE = "Your order one two three four five has shipped.";

async function collect(audio: AsyncIterable<Int16Array>): Promise<{ pcm: Int16Array; pieces: number }> {
  const parts: Int16Array[] = [];
  for await (const p of audio) parts.push(p);
  const pcm = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    pcm.set(p, at);
    at += p.length;
  }
  return { pcm, pieces: parts.length };
}

function rmsDbfs(pcm: Int16Array): number {
  let sum = 0;
  for (const s of pcm) sum += s * s;
  return 10 * Math.log10(sum / Math.max(1, pcm.length) / 32768 ** 2 + 1e-12);
}

/** Live processes named `name` that this test process started (from /proc; other users' runs do not count). */
function childrenNamed(name: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // "pid (comm) state ppid ...": a zombie (Z) has exited already.
      const m = /^\d+ \((.*)\) (\S) (\d+)/.exec(stat);
      if (m && m[1] === name && m[2] !== "Z" && Number(m[3]) === process.pid) pids.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

describe("EspeakEngine", () => {
  const engine = new EspeakEngine();
  afterAll(() => engine.close());

  it("speaks a sentence as 22050 Hz PCM, streamed in pieces", async () => {
    expect(engine.label).toBe("espeak-ng");
    expect(engine.sampleRate).toBe(22050);
    const { pcm, pieces } = await collect(engine.synthesize({ text: SENTENCE }));
    const seconds = pcm.length / engine.sampleRate;
    expect(seconds).toBeGreaterThan(1.5);
    expect(seconds).toBeLessThan(6);
    expect(rmsDbfs(pcm)).toBeGreaterThan(-35);
    expect(pieces).toBeGreaterThan(5);
  });

  it("speeds up with rate and resamples to another engine rate", async () => {
    const normal = (await collect(engine.synthesize({ text: SENTENCE }))).pcm.length;
    const fast = (await collect(engine.synthesize({ text: SENTENCE, rate: 2 }))).pcm.length;
    expect(fast / normal).toBeGreaterThan(0.35);
    expect(fast / normal).toBeLessThan(0.7);
    const at16k = new EspeakEngine({ sampleRate: 16000 });
    const resampled = (await collect(at16k.synthesize({ text: SENTENCE }))).pcm.length;
    expect(Math.abs(resampled - (normal * 16000) / 22050)).toBeLessThan(2);
    await at16k.close();
  });

  it("speaks text that looks like an option", async () => {
    expect((await collect(engine.synthesize({ text: "--help me" }))).pcm.length).toBeGreaterThan(10000);
    expect((await collect(engine.synthesize({ text: "" }))).pcm.length).toBe(0);
  });

  it("reports an unknown voice with espeak-ng's message, as a refusal of the request (not an engine failure)", async () => {
    const refused = collect(engine.synthesize({ text: SENTENCE, voice: "xx-nosuch" }));
    await expect(refused).rejects.toThrow(/espeak-ng: unknown voice "xx-nosuch": .*voice does not exist/);
    await expect(refused).rejects.toBeInstanceOf(RequestRefusedError);
  });

  it("stops quickly when aborted mid-synthesis", async () => {
    const controller = new AbortController();
    const long = Array.from({ length: 200 }, () => SENTENCE).join(" ");
    let pieces = 0;
    const t0 = performance.now();
    const run = (async () => {
      for await (const _ of engine.synthesize({ text: long, signal: controller.signal })) {
        if (++pieces === 1) controller.abort();
      }
    })();
    await expect(run).rejects.toMatchObject({ name: "AbortError" });
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(pieces).toBe(1);
    expect(childrenNamed("espeak-ng")).toEqual([]);
  });

  it("lets the caller stop early, ending the process", async () => {
    const long = Array.from({ length: 200 }, () => SENTENCE).join(" ");
    for await (const piece of engine.synthesize({ text: long })) {
      expect(piece.length).toBeGreaterThan(0);
      expect(piece.length).toBeLessThanOrEqual(2205); // at most 100 ms
      break;
    }
    expect(childrenNamed("espeak-ng")).toEqual([]);
  });

  it("says clearly when espeak-ng is missing", async () => {
    const missing = new EspeakEngine({ binary: "/nonexistent/espeak-ng" });
    await expect(collect(missing.synthesize({ text: SENTENCE }))).rejects.toThrow(/^espeak-ng not installed: apt-get install espeak-ng/);
  });
});
