// What an engine that broke off mid-sentence leaves for the next one to say.

import { describe, expect, it } from "vitest";
import { RequestRefusedError } from "./engine.js";
import { EspeakEngine, FliteEngine } from "./engines/index.js";
import { FallbackEngine, unsaidRest } from "./fallback.js";

const SENTENCE = "Order 1 0 0 0 4 2 has shipped and arrives on Friday.";

describe("unsaidRest", () => {
  it("restarts from the word before the one the estimate (10 characters a second) falls in", () => {
    // 2.1 s: 21 characters, inside "has" (18-20): "2 has shipped..." is said again.
    expect(unsaidRest(SENTENCE, 2.1)).toBe("2 has shipped and arrives on Friday.");
    // On a word's first character ("shipped", 22): that word and the one before it.
    expect(unsaidRest(SENTENCE, 2.2)).toBe("has shipped and arrives on Friday.");
  });

  it("says the whole sentence again when the break came within its first word or two", () => {
    expect(unsaidRest(SENTENCE, 0)).toBe(SENTENCE);
    expect(unsaidRest(SENTENCE, 0.7)).toBe(SENTENCE);
    expect(unsaidRest(`  ${SENTENCE}`, 0.1)).toBe(SENTENCE);
  });

  it("leaves nothing once the audio outlasts the slowest reading of the text", () => {
    expect(unsaidRest(SENTENCE, SENTENCE.length / 10)).toBe("");
    expect(unsaidRest("Goodbye.", 5)).toBe("");
  });

  it("counts a slower speaking rate as less said, and a faster one not as more (engines clamp it)", () => {
    expect(unsaidRest(SENTENCE, 4.4, 0.5)).toBe(unsaidRest(SENTENCE, 2.2));
    expect(unsaidRest(SENTENCE, 2.2, 2)).toBe(unsaidRest(SENTENCE, 2.2));
  });
});

describe("FallbackEngine with the local engines", () => {
  async function spoken(engine: FallbackEngine, voice: string | undefined): Promise<{ samples: number; engines: string[] }> {
    const engines: string[] = [];
    let samples = 0;
    for await (const pcm of engine.synthesize({ text: "Hello there.", voice, onEngine: (label) => engines.push(label) })) samples += pcm.length;
    return { samples, engines };
  }

  it("moves a request for a voice the primary engine does not know on, without cooling that engine down for other calls", async () => {
    const failovers: string[] = [];
    const health: boolean[] = [];
    const flite = new FliteEngine({ sampleRate: 8000 });
    const espeak = new EspeakEngine({ sampleRate: 8000 });
    const engine = new FallbackEngine([flite, espeak], {
      stallMs: 5_000,
      cooldownMs: 30_000,
      onFailover: (failed, reason, error) => failovers.push(`${failed.label} ${reason}: ${error}`),
      onHealth: (_engine, healthy) => health.push(healthy),
    });
    try {
      const refused = await spoken(engine, "alloy");
      expect(refused.engines).toEqual(["espeak-ng"]);
      expect(refused.samples).toBeGreaterThan(0);
      expect(failovers).toHaveLength(1);
      expect(failovers[0]).toMatch(/^flite error: flite: unknown voice "alloy"/);
      expect(health).toEqual([]); // no cool-down
      expect((await spoken(engine, undefined)).engines).toEqual(["flite"]); // the next call keeps the primary engine
      // espeak-ng refuses an unknown voice the same way (a request error, not a sick engine).
      await expect(spoken(new FallbackEngine([espeak], { stallMs: 5_000 }), "nosuchvoice")).rejects.toThrow(/espeak-ng: unknown voice/);
      const alone = espeak.synthesize({ text: "Hi.", voice: "nosuchvoice" })[Symbol.asyncIterator]();
      await expect(alone.next()).rejects.toBeInstanceOf(RequestRefusedError);
    } finally {
      await engine.close();
    }
  });
});
