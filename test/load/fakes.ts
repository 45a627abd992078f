// The paid cloud edge of the load test, in its own process so its CPU is not counted as pipeline: a fake OpenAI
// transcription server and a fake ElevenLabs, both answering at once, both timing every request they serve.
// Started by the bench with an IPC channel: it sends {type:"ready", ...urls}; on {type:"collect"} it answers
// with the engine times, on {type:"stop"} it stops.
import { startFakeElevenLabs, startFakeOpenAI, syntheticSpeech, type FakeTtsDelivery } from "@voicebot/testing";
import { readWatermarkWav } from "./audio.js";
import { ELEVENLABS_KEY, OPENAI_KEY, slotOfOrderText, TRANSCRIPT } from "./script.js";

/** Speech rate of the fake voice: about 15 characters per second, as people speak. */
const MS_PER_CHAR = 65;

/** One served request: which call slot it was for (-1: could not tell), when it arrived and when it answered. */
export interface EngineRecord {
  slot: number;
  atMs: number;
  answeredMs: number;
}

export interface FakesReady {
  type: "ready";
  openaiBaseUrl: string;
  elevenLabsBaseUrl: string;
}

export interface FakesRecords {
  type: "records";
  asr: EngineRecord[];
  tts: EngineRecord[];
}

async function main(): Promise<void> {
  // The transcription's wait before it answers (argv[2], ms): 0 measures the pipeline, ~300 stands for a cloud API.
  const asrDelayMs = Number(process.argv[2] ?? 0) || 0;
  // Pre-generated speech, long enough for any sentence; a request gets a slice as long as its text would take.
  const voice = syntheticSpeech(Array.from({ length: 120 }, (_, i) => `word${"x".repeat(i % 7)}`).join(" "), 8000);
  const asr: EngineRecord[] = [];
  const tts: EngineRecord[] = [];
  const pending: Array<{ slot: number; atMs: number; delivery: FakeTtsDelivery }> = [];

  const openai = await startFakeOpenAI({
    apiKey: OPENAI_KEY,
    transcribe: async (request) => {
      if (asrDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, asrDelayMs));
      asr.push({ slot: readWatermarkWav(request.file.bytes), atMs: request.request.at, answeredMs: Date.now() });
      return { text: TRANSCRIPT };
    },
  });
  const elevenLabs = await startFakeElevenLabs({
    apiKey: ELEVENLABS_KEY,
    speech: (text, sampleRate) => {
      const samples = Math.min(voice.length, Math.round((text.length * MS_PER_CHAR * sampleRate) / 1000));
      return voice.subarray(0, samples);
    },
    reply: (request) => {
      // The fake pushed this request's record just before asking for the reply: its delivery times the answer.
      const call = elevenLabs.speeches[elevenLabs.speeches.length - 1];
      pending.push({ slot: slotOfOrderText(request.text), atMs: request.request.at, delivery: call.delivery });
      return {};
    },
  });

  // The fakes keep every request they saw; a load test sends far too many to keep, so only the timings stay.
  const sweepNow = () => {
    openai.requests.length = 0;
    openai.transcriptions.length = 0;
    elevenLabs.requests.length = 0;
    elevenLabs.speeches.length = 0;
    let kept = 0;
    for (const entry of pending) {
      const { slot, atMs, delivery } = entry;
      if (delivery.firstByteAt !== undefined) tts.push({ slot, atMs, answeredMs: delivery.firstByteAt });
      else if (delivery.outcome === undefined) pending[kept++] = entry;
    }
    pending.length = kept;
  };
  const sweep = setInterval(sweepNow, 200);

  process.on("message", (message: { type?: string }) => {
    if (message.type === "collect") {
      sweepNow();
      process.send!({ type: "records", asr: asr.splice(0), tts: tts.splice(0) } satisfies FakesRecords);
    } else if (message.type === "stop") {
      clearInterval(sweep);
      void Promise.all([openai.stop(), elevenLabs.stop()]).finally(() => process.exit(0));
    }
  });
  process.on("disconnect", () => process.exit(0));
  process.send!({ type: "ready", openaiBaseUrl: openai.baseUrl, elevenLabsBaseUrl: elevenLabs.baseUrl } satisfies FakesReady);
}

await main();
