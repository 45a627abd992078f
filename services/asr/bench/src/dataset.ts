// The labelled test set: the demo agent's phrases and 4–6 digit strings, spoken by flite and espeak-ng voices at
// two speeds, through a telephone channel (sox: 300–3400 Hz, 8 kHz, μ-law), with white noise at a few SNRs.
// Synthesized clips are cached in the temp directory, so a rerun only pays for the streaming.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readFile, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { mulawEncode } from "@voicebot/audio";

const run = promisify(execFile);
const RATE = 8000;
const FRAME = 160;

export interface Voice {
  /** Label in the tables. */
  name: string;
  engine: "flite" | "espeak-ng";
  voice: string;
}

export const VOICES: Voice[] = [
  { name: "flite slt", engine: "flite", voice: "slt" },
  { name: "flite kal", engine: "flite", voice: "kal" },
  { name: "flite awb", engine: "flite", voice: "awb" },
  { name: "flite rms", engine: "flite", voice: "rms" },
  { name: "espeak en-us", engine: "espeak-ng", voice: "en-us" },
  { name: "espeak en-us+f3", engine: "espeak-ng", voice: "en-us+f3" },
  { name: "espeak en-us+m3", engine: "espeak-ng", voice: "en-us+m3" },
];

export type Speed = "normal" | "fast";
export const SPEEDS: Speed[] = ["normal", "fast"];
/** flite duration stretch and espeak-ng words per minute for each speed. */
const FLITE_STRETCH: Record<Speed, string> = { normal: "1.0", fast: "0.8" };
const ESPEAK_WPM: Record<Speed, string> = { normal: "165", fast: "210" };

/** Signal-to-noise ratios; "clean" still has faint line hiss (-70 dBFS), never digital zero. */
export type Snr = "clean" | "20 dB" | "10 dB";
export const SNRS: Snr[] = ["clean", "20 dB", "10 dB"];
const SNR_DB: Record<Snr, number | undefined> = { clean: undefined, "20 dB": 20, "10 dB": 10 };
const CLEAN_HISS_DBFS = -70;

/**
 * What the demo agent (services/dialog/agents/order-line.yaml) expects in its "anything else" state: the
 * global intents' phrases and keywords plus yes/no. This is the phrase list the dialog stores as hints.
 */
export const HINT_PHRASES = [
  "agent", "an agent", "a person", "real person", "representative", "human", "operator", "someone", "customer service",
  "goodbye", "good bye", "bye", "bye bye", "that's all", "that is all", "that's it", "hang up", "i'm done",
  "order status", "check an order", "check my order", "track my order", "track an order", "where is my order", "order",
  "status", "track", "tracking", "package", "delivery",
  "no", "nope", "no thanks", "no thank you", "nothing", "nothing else", "i'm good", "all set",
  "yes", "yeah", "yes please", "sure",
];

/**
 * What the demo agent's order-number state (digits mode) listens for besides the number: its global intents'
 * phrases and keywords (ask for a person, say goodbye, ask for the order menu again).
 */
export const DIGITS_STATE_PHRASES = [
  "agent", "an agent", "a person", "real person", "representative", "human", "operator", "someone", "customer service",
  "goodbye", "good bye", "bye", "bye bye", "that's all", "that is all", "that's it", "hang up", "i'm done",
  "order status", "check an order", "check my order", "track my order", "track an order", "where is my order", "order",
  "status", "track", "tracking", "package", "delivery",
];

/** What the callers say in phrases mode (all within the hints). */
export const TEST_PHRASES = [
  "order status", "check my order", "where is my order", "track my order", "agent", "customer service",
  "real person", "goodbye", "that's all", "no thanks",
];

/** Order numbers read out digit by digit (digits mode). */
export const DIGIT_STRINGS = ["4271", "90210", "358614", "7023", "61845", "240973", "8156", "53097"];

/** Each call says this many of each (a different selection per call, so every item is heard in many conditions). */
export const PHRASES_PER_CALL = 6;
export const DIGIT_STRINGS_PER_CALL = 4;
const DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
export const spokenDigits = (digits: string): string => [...digits].map((d) => DIGIT_WORDS[Number(d)]).join(" ");

export interface Clip {
  kind: "phrase" | "digits";
  /** The reference: the phrase, or the digit string. */
  reference: string;
  /** 8 kHz PCM after the telephone channel (μ-law round trip), before noise. */
  pcm: Int16Array;
  /** Where the speech starts and ends in the clip (the synthesizers pad with silence). */
  onsetSample: number;
  endSample: number;
  /** RMS of the active speech, dBFS. */
  activeDbfs: number;
}

/** Synthesizes (or loads from the cache) one clip. */
export async function synthesize(text: string, voice: Voice, speed: Speed, cacheDir: string): Promise<Int16Array> {
  const key = createHash("sha1").update(JSON.stringify([voice.engine, voice.voice, speed, text])).digest("hex").slice(0, 16);
  const raw = join(cacheDir, `${key}.raw`);
  try {
    return toPcm(await readFile(raw));
  } catch {
    // not cached yet
  }
  const work = join(cacheDir, `${key}.${process.pid}`);
  await mkdir(work, { recursive: true });
  try {
    const wav = join(work, "speech.wav");
    if (voice.engine === "flite") await run("flite", ["-voice", voice.voice, "--setf", `duration_stretch=${FLITE_STRETCH[speed]}`, "-t", text, "-o", wav]);
    else await run("espeak-ng", ["-v", voice.voice, "-s", ESPEAK_WPM[speed], "-w", wav, text]);
    // The phone line: band-limit, 8 kHz, G.711 μ-law; then back to 16-bit PCM. -R: repeatable dither.
    const line = join(work, "line.wav");
    await run("sox", ["-R", wav, "-e", "mu-law", "-c", "1", line, "sinc", "300-3400", "rate", String(RATE)]);
    const out = join(work, "clip.raw");
    await run("sox", ["-R", line, "-t", "raw", "-e", "signed", "-b", "16", "-c", "1", out]);
    await rename(out, raw);
    return toPcm(await readFile(raw));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function toPcm(bytes: Buffer): Int16Array {
  return new Int16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1).slice();
}

/** Speech extent and level from 10 ms blocks: active = within 40 dB (extent) / 30 dB (level) of the loudest. */
export function measure(pcm: Int16Array): { onsetSample: number; endSample: number; activeDbfs: number } {
  const block = RATE / 100;
  const powers: number[] = [];
  for (let i = 0; i + block <= pcm.length; i += block) {
    let sum = 0;
    for (let j = i; j < i + block; j++) sum += pcm[j] * pcm[j];
    powers.push(sum / block / (32768 * 32768));
  }
  const peak = Math.max(...powers);
  const first = powers.findIndex((p) => p > peak * 1e-4);
  let last = powers.length - 1;
  while (last > 0 && powers[last] <= peak * 1e-4) last--;
  const active = powers.filter((p) => p > peak * 1e-3);
  const activeDbfs = 10 * Math.log10(active.reduce((a, b) => a + b, 0) / active.length);
  return { onsetSample: first * block, endSample: (last + 1) * block, activeDbfs };
}

export interface Condition {
  voice: Voice;
  speed: Speed;
  snr: Snr;
}

/** Every (voice, speed, SNR) combination. */
export function conditions(voices = VOICES, speeds = SPEEDS, snrs = SNRS): Condition[] {
  return voices.flatMap((voice) => speeds.flatMap((speed) => snrs.map((snr) => ({ voice, speed, snr }))));
}

export interface CallUtterance {
  clip: Clip;
  /** First and one-past-last frame of this utterance's stretch of the call (lead-in, clip, trail). */
  startFrame: number;
  endFrame: number;
  /** Speech onset and end as sample positions in the call. */
  onsetSample: number;
  endSample: number;
}

/** One benchmark call: one caller (voice, speed) on one line (SNR) saying every test item in turn. */
export interface BenchCall {
  condition: Condition;
  utterances: CallUtterance[];
  /** 20 ms μ-law frames of the whole call. */
  frames: Uint8Array[];
}

/** Silence before each clip, and after it (long enough for the endpointing of its hints). */
const LEAD_MS = 500;
const TRAIL_MS = { phrase: 700, digits: 1100 };

export function buildCall(condition: Condition, clips: Clip[], seed: number): BenchCall {
  const ms = (x: number) => Math.round((x * RATE) / 1000 / FRAME) * FRAME;
  let total = 0;
  const layout = clips.map((clip) => {
    const clipSamples = Math.ceil(clip.pcm.length / FRAME) * FRAME;
    const start = total;
    total += ms(LEAD_MS) + clipSamples + ms(TRAIL_MS[clip.kind]);
    return { clip, start, clipAt: start + ms(LEAD_MS), end: total };
  });
  const pcm = new Float64Array(total);
  for (const { clip, clipAt } of layout) for (let i = 0; i < clip.pcm.length; i++) pcm[clipAt + i] = clip.pcm[i];
  // One noise level for the whole call, from the caller's average speech level.
  const snrDb = SNR_DB[condition.snr];
  const speechDbfs = 10 * Math.log10(clips.reduce((sum, c) => sum + 10 ** (c.activeDbfs / 10), 0) / clips.length);
  addNoise(pcm, snrDb === undefined ? CLEAN_HISS_DBFS : speechDbfs - snrDb, seed);
  const frames: Uint8Array[] = [];
  const frame = new Int16Array(FRAME);
  for (let i = 0; i < total; i += FRAME) {
    for (let j = 0; j < FRAME; j++) frame[j] = Math.max(-32768, Math.min(32767, Math.round(pcm[i + j])));
    frames.push(mulawEncode(frame));
  }
  return {
    condition,
    frames,
    utterances: layout.map(({ clip, start, clipAt, end }) => ({
      clip,
      startFrame: start / FRAME,
      endFrame: end / FRAME,
      onsetSample: clipAt + clip.onsetSample,
      endSample: clipAt + clip.endSample,
    })),
  };
}

/** White Gaussian noise at `dbfs` RMS, deterministic per seed. */
function addNoise(pcm: Float64Array, dbfs: number, seed: number): void {
  const sigma = 32768 * 10 ** (dbfs / 20);
  let state = seed >>> 0 || 1;
  const uniform = () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return (state + 1) / 4294967297;
  };
  for (let i = 0; i < pcm.length; i++) pcm[i] += sigma * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

export function defaultCacheDir(): string {
  return join(tmpdir(), "voicebot-asr-bench");
}

/** Synthesizes every clip of every condition (a few at a time) and lays out the calls. */
export async function buildCalls(conditionList: Condition[], cacheDir: string, parallel = 8): Promise<BenchCall[]> {
  await mkdir(cacheDir, { recursive: true });
  const items = [
    ...TEST_PHRASES.map((text) => ({ kind: "phrase" as const, reference: text, spoken: text })),
    ...DIGIT_STRINGS.map((digits) => ({ kind: "digits" as const, reference: digits, spoken: spokenDigits(digits) })),
  ];
  const voices = [...new Map(conditionList.map((c) => [`${c.voice.name}/${c.speed}`, c])).values()];
  const clips = new Map<string, Clip[]>();
  const jobs = voices.flatMap((c) => items.map((item, index) => ({ c, item, index })));
  for (let i = 0; i < jobs.length; i += parallel) {
    await Promise.all(
      jobs.slice(i, i + parallel).map(async ({ c, item, index }) => {
        const pcm = await synthesize(item.spoken, c.voice, c.speed, cacheDir);
        const key = `${c.voice.name}/${c.speed}`;
        const list = clips.get(key) ?? new Array<Clip>(items.length);
        list[index] = { kind: item.kind, reference: item.reference, pcm, ...measure(pcm) };
        clips.set(key, list);
      }),
    );
  }
  return conditionList.map((condition, n) => {
    const list = clips.get(`${condition.voice.name}/${condition.speed}`)!;
    const phrases = Array.from({ length: PHRASES_PER_CALL }, (_, k) => (n * PHRASES_PER_CALL + k) % TEST_PHRASES.length);
    const digits = Array.from({ length: DIGIT_STRINGS_PER_CALL }, (_, k) => TEST_PHRASES.length + ((n * DIGIT_STRINGS_PER_CALL + k) % DIGIT_STRINGS.length));
    // Phrases and digit strings interleaved, in a different order per call (like a conversation).
    const order = [...phrases, ...digits].sort((a, b) => ((a * 7919 + n * 104729) % 997) - ((b * 7919 + n * 104729) % 997));
    return buildCall(condition, order.map((i) => list[i]), n + 1);
  });
}
