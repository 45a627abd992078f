// TTS prewarm: at start the dialog asks tts to put every fixed line of its agents into the shared audio cache, so
// the first call that hears a greeting or a prompt does not wait for its synthesis.
import { createHash } from "node:crypto";
import { errorText, subjects, type Bus, type Logger } from "@voicebot/bus";
import { AudioEncoding, AudioFormat, isSpeakable, SpeakRequest, speakLineKey, TurnTiming } from "@voicebot/proto";
import { Counter, type Registry } from "prom-client";
import type { Action, AgentConfig } from "./agents/config.js";
import { CORRECTION_PROMPT, keyItInPrompt } from "./engine/confirm.js";
import { hasTemplate, renderTemplate } from "./engine/text.js";
import { SpeechOutput } from "./speech.js";

/** An agent as loaded: its file and whether its calls run on the LLM. */
export interface PrewarmAgent {
  config: AgentConfig;
  /** The agent's `llm` section is in use (an endpoint or key is configured). */
  onLlm: boolean;
}

/**
 * The format of the calls' bot audio: ingress asks for Twilio's μ-law 8000 (CallStarted.botFormat), which is also
 * the runner's default. Part of the tts cache key, so it must be what the live requests carry.
 */
export const PREWARM_FORMAT: AudioFormat = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };

/**
 * The fixed lines an agent can say, as its engines hand them to `say` (scripted lines whitespace-normalized by
 * the template renderer, LLM greeting and filler as written), the greeting's turn first. Lines with a template are
 * left out: their text is known only during a call (and they are not cacheable).
 */
export function fixedLines({ config, onLlm }: PrewarmAgent): string[] {
  const lines: string[] = [];
  const scripted = (text: string | undefined) => {
    if (text === undefined || hasTemplate(text)) return;
    const rendered = renderTemplate(text, {});
    if (rendered) lines.push(rendered);
  };
  const action = (act: Action | undefined): void => {
    if (!act) return;
    scripted(act.say);
    for (const branch of act.results ?? []) action(branch);
    action(act.onError);
    if (act.goto !== undefined) scripted(config.states[act.goto]?.prompt);
  };

  // The greeting's turn: what the first caller hears first.
  if (onLlm && config.llm?.greeting) lines.push(config.llm.greeting);
  else action(config.greeting);

  scripted(config.reprompt);
  for (const intent of config.intents) action(intent.do);
  action(config.onMaxReprompts);
  action(config.onToolError);
  if (config.toolFiller) lines.push(config.toolFiller);
  for (const state of Object.values(config.states)) {
    scripted(state.prompt);
    scripted(state.reprompt);
    for (const intent of state.intents) action(intent.do);
    action(state.onMaxReprompts);
    const collect = state.collect;
    if (collect) {
      scripted(collect.invalid);
      action(collect.do);
      if (collect.confirm) {
        scripted(CORRECTION_PROMPT);
        scripted(keyItInPrompt(collect.terminator));
      }
    }
  }
  if (onLlm && config.tools.some((tool) => tool.confirm)) {
    lines.push(CORRECTION_PROMPT, keyItInPrompt());
  }
  return lines;
}

/**
 * The prefetch SpeakRequests for the agents' fixed lines: each line cut into chunks by the same SpeechOutput a
 * live turn uses (so text, voice, format and the cacheable flag are exactly those of the live chunks, the tts cache
 * key with them), each distinct chunk once, in the agents' order (greetings first within each agent).
 */
export function prewarmRequests(agents: PrewarmAgent[]): SpeakRequest[] {
  const requests: SpeakRequest[] = [];
  const seen = new Set<string>();
  for (const agent of agents) {
    const chunks: SpeakRequest[] = [];
    const speech = new SpeechOutput({
      callId: "",
      voice: agent.config.voice,
      format: PREWARM_FORMAT,
      turnsSoFar: 0,
      timing: TurnTiming.create(),
      toolMs: () => 0,
      live: true,
      publish: (request) => void chunks.push(request),
      onTurnDone: () => undefined,
    });
    for (const line of fixedLines(agent)) {
      speech.say(line, true);
      speech.close();
    }
    for (const chunk of chunks) {
      if (!chunk.cacheable || !isSpeakable(chunk.text)) continue;
      const id = prefetchId(chunk);
      if (seen.has(id)) continue;
      seen.add(id);
      requests.push(SpeakRequest.create({ text: chunk.text, voice: chunk.voice, format: chunk.format, cacheable: true, prefetch: true }));
    }
  }
  return requests;
}

export interface PrewarmDeps {
  bus: Bus;
  log: Logger;
  registry: Registry;
}

/**
 * Queues the prefetch requests on the tts work queue. Their msgId is the line (voice, format, text), so the same
 * line from several dialog replicas starting together is stored once (JetStream's duplicate window); tts skips a
 * line already in the cache. Never throws: a line that could not be queued is only spoken the slow way once.
 */
export async function prewarmTts(deps: PrewarmDeps, requests: SpeakRequest[], signal: AbortSignal): Promise<void> {
  const { bus, log } = deps;
  const counter =
    (deps.registry.getSingleMetric("voicebot_dialog_tts_prewarm_chunks_total") as Counter<"result"> | undefined) ??
    new Counter({
      name: "voicebot_dialog_tts_prewarm_chunks_total",
      help: "Fixed lines (chunks) of the agents sent to tts at start to be cached (queued), or that could not be sent (failed)",
      labelNames: ["result"],
      registers: [deps.registry],
    });
  let queued = 0;
  let failed = 0;
  let firstError: string | undefined;
  for (const request of requests) {
    if (signal.aborted) break;
    try {
      await bus.publishDurable(subjects.ttsSpeak, SpeakRequest, request, prefetchId(request));
      queued++;
      counter.inc({ result: "queued" });
    } catch (error) {
      failed++;
      counter.inc({ result: "failed" });
      firstError ??= errorText(error);
    }
  }
  if (failed > 0) log.warn("some fixed lines could not be sent to tts for caching", { queued, failed, error: firstError });
  else log.info("fixed lines sent to tts for caching", { chunks: queued });
}

/** The line's message id: the same for the same voice, format and text (whatever replica sends it). */
function prefetchId(request: SpeakRequest): string {
  return `prefetch:${createHash("sha256").update(speakLineKey(request)).digest("hex").slice(0, 40)}`;
}
