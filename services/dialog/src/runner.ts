import { errorText, isValidCallId, subjects, type Bus, type Delivery, type Logger, type WorkItem } from "@voicebot/bus";
import { AudioEncoding, AudioFormat, SpeakRequest, type CallStarted, type DialogInput, type TurnTiming } from "@voicebot/proto";
import { keys, type CallStore, type TranscriptEntry } from "@voicebot/state";
import { KEYS } from "./agents/config.js";
import type { DialogEngine, EngineInput, RecognitionHints, TurnIO, TurnResult } from "./engine/types.js";
import type { TurnLease } from "./lease.js";
import type { DialogMetrics } from "./metrics.js";
import { SpeechOutput } from "./speech.js";
import type { ToolClient } from "./tools.js";

/** A configured agent: its engine and how it speaks. */
export interface Agent {
  name: string;
  engine: DialogEngine;
  voice: string;
}

/** A call's dialog state in Redis (store.loadDialog/saveDialog). */
export interface DialogState {
  agent: string;
  /** Bot turns so far; the next is t<turns+1>. */
  turns: number;
  format: { encoding: AudioEncoding; sampleRate: number };
  startedAtMs: number;
  /** The latest input ids handled, so a redelivered input is acked without acting twice. */
  processed: string[];
  /** The conversation is over (hang-up or transfer under way): later inputs are ignored. */
  done: boolean;
  /** The engine's own state. */
  engine: unknown;
}

export interface RunnerDependencies {
  store: CallStore;
  bus: Bus;
  log: Logger;
  metrics: DialogMetrics;
  agents: Map<string, Agent>;
  defaultAgent: string;
  lease: TurnLease;
  tools: ToolClient;
}

const MAX_PROCESSED = 50;
const MAX_ATTEMPTS = 3;
const DEFAULT_FORMAT = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };
const APOLOGY = "Sorry, something went wrong on my side.";

type Dropped = { drop: string };

/**
 * Takes dialog inputs off the work queue and plays them as turns: one at a time per call (in arrival order in
 * this process, and across replicas through the `dialog` lease), with the state saved before the input is acked.
 */
export class TurnRunner {
  /** Per call: the tail of its queue of inputs in this process. */
  private readonly chains = new Map<string, Promise<void>>();

  constructor(private readonly deps: RunnerDependencies) {}

  /** Calls with an input being handled (or waiting behind one) in this process. */
  activeCalls(): number {
    return this.chains.size;
  }

  /** The bus.consume handler: queues the input behind the call's earlier ones and resolves when it is done. */
  handle = (message: DialogInput, item: WorkItem, delivery: Delivery): Promise<void> => {
    const receivedAt = Date.now();
    const callId = message.callId || delivery.callId || "";
    if (!isValidCallId(callId)) {
      this.drop(item, "invalid_call_id", { callId, inputId: message.inputId });
      return Promise.resolve();
    }
    const previous = this.chains.get(callId) ?? Promise.resolve();
    const task = previous.then(() => this.process({ ...message, callId }, item, receivedAt));
    const tail = task.catch(() => undefined);
    this.chains.set(callId, tail);
    void tail.then(() => {
      if (this.chains.get(callId) === tail) this.chains.delete(callId);
    });
    return task; // a rejection makes the bus nak the input for redelivery
  };

  private drop(item: WorkItem, reason: string, fields: Record<string, unknown>): void {
    this.deps.metrics.dropped.inc({ reason });
    const quiet = reason === "duplicate" || reason === "conversation_over";
    this.deps.log[quiet ? "info" : "warn"]("dialog input dropped", { reason, ...fields });
    item.ack();
  }

  private async process(message: DialogInput, item: WorkItem, receivedAt: number): Promise<void> {
    const { callId, inputId } = message;
    const fields = { callId, inputId };
    const input = message.input;
    if (!input) return this.drop(item, "empty", fields);
    if (input.$case === "callEnded") {
      // The store's endCall already removed the call's live state; nothing is left to do.
      this.deps.log.info("call ended", { ...fields, reason: input.value.reason });
      item.ack();
      return;
    }
    if (input.$case === "playback") {
      item.ack(); // the scripted dialog does not act on playback progress
      return;
    }
    const engineInput = toEngineInput(message);
    if ("drop" in engineInput) return this.drop(item, engineInput.drop, fields);
    const callState = await this.deps.store.callState(callId);
    if (callState !== "live") return this.drop(item, callState === "ended" ? "ended_call" : "unknown_call", fields);

    const release = await this.deps.lease.acquire(callId);
    if (!release) {
      this.deps.metrics.leaseBusy.inc();
      this.deps.log.info("another replica is taking a turn of this call; input handed back", { ...fields, delivery: item.deliveryCount });
      item.nak(Math.min(50 * 4 ** Math.max(0, item.deliveryCount - 1), 2_000));
      return;
    }
    try {
      await this.turn(message, engineInput, item, receivedAt);
    } finally {
      await release();
    }
  }

  private async turn(message: DialogInput, engineInput: EngineInput, item: WorkItem, receivedAt: number): Promise<void> {
    const { store, metrics, log } = this.deps;
    const { callId, inputId } = message;
    const fields = { callId, inputId };
    const input = message.input!;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const loaded = await store.loadDialog<DialogState>(callId);
      let state = loaded.value;
      if (state?.processed.includes(inputId)) return this.drop(item, "duplicate", fields);
      if (input.$case === "callStarted") {
        if (state) return this.drop(item, "already_started", fields);
        state = this.newState(input.value, message.atMs || receivedAt);
      } else if (!state) {
        state = await this.recoverState(callId, receivedAt);
      }
      if (state.done) return this.drop(item, "conversation_over", fields);
      if (input.$case === "noInput" && input.value.turnId && input.value.turnId !== `t${state.turns}`) {
        return this.drop(item, "stale_no_input", fields);
      }

      const agent = this.agentFor(state.agent);
      const played = await this.play(agent, state, engineInput, message, receivedAt, attempt > 0);
      const next: DialogState = {
        ...state,
        turns: played.turns,
        done: played.result.done === true,
        engine: played.result.state,
        processed: [...state.processed, inputId].slice(-MAX_PROCESSED),
      };
      if (played.hints) await store.setJson(keys.hints(callId), played.hints);
      if (await store.saveDialog(callId, next, loaded.version)) {
        item.ack();
        const outcome = played.result.outcome;
        metrics.turns.inc({ outcome });
        if (outcome === "reprompt" || outcome === "max_reprompts") metrics.reprompts.inc({ agent: agent.name });
        metrics.turnSeconds.observe((Date.now() - receivedAt) / 1000);
        log.info("turn done", { ...fields, kind: engineInput.kind, outcome, turns: next.turns, done: next.done, ms: Date.now() - receivedAt });
        return;
      }
      // Someone saved in between (a lease that expired mid-turn): redo on the new state without repeating speech.
      metrics.conflicts.inc();
      log.warn("dialog state changed during the turn; redoing it", { ...fields, attempt });
      if ((await store.callState(callId)) !== "live") return this.drop(item, "ended_call", fields);
    }
    throw new Error(`dialog state of call ${callId} kept changing during input ${inputId}`);
  }

  private async play(
    agent: Agent,
    state: DialogState,
    engineInput: EngineInput,
    message: DialogInput,
    receivedAt: number,
    replay: boolean,
  ): Promise<{ result: TurnResult<unknown>; hints?: RecognitionHints; turns: number }> {
    const { store, bus, log, tools } = this.deps;
    const callId = message.callId;
    let records = Promise.resolve();
    const record = (entry: TranscriptEntry) => {
      records = records
        .then(() => store.appendTranscript(callId, entry))
        .catch((error) => log.warn("transcript entry not recorded", { callId, error: errorText(error) }));
    };
    let toolMs = 0;
    let toolIndex = 0;
    let hints: RecognitionHints | undefined;
    const speech = new SpeechOutput({
      callId,
      voice: agent.voice,
      format: AudioFormat.create(state.format),
      turnsSoFar: state.turns,
      timing: timingFor(message, receivedAt),
      toolMs: () => toolMs,
      live: !replay,
      publish: (request) => bus.publish(subjects.ttsSpeak, SpeakRequest, request, callId),
      onTurnDone: (_turnId, text) => record({ role: "bot", text, at: new Date().toISOString() }),
    });
    const io: TurnIO = {
      heard: (entry) => {
        if (replay) return;
        record({ role: "caller", at: new Date(inputTime(message, receivedAt)).toISOString(), ...entry });
      },
      say: (text, options) => speech.say(text, options?.cacheable === true),
      callTool: async (name, args, options) => {
        speech.close(); // what was said so far plays before the tool acts
        const outcome = await tools.call({
          callId,
          // Deterministic per input and position, so a redone turn gets the first execution's result.
          toolCallId: `${message.inputId}/${toolIndex++}`,
          name,
          args,
          timeoutMs: options?.timeoutMs ?? 0,
          turnId: speech.lastTurnId,
          agent: agent.name,
        });
        toolMs += outcome.ms;
        if (!outcome.ok) log.warn("tool call failed", { callId, tool: name, errorCode: outcome.errorCode, error: outcome.errorMessage });
        return outcome;
      },
      setHints: (next) => {
        hints = next;
      },
    };

    let result: TurnResult<unknown>;
    const engineState = state.engine ?? agent.engine.initialState();
    try {
      result = await agent.engine.turn(engineInput, engineState, io);
    } catch (error) {
      // An engine bug must not leave the caller in silence or loop the input through redeliveries.
      log.error("dialog engine failed; apologizing and keeping the previous state", { callId, agent: agent.name, error: errorText(error) });
      speech.say(APOLOGY, true);
      result = { state: engineState, outcome: "engine_error" };
    }
    speech.close();
    await records;
    return { result, hints, turns: speech.turnCount };
  }

  private agentFor(name: string): Agent {
    return this.deps.agents.get(name) ?? this.deps.agents.get(this.deps.defaultAgent)!;
  }

  private newState(started: CallStarted, startedAtMs: number): DialogState {
    let agent = started.agent || this.deps.defaultAgent;
    if (!this.deps.agents.has(agent)) {
      this.deps.metrics.unknownAgents.inc();
      this.deps.log.warn("call asked for an unknown agent; using the default", { callId: started.callId, agent, default: this.deps.defaultAgent });
      agent = this.deps.defaultAgent;
    }
    const format = started.botFormat;
    return {
      agent,
      turns: 0,
      format:
        format && format.encoding !== AudioEncoding.AUDIO_ENCODING_UNSPECIFIED && format.sampleRate > 0
          ? { encoding: format.encoding, sampleRate: format.sampleRate }
          : DEFAULT_FORMAT,
      startedAtMs: started.startedAtMs || startedAtMs,
      processed: [],
      done: false,
      engine: this.agentFor(agent).engine.initialState(),
    };
  }

  /** A live call without dialog state (its start input was lost): continue with the agent its record names. */
  private async recoverState(callId: string, now: number): Promise<DialogState> {
    const record = await this.deps.store.getRecord(callId);
    const agent = record?.agent && this.deps.agents.has(record.agent) ? record.agent : this.deps.defaultAgent;
    this.deps.log.warn("no dialog state for a live call; starting one without a greeting", { callId, agent });
    return {
      agent,
      turns: 0,
      format: DEFAULT_FORMAT,
      startedAtMs: Date.parse(record?.startedAt ?? "") || now,
      processed: [],
      done: false,
      engine: this.agentFor(agent).engine.initialState(),
    };
  }
}

export function toEngineInput(message: DialogInput): EngineInput | Dropped {
  const input = message.input;
  switch (input?.$case) {
    case "callStarted":
      return { kind: "start" };
    case "transcript":
      if (!input.value.isFinal) return { drop: "partial_transcript" };
      return { kind: "speech", text: input.value.text, confidence: input.value.confidence };
    case "keypad": {
      const digit = input.value.digit;
      if (digit.length !== 1 || !KEYS.includes(digit)) return { drop: "invalid_input" };
      return { kind: "keypad", digit, atMs: input.value.atMs || message.atMs };
    }
    case "noInput":
      return { kind: "noInput" };
    default:
      return { drop: "invalid_input" };
  }
}

/** When the caller's input ended: speech end, the key press, or the call's start. */
function inputTime(message: DialogInput, receivedAt: number): number {
  const input = message.input;
  switch (input?.$case) {
    case "transcript":
      return input.value.speechEndMs || input.value.finalAtMs || message.atMs || receivedAt;
    case "keypad":
      return input.value.atMs || message.atMs || receivedAt;
    case "callStarted":
      return input.value.startedAtMs || message.atMs || receivedAt;
    default:
      return message.atMs || receivedAt;
  }
}

function timingFor(message: DialogInput, receivedAt: number): Pick<TurnTiming, "inputEndMs" | "asrFinalMs" | "endpointWaitMs" | "dialogStartMs"> {
  const transcript = message.input?.$case === "transcript" ? message.input.value : undefined;
  return {
    inputEndMs: inputTime(message, receivedAt),
    asrFinalMs: transcript?.finalAtMs ?? 0,
    endpointWaitMs: transcript?.endpointWaitMs ?? 0,
    dialogStartMs: receivedAt,
  };
}
