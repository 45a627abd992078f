import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, it, expect } from "vitest";
import { FliteEngine } from "./flite.js";

const SENTENCE = "Your order one two three four five has shipped.";
const LONG = Array.from({ length: 12 }, (_, i) => `This is sentence number ${i + 1} of a long answer that keeps going on and on`).join(", and ") + ".";

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

describe("FliteEngine", () => {
  const engine = new FliteEngine();
  afterAll(() => engine.close());

  it("speaks a sentence as 16 kHz PCM pieces", async () => {
    expect(engine.label).toBe("flite");
    expect(engine.sampleRate).toBe(16000);
    const { pcm, pieces } = await collect(engine.synthesize({ text: SENTENCE }));
    const seconds = pcm.length / engine.sampleRate;
    expect(seconds).toBeGreaterThan(1.5);
    expect(seconds).toBeLessThan(6);
    expect(rmsDbfs(pcm)).toBeGreaterThan(-35);
    expect(pieces).toBeGreaterThan(5); // 100 ms pieces
  });

  it("speaks several sentences in order, one run each", async () => {
    const one = await collect(engine.synthesize({ text: "Hello there." }));
    const two = await collect(engine.synthesize({ text: "Hello there. Hello there." }));
    expect(two.pcm.length).toBe(2 * one.pcm.length); // same sentence twice, flite is deterministic
    expect(two.pcm.subarray(one.pcm.length)).toEqual(one.pcm);
  });

  it("speeds up with rate", async () => {
    const normal = (await collect(engine.synthesize({ text: SENTENCE }))).pcm.length;
    const fast = (await collect(engine.synthesize({ text: SENTENCE, rate: 2 }))).pcm.length;
    expect(fast / normal).toBeGreaterThan(0.35);
    expect(fast / normal).toBeLessThan(0.7);
    await expect(collect(engine.synthesize({ text: SENTENCE, rate: 0 }))).rejects.toThrow(RangeError);
  });

  it("gives an 8 kHz voice at the engine's rate, or an 8 kHz engine for kal", async () => {
    const viaSlt = await collect(engine.synthesize({ text: SENTENCE, voice: "kal" }));
    const seconds = viaSlt.pcm.length / 16000;
    expect(seconds).toBeGreaterThan(1.5);
    expect(seconds).toBeLessThan(6);
    const kal = new FliteEngine({ voice: "kal" });
    expect(kal.sampleRate).toBe(8000);
    const native = await collect(kal.synthesize({ text: SENTENCE }));
    expect(Math.abs(native.pcm.length * 2 - viaSlt.pcm.length)).toBeLessThanOrEqual(2);
    await kal.close();
  });

  it("rejects an unknown voice instead of falling back to kal", async () => {
    await expect(collect(engine.synthesize({ text: SENTENCE, voice: "nosuchvoice" }))).rejects.toThrow(/unknown voice "nosuchvoice".*slt/);
    await expect(collect(engine.synthesize({ text: SENTENCE, voice: "/nonexistent/x.flitevox" }))).rejects.toThrow(/Error load voice/);
  });

  it("speaks text that looks like an option, and nothing for empty text", async () => {
    const { pcm } = await collect(engine.synthesize({ text: "-o /etc/passwd" }));
    expect(pcm.length).toBeGreaterThan(8000);
    expect((await collect(engine.synthesize({ text: "  " }))).pcm.length).toBe(0);
  });

  it("stops quickly when aborted mid-synthesis", async () => {
    const controller = new AbortController();
    const t0 = performance.now();
    setTimeout(() => controller.abort(), 30);
    const outcome = collect(engine.synthesize({ text: LONG, signal: controller.signal }));
    await expect(outcome).rejects.toMatchObject({ name: "AbortError" });
    expect(performance.now() - t0).toBeLessThan(300); // the one long sentence alone takes ~0.5 s or more
    expect(childrenNamed("flite")).toEqual([]);
  });

  it("stops between sentences when aborted after the first audio", async () => {
    const controller = new AbortController();
    const text = `${SENTENCE} ${SENTENCE} ${SENTENCE}`;
    let pieces = 0;
    const run = (async () => {
      for await (const _ of engine.synthesize({ text, signal: controller.signal })) {
        if (++pieces === 1) controller.abort();
      }
    })();
    await expect(run).rejects.toMatchObject({ name: "AbortError" });
    expect(pieces).toBe(1);
    expect(childrenNamed("flite")).toEqual([]); // the prefetched second sentence was killed
  });

  it("lets the caller stop early", async () => {
    const t0 = performance.now();
    for await (const piece of engine.synthesize({ text: `${SENTENCE} ${LONG}` })) {
      expect(piece.length).toBeGreaterThan(0);
      break;
    }
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(childrenNamed("flite")).toEqual([]);
  });

  it("leaves no temp files behind", async () => {
    const parent = mkdtempSync(join(tmpdir(), "flite-test-"));
    const own = new FliteEngine({ tmpDir: parent });
    await collect(own.synthesize({ text: `${SENTENCE} ${SENTENCE}` }));
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 30);
    await expect(collect(own.synthesize({ text: LONG, signal: controller.signal }))).rejects.toMatchObject({ name: "AbortError" });
    const [scratch] = readdirSync(parent);
    expect(readdirSync(join(parent, scratch))).toEqual([]);
    await own.close();
    expect(readdirSync(parent)).toEqual([]);
    rmSync(parent, { recursive: true });
  });

  it("says clearly when flite is missing", async () => {
    const missing = new FliteEngine({ binary: "/nonexistent/bin/flite" });
    await expect(collect(missing.synthesize({ text: SENTENCE }))).rejects.toThrow(/^flite not installed: apt-get install flite/);
    await missing.close();
  });

  it("reports a failing binary's exit code and stderr", async () => {
    const broken = new FliteEngine({ binary: "/bin/sh" }); // `sh -lv` is not a flite: it fails with an error message
    await expect(collect(broken.synthesize({ text: SENTENCE }))).rejects.toThrow(/flite (exited with code \d+|-lv: unexpected output)/);
    await broken.close();
  });
});
