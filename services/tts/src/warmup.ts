import { errorText } from "@voicebot/bus";
import type { TtsEngine } from "./engine.js";

const WARMUP_TEXT = "Hello.";

/**
 * Has every engine speak a short word (loads the voice, proves the engine works), reporting each engine as soon
 * as it is done, so the replica can be ready once one engine works while a slow one is still warming. An engine
 * with its own warmUp() (a paid cloud API) runs that instead of a synthesis.
 */
export async function warmUp(
  engines: readonly TtsEngine[],
  options: { timeoutMs: number; signal?: AbortSignal; onResult(engine: TtsEngine, error?: string): void },
): Promise<void> {
  await Promise.all(
    engines.map(async (engine) => {
      const timeout = AbortSignal.timeout(options.timeoutMs);
      const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
      try {
        if (engine.warmUp) {
          await engine.warmUp(signal);
          if (options.signal?.aborted) return;
          options.onResult(engine);
          return;
        }
        let samples = 0;
        for await (const pcm of engine.synthesize({ text: WARMUP_TEXT, signal })) {
          samples += pcm.length;
          if (signal.aborted) break;
        }
        if (timeout.aborted) throw new Error(`no complete synthesis within ${options.timeoutMs} ms`);
        if (options.signal?.aborted) return;
        if (samples === 0) throw new Error("produced no audio");
        options.onResult(engine);
      } catch (error) {
        if (options.signal?.aborted) return;
        options.onResult(engine, timeout.aborted ? `no complete synthesis within ${options.timeoutMs} ms` : errorText(error));
      }
    }),
  );
}
