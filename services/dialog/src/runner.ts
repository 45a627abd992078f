import { setTimeout as sleep } from "node:timers/promises";
import { createHash } from "node:crypto";
import { dialogTurnNumber, errorText, isValidCallId, LogThrottle, OVERTAKEN_CANCEL_REASON, streams, subjects, type Bus, type Delivery, type Logger, type WorkItem } from "@voicebot/bus";
import {
  AudioEncoding,
  AudioFormat,
  CallControl,
  CallControl_Action,
  DialogInput as DialogInputCodec,
  NoInput,
  PlaybackEvent_Kind,
  SpeakRequest,
  type CallStarted,
  type DialogInput,
  type PlaybackEvent,
  type TurnTiming,
} from "@voicebot/proto";
import type { CallStore, DialogVersioned, TranscriptEntry } from "@voicebot/state";
import { retryWhileLinkLost, setNewest } from "@voicebot/service-kit";
import { KEYS } from "./agents/config.js";
import type { InFlightTurns } from "./cancel.js";
import type { DialogEngine, EngineInput, RecognitionHints, TurnIO, TurnResult } from "./engine/types.js";
import type { HeldTurn, TurnLease } from "./lease.js";
import type { DialogMetrics } from "./metrics.js";
import { markInterrupted } from "./record.js";
import { SpeechOutput } from "./speech.js";
import type { ToolClient } from "./tools.js";

/** A configured agent: its engine and how it speaks. */
export interface Agent {
  name: string;
  engine: DialogEngine;
  voice: string;
  /** Said as its own turn when a tool is slow (null = never). */
  toolFiller: string | null;
}

/** A call's dialog state in Redis (store.takeDialogTurn/commitDialog). */
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
  /** The latest bot turns and the text recorded for each (to rewrite the record after a barge-in). */
  spoken?: Array<{ turnId: string; text: string }>;
  /**
   * What the caller did not hear when a barge-in cut the bot off (said again after a false one): from turn `turnId`
   * (the one playing) through `lastTurnId` (turns queued behind it were cut too).
   */
  unheard?: { turnId: string; lastTurnId: string; text: string };
  /**
   * What the last input's handling went on to say after a barge-in stopped its speech (a tool's answer that came
   * while the caller talked over "let me check"): never sent, said after the unheard part if the barge-in was false.
   */
  unsaid?: string;
}

/**
 * The input whose turn is being played (its DialogInput, protobuf in base64), stored beside the dialog state (the
 * store's mark) from the start of its turn until the turn is saved. If the replica playing it dies, the replica that
 * takes the call's next input finds it and does it first, so the caller's inputs are answered in order (JetStream
 * would hand it back only after the ack wait, behind them). `restart`: the turn starts the conversation over.
 */
interface InProgress {
  inputId: string;
  input: string;
  restart?: boolean;
}

/** The dialog state as read, with the input in progress. */
interface LoadedDialog {
  value: DialogState | undefined;
  version: string;
  inProgress?: InProgress;
  /** The stored mark as read (to clear exactly it). */
  mark?: string;
}

/** Versions before the mark was kept beside the state kept it inside: such a state is read the same way. */
type StoredDialogState = DialogState & { inProgress?: InProgress };

function loadedDialog(stored: DialogVersioned<StoredDialogState>): LoadedDialog {
  const { value: raw, version, mark } = stored;
  // An older state's own mark leaves it here (a mark beside it is newer), so the next save does not carry it on.
  const { inProgress: inside, ...rest } = raw ?? {};
  const value = raw ? (rest as DialogState) : undefined;
  // An unreadable mark names no input to redo; the next mark or save replaces it.
  if (mark) return { value, version, inProgress: parseMark(mark), mark };
  return inside ? { value, version, inProgress: inside } : { value, version };
}

function parseMark(mark: string): InProgress | undefined {
  try {
    const parsed = JSON.parse(mark) as Partial<InProgress> | null;
    return typeof parsed?.inputId === "string" && typeof parsed.input === "string" ? (parsed as InProgress) : undefined;
  } catch {
    return undefined;
  }
}

/** A save that keeps the input in progress: a mark read from inside an older state moves beside it, else it stays. */
function movedMark(loaded: LoadedDialog): string | undefined {
  return loaded.inProgress && !loaded.mark ? JSON.stringify(loaded.inProgress) : undefined;
}

function inProgressMark(message: DialogInput, restart = false): string {
  const input = Buffer.from(DialogInputCodec.encode(message).finish()).toString("base64");
  return JSON.stringify({ inputId: message.inputId, input, ...(restart ? { restart } : {}) } satisfies InProgress);
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
  inFlight: InFlightTurns;
  /** The work queue's ack wait: a turn in progress tells JetStream it is alive well within it. */
  ackWaitMs: number;
  /** A tool still running after this long gets a filler line. */
  toolFillerMs: number;
}

/** Deliveries of a dialog input the work queue makes (an input handed back while another replica has the turn counts). */
export const DIALOG_INPUT_MAX_DELIVER = 10;
/** An input at its last deliveries waits in place for a long turn of another replica at most this long. */
const MAX_LEASE_WAIT_IN_PLACE_MS = 5 * 60_000;
/** How often such an input looks at the lease again (besides the lease's own wait). */
const LEASE_POLL_MS = 100;

const MAX_PROCESSED = 50;
const MAX_SPOKEN = 10;
/** Engine outcomes that are steps of confirming digits -> the confirmation metric's label. */
const CONFIRMATION_OUTCOMES: Record<string, string> = {
  confirm_asked: "asked",
  confirmed: "confirmed",
  corrected: "corrected",
  confirm_rejected: "rejected",
};
/**
 * An input whose earlier delivery started but never finished (its replica died) may have sent some turns. The redo
 * numbers its turns past anything that attempt can have used, so ingress never mixes the two: an input makes at
 * most a handful of turns (LLM rounds are bounded), far fewer than this.
 */
const REDO_TURN_GAP = 20;
/** Tools that act on the call; a filler before them would only delay the goodbye. */
const NO_FILLER_TOOLS = new Set(["end_call", "transfer_to_human", "send_dtmf"]);
const MAX_ATTEMPTS = 3;
/** PlaybackEvent reasons of a turn ingress dropped unplayed (its audio came too late): no barge-in. */
const UNPLAYED_REASONS = new Set(["superseded", OVERTAKEN_CANCEL_REASON]);
/**
 * How soon a waiting input looks again for the earlier one (doubling to the most): an earlier input another replica
 * just acked can still be found for a moment (the server removes it a little after the ack). And how long past the
 * ack wait it waits at most.
 */
const EARLIER_INPUT_FIRST_POLL_MS = 5;
const EARLIER_INPUT_MAX_POLL_MS = 160;
const EARLIER_INPUT_GRACE_MS = 1_000;
/** Calls remembered with an earlier input given up on or acked here (bounded: oldest forgotten first). */
const MAX_REMEMBERED_CALLS = 10_000;
const ACKED_KEPT_PER_CALL = 4;
/** How long an input is tried again in place while Redis or NATS is down or failing over (see processInOrder). */
const RETRY_IN_PLACE_MS = 20_000;
/** The once-scope of dialog inputs: marked when an input's turn starts. */
const DIALOG_INPUT_SCOPE = "dialog-input";
const DEFAULT_FORMAT = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };
const APOLOGY = "Sorry, something went wrong on my side.";
/** Said before the greeting when a live call's dialog state was lost (Redis lost its data). */
const RESTART_APOLOGY = "Sorry, we had a technical problem, so let's start again.";

type Dropped = { drop: string };

interface InputWait {
  begins(): void;
  ends(): void;
}

/**
 * Takes dialog inputs off the work queue and plays them as turns: one at a time per call (in arrival order in
 * this process, and across replicas through the `dialog` lease), with the state saved before the input is acked.
 */
export class TurnRunner {
  /** Per call: the tail of its queue of inputs in this process. */
  private readonly chains = new Map<string, Promise<void>>();
  /** Per call: its inputs this process holds (by stream sequence), each settled once it is done. */
  private readonly held = new Map<string, Map<number, Promise<void>>>();
  /** Per call: the latest earlier input given up on (waited for in vain): not waited for again here. */
  private readonly gaveUpOn = new Map<string, number>();
  /** Per call: the stream sequences of its latest inputs this process acked (the queue may show them a moment longer). */
  private readonly acked = new Map<string, number[]>();

  constructor(private readonly deps: RunnerDependencies) {}

  /** Calls with an input being handled (or waiting behind one) in this process. */
  activeCalls(): number {
    return this.held.size;
  }

  /**
   * The bus.consume handler: once no earlier input of the call is left in the queue (afterEarlierInputs), queues
   * the input behind the call's earlier ones in this process, and resolves when it is done.
   */
  handle = (message: DialogInput, item: WorkItem, delivery: Delivery): Promise<void> => {
    const receivedAt = Date.now();
    const callId = message.callId || delivery.callId || "";
    if (!isValidCallId(callId)) {
      this.drop(item, "invalid_call_id", { callId, inputId: message.inputId });
      return Promise.resolve();
    }
    // Tell JetStream the input is being worked on (also while it waits for the call's earlier inputs), so a long
    // turn does not make it hand the input to another replica; only a dead replica stops the heartbeat.
    const heartbeat = setInterval(() => item.working(), Math.max(250, Math.floor(this.deps.ackWaitMs / 3)));
    const held = this.held.get(callId) ?? new Map<number, Promise<void>>();
    this.held.set(callId, held);
    const input = { ...message, callId };
    const wait = this.waitFor(item);
    const task = (needsOrder(input) ? this.afterEarlierInputs(input, item, wait) : Promise.resolve())
      .then(() => {
        const previous = this.chains.get(callId);
        if (previous) wait.begins();
        const turn = (previous ?? Promise.resolve()).then(() => {
          wait.ends();
          return this.processInOrder(input, this.remembersAck(callId, item), receivedAt);
        });
        const tail = turn.catch(() => undefined);
        this.chains.set(callId, tail);
        void tail.then(() => {
          if (this.chains.get(callId) === tail) this.chains.delete(callId);
        });
        return turn;
      })
      .finally(() => {
        clearInterval(heartbeat);
        wait.ends();
      });
    const settled = task.catch(() => undefined);
    held.set(item.streamSeq, settled);
    void settled.then(() => {
      held.delete(item.streamSeq);
      if (held.size === 0 && this.held.get(callId) === held) this.held.delete(callId);
    });
    return task; // a rejection makes the bus nak the input for redelivery
  };

  /**
   * An input that waits for an earlier one of its call gives its consumer slot back (WorkItem.waiting), so one
   * call's queued keys, or a survivor's inputs waiting out a dead replica's, do not hold up other calls' turns.
   */
  private waitFor(item: WorkItem): InputWait {
    const gauge = this.deps.metrics.waitingInputs;
    let state: "no" | "waiting" | "over" = "no";
    return {
      begins: () => {
        if (state !== "no") return;
        state = "waiting";
        item.waiting();
        gauge.inc();
      },
      ends: () => {
        if (state === "waiting") gauge.dec();
        state = "over";
      },
    };
  }

  /** The item, remembering its ack for afterEarlierInputs (the server drops an acked message a little later). */
  private remembersAck(callId: string, item: WorkItem): WorkItem {
    return {
      ...item,
      ack: () => {
        item.ack();
        const seqs = this.acked.get(callId) ?? [];
        setNewest(this.acked, callId, [...seqs.slice(-(ACKED_KEPT_PER_CALL - 1)), item.streamSeq], MAX_REMEMBERED_CALLS);
      },
    };
  }

  /**
   * Waits while an earlier input of this call is still in the work queue, unacked. One this process holds is waited
   * for until it is done. Any other was delivered to a replica that died or froze: if that replica marked it in
   * progress, taking the lease redoes it first (redoAbandoned); if it died before, JetStream hands the input out
   * again only after the ack wait, after this one, and going on would answer the caller out of order ("1", a crash,
   * then "2345#" taken before the "1"). Gives up after the ack wait and a little (the earlier input may be stuck for
   * good), once per earlier input here. Costs one work-queue look-up per input when nothing is missing.
   */
  private async afterEarlierInputs(message: DialogInput, item: WorkItem, wait: InputWait): Promise<void> {
    const { callId, inputId } = message;
    const giveUpAt = Date.now() + this.deps.ackWaitMs + EARLIER_INPUT_GRACE_MS;
    let waitedFor: number | undefined;
    let markChecked: number | undefined;
    let pollMs = EARLIER_INPUT_FIRST_POLL_MS;
    const outcome = (result: "arrived" | "gave_up" | "error" | "in_progress") => {
      if (waitedFor !== undefined) this.deps.metrics.earlierInputWaits.inc({ outcome: result });
    };
    for (;;) {
      let earlier: { seq: number; inputId: string } | undefined;
      try {
        earlier = await this.earlierQueuedInput(callId, item);
      } catch (error) {
        // Not knowing is no reason to stall the caller: the lease still keeps turns one at a time.
        const admitted = this.retryLog.admit("earlier input look-up failed");
        if (admitted) this.deps.log.warn("looking for an earlier input of the call failed; going on", { callId, inputId, error: errorText(error), ...admitted });
        return outcome("error");
      }
      if (!earlier) {
        if (waitedFor !== undefined) this.deps.log.info("the earlier input was done; going on", { callId, inputId });
        return outcome("arrived");
      }
      const mine = this.held.get(callId)?.get(earlier.seq);
      if (mine) {
        wait.begins();
        await mine; // this process's own earlier input: on once it is done
        continue;
      }
      if (markChecked !== earlier.seq) {
        markChecked = earlier.seq;
        // Marked in progress by the replica that died on it: the lease redoes it before this input.
        const left = await this.deps.store.loadDialog<StoredDialogState>(callId).then(
          (stored) => loadedDialog(stored).inProgress?.inputId,
          () => undefined,
        );
        if (left === earlier.inputId) return outcome("in_progress");
      }
      if (waitedFor === undefined) {
        this.deps.log.info("an earlier input of this call is still queued (its replica died?); waiting for it", { callId, inputId, earlier: earlier.inputId });
      }
      waitedFor = earlier.seq;
      wait.begins();
      if (Date.now() >= giveUpAt) {
        this.deps.log.warn("an earlier input of this call did not come back; going on without it", { callId, inputId, earlier: earlier.inputId });
        setNewest(this.gaveUpOn, callId, earlier.seq, MAX_REMEMBERED_CALLS);
        return outcome("gave_up");
      }
      await new Promise((resolve) => setTimeout(resolve, pollMs));
      pollMs = Math.min(pollMs * 2, EARLIER_INPUT_MAX_POLL_MS);
    }
  }

  /**
   * The first input of the call queued before `item` that it must follow, if any: not one this process acked, a
   * timer not yet due, or the call's end.
   */
  private async earlierQueuedInput(callId: string, item: WorkItem): Promise<{ seq: number; inputId: string } | undefined> {
    let from = (this.gaveUpOn.get(callId) ?? 0) + 1;
    for (;;) {
      const found = await this.deps.bus.firstQueued(streams.dialog.name, item.subject, from);
      if (!found || found.seq >= item.streamSeq) return undefined;
      const input = this.acked.get(callId)?.includes(found.seq) ? undefined : decodedInput(found.data);
      if (input && needsOrder(input)) return { seq: found.seq, inputId: input.inputId };
      from = found.seq + 1;
    }
  }

  /**
   * Runs an input, trying it again in place while Redis or NATS fails under it (a failover, a restart): a nak would
   * hand it back only after the call's later inputs, already queued behind it here, had gone through, and the
   * caller's keys would be answered out of order (seen in a Sentinel failover: "123", crash, "45#" was taken as
   * "125#" then "3", "4"). A try again is a redelivery in all but the queue: the input's once-mark tells the turn it
   * ran before. The heartbeat keeps JetStream from handing it elsewhere meanwhile; past RETRY_IN_PLACE_MS, or for
   * any other error, the nak follows.
   */
  private processInOrder(message: DialogInput, item: WorkItem, receivedAt: number): Promise<void> {
    const fields = { callId: message.callId, inputId: message.inputId };
    return this.whileLinkLost(() => this.process(message, item, receivedAt), "input failed on a lost link; trying it again in place", fields);
  }

  /**
   * A write after the turn was said (its state, its timer) tried again while its link is lost, so that a failure
   * there does not make the whole input run again (the caller would hear the answer twice).
   */
  private afterSpeech<T>(write: () => Promise<T>, fields: Record<string, unknown>): Promise<T> {
    return this.whileLinkLost(write, "saving a turn failed on a lost link; trying again", fields);
  }

  /** Runs `act` again while it fails on a lost link, up to RETRY_IN_PLACE_MS from the first failure and not while draining. */
  private whileLinkLost<T>(act: () => Promise<T>, warning: string, fields: Record<string, unknown>): Promise<T> {
    return retryWhileLinkLost(act, {
      limitMs: RETRY_IN_PLACE_MS,
      giveUp: () => this.draining,
      onRetry: (error) => {
        this.deps.metrics.retriesInPlace.inc();
        const admitted = this.retryLog.admit(warning);
        if (admitted) this.deps.log.warn(warning, { ...fields, error: errorText(error), ...admitted });
      },
    });
  }

  private readonly retryLog = new LogThrottle();

  /** Set when the replica drains: an input failing on a lost link goes back to the queue at once, for other replicas. */
  private draining = false;

  stopRetrying(): void {
    this.draining = true;
  }

  /** Dropped inputs are counted in full and logged in samples (a flood of bad input must not flood the log). */
  private readonly droppedLog = new LogThrottle();

  private drop(item: WorkItem, reason: string, fields: Record<string, unknown>): void {
    this.deps.metrics.dropped.inc({ reason });
    // Routine: a redelivery, or input after the goodbye or the hang-up (the caller left mid-turn).
    const quiet = reason === "duplicate" || reason === "conversation_over" || reason === "ended_call";
    const admitted = this.droppedLog.admit(reason);
    if (admitted) this.deps.log[quiet ? "info" : "warn"]("dialog input dropped", { reason, ...fields, ...admitted });
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
      this.acked.delete(callId);
      this.gaveUpOn.delete(callId);
      return;
    }
    if (input.$case === "playback" && input.value.kind !== PlaybackEvent_Kind.KIND_INTERRUPTED) {
      item.ack(); // the dialog only acts on interruptions; progress events are for observers
      return;
    }
    const engineInput: EngineInput | Dropped | { interrupted: PlaybackEvent } =
      input.$case === "playback" ? { interrupted: input.value } : toEngineInput(message);
    if ("drop" in engineInput) return this.drop(item, engineInput.drop, fields);
    if ("kind" in engineInput && engineInput.kind === "wake") {
      // A timer input: it was queued at once and comes back (nak with delay) until it is due.
      const dueIn = message.atMs - Date.now();
      if (dueIn > 0) {
        item.nak(dueIn);
        return;
      }
    }
    // The call's state, the lease and the dialog state in one round trip; for a turn, with the input marked in
    // progress unless another one is (a replica died on it: it is done first, below).
    // A start is marked here only for a call without state: with one it is dropped, and a mark it left behind (its
    // clear lost) would make the next input redo it as unfinished, replaying the greeting.
    const mark =
      "interrupted" in engineInput
        ? undefined
        : { mark: inProgressMark(message), once: { scope: DIALOG_INPUT_SCOPE, id: inputId }, onlyWithoutState: input.$case === "callStarted" };
    let start = await this.deps.lease.acquire<StoredDialogState>(callId, mark);
    if (start.kind === "busy") {
      this.deps.metrics.leaseBusy.inc();
      if (item.deliveryCount < DIALOG_INPUT_MAX_DELIVER - 1) {
        this.deps.log.info("another replica is taking a turn of this call; input handed back", { ...fields, delivery: item.deliveryCount });
        item.nak(Math.min(50 * 4 ** Math.max(0, item.deliveryCount - 1), 2_000));
        return;
      }
      // Handed back once more it would be given up at its last delivery (a long turn: LLM rounds, a slow webhook).
      // It waits here instead for as long as the turn holding the call goes on: its replica renews the lease while
      // alive, and one that dies lets it lapse.
      this.deps.log.info("another replica's turn of this call runs long; the input waits for it here", { ...fields, delivery: item.deliveryCount });
      const waitUntil = Date.now() + MAX_LEASE_WAIT_IN_PLACE_MS;
      item.waiting();
      // Not while this replica drains, unless this is its last delivery: handed back, the input goes to a replica
      // that stays (and waits there), but handed back from its last delivery it would be given up.
      const lastDelivery = item.deliveryCount >= DIALOG_INPUT_MAX_DELIVER;
      while (start.kind === "busy" && Date.now() < waitUntil && (lastDelivery || !this.draining)) {
        item.working();
        await sleep(LEASE_POLL_MS);
        start = await this.deps.lease.acquire<StoredDialogState>(callId, mark);
      }
      if (start.kind === "busy") {
        item.nak();
        return;
      }
    }
    if (start.kind === "not_live") return this.drop(item, start.call === "ended" ? "ended_call" : "unknown_call", fields);
    const held = start.turn;
    try {
      const first = loadedDialog(held.dialog);
      const redone = await this.redoAbandoned(message, first, receivedAt, held);
      // The state read with the lease is the input's first state unless an abandoned input was redone before it.
      const loaded = redone ? undefined : first;
      if ("interrupted" in engineInput) await this.interruption(message, engineInput.interrupted, item, loaded, held);
      else await this.turn(message, engineInput, item, receivedAt, loaded, held, { releases: true, marked: held.marked });
    } finally {
      await held.release();
    }
  }

  /**
   * A replica that died mid-turn left its input in the state, unfinished: do it now, before `current` (its own
   * redelivery comes later and is dropped as a duplicate). Runs under the call's lease; `loaded` is the state read
   * with it. True when it redid an input (the state changed).
   */
  private async redoAbandoned(current: DialogInput, loaded: LoadedDialog, receivedAt: number, held: HeldTurn<StoredDialogState>): Promise<boolean> {
    const { callId } = current;
    const left = loaded.inProgress;
    // Without a state yet, the input left may be the call's start.
    if (!left || left.inputId === current.inputId || loaded.value?.processed.includes(left.inputId)) return false;
    let message: DialogInput;
    try {
      message = DialogInputCodec.decode(Buffer.from(left.input, "base64"));
    } catch (error) {
      this.deps.log.warn("unfinished input in the dialog state is unreadable; skipped", { callId, inputId: left.inputId, error: errorText(error) });
      return false;
    }
    const engineInput = toEngineInput(message);
    if ("drop" in engineInput) return false;
    this.deps.log.warn("another replica died during an earlier input of this call; doing that input first", {
      callId,
      inputId: left.inputId,
      before: current.inputId,
    });
    const detached: WorkItem = { subject: "", deliveryCount: 0, streamSeq: 0, ack: () => undefined, nak: () => undefined, working: () => undefined, waiting: () => undefined };
    await this.turn(message, engineInput, detached, receivedAt, loaded, held, { releases: false });
    return true;
  }

  /**
   * The caller talked over a bot turn: the history and the record keep only what they heard. `loaded`: the state
   * already read (first attempt); `lease`: released by the save that ends the input.
   */
  private async interruption(
    message: DialogInput,
    event: PlaybackEvent,
    item: WorkItem,
    loaded: LoadedDialog | undefined,
    lease: HeldTurn<StoredDialogState>,
  ): Promise<void> {
    const { store, metrics, log } = this.deps;
    const { callId, inputId } = message;
    const fields = { callId, inputId, turnId: event.turnId };
    let preloaded = loaded;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const current = preloaded ?? loadedDialog(await store.loadDialog<StoredDialogState>(callId));
      preloaded = undefined;
      const state = current.value;
      if (!state) return this.drop(item, "no_dialog_state", fields);
      if (state.processed.includes(inputId)) return this.drop(item, "duplicate", fields);
      const { engine, toolFiller: filler } = this.agentFor(state.agent);
      const spoken = state.spoken?.find((t) => t.turnId === event.turnId);
      if (attempt === 0) {
        await markInterrupted(store, callId, spoken?.text ?? "", event.heardText, new Date(event.atMs || Date.now()).toISOString()).catch((error) =>
          log.warn("interrupted turn not rewritten in the record", { ...fields, error: errorText(error) }),
        );
      }
      const next: DialogState = {
        ...state,
        engine: engine.interrupted ? engine.interrupted(state.engine ?? engine.initialState(), { turnId: event.turnId, heardText: event.heardText }) : state.engine,
        spoken: state.spoken?.map((t) => (t.turnId === event.turnId ? { ...t, text: event.heardText } : t)),
        // A tool filler ("one moment...") cut off is not worth finishing: only what came after it is said again.
        unheard: spoken ? addUnheard(state.unheard, event.turnId, spoken.text === filler ? "" : unheardPart(spoken.text, event.heardText)) : state.unheard,
        processed: [...state.processed, inputId].slice(-MAX_PROCESSED),
      };
      lease.pauseRenewal();
      const commit = await store.commitDialog(callId, next, current.version, { releaseLeaseOf: lease.owner, mark: movedMark(current) });
      if (!commit.saved && commit.leaseLost) return this.leaseLost(fields);
      if (commit.saved) {
        lease.releasedBySave();
        item.ack();
        if (event.reason) {
          // A label from the bus: known values only, so a stray one cannot grow the series.
          metrics.unplayedTurns.inc({ reason: UNPLAYED_REASONS.has(event.reason) ? event.reason : "other" });
          log.info("unplayed turn applied as unheard", { ...fields, reason: event.reason });
        } else {
          metrics.bargeIns.inc();
          log.info("barge-in applied", { ...fields, chunkSeq: event.chunkSeq, heard: event.heardText.length });
        }
        return;
      }
      lease.resumeRenewal();
      if (commit.call !== "live") return this.drop(item, "ended_call", fields); // hung up meanwhile: not a conflict
      metrics.conflicts.inc();
    }
    throw new Error(`dialog state of call ${callId} kept changing during input ${inputId}`);
  }

  /**
   * Plays an input as a turn. `loaded`: the state already read (used by the first attempt); `held`: the call's lease,
   * which every effect of the turn is fenced by (speech, record lines, tools, saves); with `releases`, this input ends
   * the hold and the save that finishes the turn releases it (same round trip); `marked`: taking the lease also marked
   * this input in progress (and whether that was the first time).
   */
  private async turn(
    message: DialogInput,
    engineInput: EngineInput,
    item: WorkItem,
    receivedAt: number,
    loaded: LoadedDialog | undefined,
    held: HeldTurn<StoredDialogState>,
    { releases, marked }: { releases: boolean; marked?: { firstTime: boolean } },
  ): Promise<void> {
    const lease = releases ? held : undefined;
    const { store, metrics, log } = this.deps;
    const { callId, inputId } = message;
    const fields = { callId, inputId };
    const input = message.input!;
    /** Whether an earlier delivery started this input (known once its in-progress mark is stored). */
    let redone: boolean | undefined = marked ? !marked.firstTime : undefined;
    let redoLogged = false;
    let abort: AbortController | undefined;
    /** A voicemail input's CLEAR went out (once per delivery, whichever attempt gets there first). */
    let superseded = false;
    /** The highest turn number any attempt reached (a redone attempt sends nothing, so may count fewer). */
    let turnsReached = 0;
    /**
     * An attempt of this delivery got as far as speaking (play): a later one replays without saying it again. Not
     * `attempt > 0`: an attempt that stopped before (its mark's save refused, e.g. sent again by ioredis after a lost
     * reply) said nothing, and its redo must speak, or the caller hears silence for a turn taken as answered.
     */
    let spokeBefore = false;
    let preloaded = loaded;
    try {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const current = preloaded ?? loadedDialog(await store.loadDialog<StoredDialogState>(callId));
        preloaded = undefined;
        const ownMark = current.inProgress?.inputId === inputId;
        /** Dropped after all: its mark, if stored, goes (else the next input would take it for one left unfinished). */
        const drop = async (reason: string) => {
          if (ownMark && current.mark) await store.clearDialogMark(callId, current.mark);
          this.drop(item, reason, fields);
        };
        let state = current.value;
        if (state?.processed.includes(inputId)) return await drop("duplicate");
        // A live call without dialog state lost it (Redis lost its data): the caller is told and the conversation
        // starts over, since what the input means depends on the state that is gone.
        // `resumed`: this input's own mark was stored before this delivery took it up (an earlier attempt, or a
        // replica that died on it); a mark set by this delivery's lease does not count on the first attempt.
        const resumed = ownMark && !(attempt === 0 && marked) ? current.inProgress : undefined;
        let restart = resumed?.restart === true;
        if (input.$case === "callStarted") {
          if (state && !resumed) return await drop("already_started");
          if (!state) {
            state = this.newState(input.value, message.atMs || receivedAt);
            // Ingress re-announces a call whose record vanished with another input id than the first start's.
            restart = inputId !== `${callId}:start`;
            if (restart) {
              metrics.restarts.inc({ reason: "restart" });
              state.turns = restartTurnBase(state.startedAtMs, receivedAt);
            }
          }
        } else if (!state && engineInput.kind === "voicemail") {
          // The machine's verdict was queued before the call's start (the stream had just begun): the message is
          // the conversation, without a greeting (the start that follows is dropped as already started).
          state = await this.recoverState(callId, receivedAt, "voicemail");
        } else if (!state) {
          state = await this.recoverState(callId, receivedAt, "lost");
          restart = true;
          metrics.restarts.inc({ reason: "recovered" });
        }
        let turnInput: EngineInput = restart ? { kind: "start" } : engineInput;
        if (state.done) return await drop("conversation_over");
        if (engineInput.kind === "noInput" && input.$case === "noInput" && input.value.turnId && staleNoInput(state, input.value.turnId)) {
          return await drop("stale_no_input");
        }
        if (turnInput.kind === "resume" && input.$case === "falseInterruption") {
          // Only the turns that sound cut, still the latest ones: nothing was said since. After them, what their
          // input's handling went on to say while the bot was cut off.
          const unheard = state.unheard;
          if (!unheard || unheard.turnId !== input.value.turnId || unheard.lastTurnId !== `t${state.turns}`) return await drop("stale_false_interruption");
          // Nothing left to say (a cut filler) still lets the engine go on (an LLM answers a tool result it got meanwhile).
          turnInput = { kind: "resume", text: [unheard.text, state.unsaid].filter(Boolean).join(" ") };
        }

        // Marked before anything is said, for the replica that must finish this input if this one dies; with it the
        // input's once-mark, so an input whose mark exists was started before (by a replica that died on it). Usually
        // done with the lease; here when another input's mark was in the way, or on a later attempt.
        let version = current.version;
        if (!ownMark) {
          const commit = await store.commitDialog(callId, state, version, {
            once: { scope: DIALOG_INPUT_SCOPE, id: inputId },
            mark: inProgressMark(message, restart),
            fencedBy: held.owner,
          });
          if (!commit.saved && commit.leaseLost) return this.leaseLost(fields);
          if (!commit.saved) {
            if (commit.call !== "live") return this.drop(item, "ended_call", fields);
            metrics.conflicts.inc();
            continue;
          }
          redone ??= commit.firstTime === false;
          version = commit.version;
          held.saved(version);
        } else {
          // Its own mark is stored: an earlier attempt of this delivery set `redone`; otherwise a replica that did
          // not finish it did.
          redone ??= true;
        }
        if (redone && !redoLogged) {
          redoLogged = true;
          log.warn("input was started before by a replica that did not finish it; redoing it", { ...fields, delivery: item.deliveryCount });
        }
        const agent = this.agentFor(state.agent);
        const turnsBefore = redone ? state.turns + REDO_TURN_GAP : state.turns;
        // One per delivery: a barge-in during the first attempt also stops a redone one.
        // A voicemail message supersedes the turn before it: ingress's cancels of that turn are not about this input.
        abort ??= this.deps.inFlight.begin(callId, turnInput.kind === "voicemail" ? state.turns + 1 : state.turns);
        const stop = abort;
        held.lost.addEventListener("abort", () => stop.abort(), { once: true });
        if (turnInput.kind === "voicemail" && !superseded) {
          superseded = true;
          this.supersedeEarlierTurns(callId, turnsBefore + 1, fields);
        }
        const replay = spokeBefore;
        spokeBefore = true;
        const played = await this.play(agent, state, turnsBefore, turnInput, message, receivedAt, replay, redone === true || replay, abort, held, restart);
        if (held.lost.aborted) return this.leaseLost(fields);
        turnsReached = Math.max(turnsReached, played.turns);
        const next: DialogState = {
          ...state,
          turns: turnsReached,
          done: played.result.done === true,
          engine: played.result.state,
          processed: [...state.processed, inputId].slice(-MAX_PROCESSED),
          spoken: [...(state.spoken ?? []), ...played.spoken].slice(-MAX_SPOKEN),
          unheard: undefined, // the conversation moved on
          unsaid: played.cancelled && played.unsaid ? played.unsaid : undefined,
        };
        const wake = played.result.wake;
        if (wake && (await held.confirm())) await this.afterSpeech(() => this.publishWake(callId, inputId, wake), fields);
        // The hints go with the state (only for a live call, only when saved), and the lease with them.
        lease?.pauseRenewal();
        const commit = await this.afterSpeech(
          () => store.commitDialog(callId, next, version, { hints: played.hints, releaseLeaseOf: lease?.owner, fencedBy: held.owner, mark: null }),
          fields,
        );
        if (!commit.saved && commit.leaseLost) return this.leaseLost(fields);
        if (commit.saved) {
          lease?.releasedBySave();
          held.saved(commit.version); // the hold may go on (an abandoned input was redone first)
          item.ack();
          const outcome = played.result.outcome;
          metrics.turns.inc({ outcome });
          if (outcome === "reprompt" || outcome === "max_reprompts") metrics.reprompts.inc({ agent: agent.name });
          const confirmation = CONFIRMATION_OUTCOMES[outcome];
          if (confirmation) metrics.confirmations.inc({ outcome: confirmation });
          if (played.cancelled) metrics.cancelledTurns.inc();
          metrics.turnSeconds.observe((Date.now() - receivedAt) / 1000);
          log.info("turn done", { ...fields, kind: turnInput.kind, outcome, turns: next.turns, done: next.done, ms: Date.now() - receivedAt, ...(restart ? { restart } : {}) });
          return;
        }
        lease?.resumeRenewal();
        if (commit.call !== "live") return this.drop(item, "ended_call", fields); // hung up meanwhile: not a conflict
        // Someone saved in between (a lease that expired mid-turn): redo on the new state without repeating speech.
        metrics.conflicts.inc();
        log.warn("dialog state changed during the turn; redoing it", { ...fields, attempt });
      }
    } finally {
      if (abort) this.deps.inFlight.end(callId, abort);
    }
    throw new Error(`dialog state of call ${callId} kept changing during input ${inputId}`);
  }

  /**
   * Cuts off what the bot is saying, and what it was about to say, for the turn numbered `turn`: a voicemail
   * message goes on the machine's recording alone, not after the rest of an answer to the machine's greeting that
   * was already on its way to tts when the verdict came. Sent before the turn's speech is queued, so ingress has it
   * first (the speech goes through tts).
   */
  private supersedeEarlierTurns(callId: string, turn: number, fields: Record<string, unknown>): void {
    const control = CallControl.create({ callId, action: CallControl_Action.ACTION_CLEAR, reason: "voicemail", beforeTurnId: `t${turn}` });
    try {
      this.deps.bus.publish(subjects.control(callId), CallControl, control, callId);
      this.deps.log.info("earlier turns superseded by the voicemail message", { ...fields, beforeTurnId: control.beforeTurnId });
    } catch (error) {
      // The message is still left; the machine may record the end of the earlier answer before it.
      this.deps.log.warn("could not cut off the turns before the voicemail message", { ...fields, error: errorText(error) });
    }
  }

  /** Queues the timer input an engine asked for; its id comes from the input that set it, so a redo queues it once. */
  private async publishWake(callId: string, inputId: string, wake: { afterMs: number; token: string }): Promise<void> {
    const id = `${inputId}:wake`;
    const message = DialogInputCodec.create({ callId, inputId: id, atMs: Date.now() + wake.afterMs });
    message.input = { $case: "noInput", value: NoInput.create({ turnId: `${WAKE_PREFIX}${wake.token}` }) };
    await this.deps.bus.publishDurable(subjects.dialogInput(callId), DialogInputCodec, message, id, callId);
  }

  private async play(
    agent: Agent,
    state: DialogState,
    turnsBefore: number,
    engineInput: EngineInput,
    message: DialogInput,
    receivedAt: number,
    replay: boolean,
    /** An attempt of this input ran before (here or on a replica that died): its tool calls may repeat. */
    repeat: boolean,
    abort: AbortController,
    held: HeldTurn<StoredDialogState>,
    restart = false,
  ): Promise<{
    result: TurnResult<unknown>;
    hints?: RecognitionHints;
    turns: number;
    spoken: Array<{ turnId: string; text: string }>;
    cancelled: boolean;
    /** What the engine said after a barge-in cancelled the speech (not sent). */
    unsaid: string;
  }> {
    const { store, log, tools, metrics } = this.deps;
    const callId = message.callId;
    let records = Promise.resolve();
    const record = (entry: TranscriptEntry) => {
      records = records
        .then(async () => {
          if (await held.confirm()) await store.appendTranscript(callId, entry);
        })
        .catch((error) => log.warn("transcript entry not recorded", { callId, error: errorText(error) }));
    };
    let toolMs = 0;
    let toolIndex = 0;
    let heardIndex = 0;
    let fillerSaid = false;
    let hints: RecognitionHints | undefined;
    const spoken: Array<{ turnId: string; text: string }> = [];
    const speakQueued: Array<Promise<void>> = [];
    const speech = new SpeechOutput({
      callId,
      voice: agent.voice,
      format: AudioFormat.create(state.format),
      turnsSoFar: turnsBefore,
      timing: timingFor(message, receivedAt),
      toolMs: () => toolMs,
      live: !replay,
      // Durable (tts takes requests from a JetStream work queue): a chunk survives the death of the tts replica
      // speaking it. The input is acked only once all its speech is queued.
      publish: (request) => void speakQueued.push(this.queueSpeech(request, held)),
      onTurnDone: (turnId, text) => {
        spoken.push({ turnId, text });
        record({ role: "bot", text, at: new Date().toISOString() });
      },
    });
    this.deps.inFlight.attach(callId, speech);
    const io: TurnIO = {
      heard: (entry) => {
        if (replay) return;
        const line: TranscriptEntry = { role: "caller", at: new Date(inputTime(message, receivedAt)).toISOString(), ...entry };
        // Once per input and position: a replica that died on this input may have recorded the line already.
        const key = `${message.inputId}#${heardIndex++}`;
        records = records
          .then(async () => {
            if (await held.confirm()) await store.appendTranscriptOnce(callId, "heard", key, line);
          })
          .catch((error) => log.warn("transcript entry not recorded", { callId, error: errorText(error) }));
      },
      say: (text, options) => speech.say(text, options?.cacheable === true, options?.now === true),
      callTool: async (name, args, options) => {
        speech.close(); // what was said so far plays before the tool acts
        const saidBefore = speech.turnIds.length > 0;
        // A slow tool gets a short filler so the caller does not sit in silence (once per input, and only when
        // nothing was said for this input yet: a "let me check" before the tool does the same job).
        const filler =
          agent.toolFiller && !fillerSaid && !saidBefore && !replay && !NO_FILLER_TOOLS.has(name)
            ? setTimeout(() => {
                fillerSaid = true;
                if (speech.sayTurn(agent.toolFiller!, true)) metrics.fillers.inc();
              }, this.deps.toolFillerMs)
            : undefined;
        let outcome: Awaited<ReturnType<typeof tools.call>>;
        try {
          if (!(await held.confirm())) return { ok: false, errorCode: "cancelled", errorMessage: "another replica has the turn", ms: 0 };
          outcome = await tools.call(
            {
              callId,
              // Deterministic per input, position, tool and arguments: a redone turn that makes the same call gets
              // the first execution's result instead of acting twice.
              toolCallId: toolCallId(message.inputId, toolIndex++, name, args),
              name,
              args,
              timeoutMs: options?.timeoutMs ?? 0,
              turnId: speech.lastTurnId,
              agent: agent.name,
              repeat,
            },
            // A hang-up stops the wait (the turn can say nothing more); a barge-in does not: the tool's result
            // still decides the conversation's next state.
            this.deps.inFlight.endedSignal(callId),
          );
        } finally {
          clearTimeout(filler);
        }
        toolMs += outcome.ms;
        if (!outcome.ok) log.warn("tool call failed", { callId, tool: name, errorCode: outcome.errorCode, error: outcome.errorMessage });
        return outcome;
      },
      setHints: (next) => {
        hints = next;
      },
      llmFirstToken: (ms) => speech.setLlmFirstToken(ms),
      signal: abort.signal,
    };

    let result: TurnResult<unknown>;
    const engineState = state.engine ?? agent.engine.initialState();
    speech.setNoInputMs(agent.engine.noInputMs?.(engineState));
    if (restart) {
      log.warn("dialog state of a live call was lost; telling the caller and starting over", { callId, inputId: message.inputId });
      speech.say(RESTART_APOLOGY, true);
    }
    try {
      result = await agent.engine.turn(engineInput, engineState, io);
    } catch (error) {
      // An engine bug must not leave the caller in silence or loop the input through redeliveries.
      log.error("dialog engine failed; apologizing and keeping the previous state", { callId, agent: agent.name, error: errorText(error) });
      speech.say(APOLOGY, true);
      result = { state: engineState, outcome: "engine_error" };
    }
    speech.setNoInputMs(agent.engine.noInputMs?.(result.state));
    speech.close();
    await records;
    await Promise.all(speakQueued);
    return { result, hints, turns: speech.turnCount, spoken, cancelled: speech.isCancelled, unsaid: speech.unsaid.join(" ") };
  }

  /**
   * Puts a SpeakRequest on the tts work queue (retried by the bus; msgId = its chunk, so once), unless the turn's
   * lease is no longer this replica's. Never throws.
   */
  private async queueSpeech(request: SpeakRequest, held: HeldTurn<StoredDialogState>): Promise<void> {
    const { callId, turnId, chunkSeq } = request;
    try {
      if (!(await held.confirm())) return;
      await this.deps.bus.publishDurable(subjects.ttsSpeak, SpeakRequest, request, `${callId}:speak:${turnId}.${chunkSeq}`, callId);
    } catch (error) {
      this.deps.metrics.speakPublishErrors.inc();
      this.deps.log.error("speech could not be queued for tts; the caller misses it", { callId, turnId, chunkSeq, error: errorText(error) });
    }
  }

  /**
   * This replica paused past its lease (frozen, starved) and another one took the turn: it stops without saving
   * or acking (the input's delivery is the other replica's now).
   */
  private leaseLost(fields: Record<string, unknown>): void {
    this.deps.metrics.leaseLost.inc();
    this.deps.log.warn("dialog lease lost: another replica took this input over; leaving it to that replica", fields);
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
      // The record names the agent the caller gets, not the one asked for (the log line above keeps that).
      const callId = started.callId;
      this.deps.store.setAgent(callId, agent).catch((error: unknown) => this.deps.log.warn("could not name the default agent in the call record", { callId, error: errorText(error) }));
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

  /** A live call without dialog state (lost, or its start input was): a new state with the agent its record names. */
  private async recoverState(callId: string, now: number, why: "lost" | "voicemail"): Promise<DialogState> {
    const record = await this.deps.store.getRecord(callId);
    const agent = record?.agent && this.deps.agents.has(record.agent) ? record.agent : this.deps.defaultAgent;
    if (why === "lost") this.deps.log.warn("no dialog state for a live call; starting the conversation over", { callId, agent });
    else this.deps.log.info("a machine's verdict came before the call's start; leaving the message without a greeting", { callId, agent });
    const startedAtMs = Date.parse(record?.startedAt ?? "") || now;
    return {
      agent,
      turns: restartTurnBase(startedAtMs, now),
      format: DEFAULT_FORMAT,
      startedAtMs,
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
      if (input.value.turnId.startsWith(WAKE_PREFIX)) return { kind: "wake", token: input.value.turnId.slice(WAKE_PREFIX.length) };
      return { kind: "noInput" };
    case "falseInterruption":
      return { kind: "resume", text: "" }; // the text is the dialog state's (see the turn)
    case "answeredBy":
      // Ingress queues only a verdict the agent acts on: a machine whose greeting is over, on a call placed to leave a message.
      if (input.value.onMachine !== "voicemail" || !input.value.answeredBy.startsWith("machine_end_")) return { drop: "invalid_input" };
      return { kind: "voicemail" };
    default:
      return { drop: "invalid_input" };
  }
}

/**
 * The turn number a conversation that lost its state continues from. Turn ids only grow (ingress drops audio of a
 * turn id it has already played), and the lost count is unknown: this is above any count the call can have reached
 * (far fewer than 100 turns per second of call, redo gaps included).
 */
export function restartTurnBase(startedAtMs: number, now: number): number {
  return 1_000 + 100 * Math.ceil(Math.max(0, now - startedAtMs) / 1000);
}

/** The unheard text after a barge-in: a turn cut after the one before it (queued behind it) adds to it. */
function addUnheard(current: DialogState["unheard"], turnId: string, text: string): NonNullable<DialogState["unheard"]> {
  if (current && turnNumber(current.lastTurnId) < turnNumber(turnId)) {
    return { turnId: current.turnId, lastTurnId: turnId, text: [current.text, text].filter(Boolean).join(" ") };
  }
  return { turnId, lastTurnId: turnId, text };
}

/**
 * A no-input wait names the last bot turn that began to play. It is stale when the caller has heard a later turn
 * since (the conversation moved on); turns cut before a word of them was heard (queued behind a cut one) do not
 * count: the caller is still answering the one before.
 */
function staleNoInput(state: DialogState, turnId: string): boolean {
  const named = turnNumber(turnId);
  if (named > state.turns) return true;
  const spoken = state.spoken ?? [];
  let heard = state.turns;
  if (spoken.at(-1)?.turnId === `t${state.turns}`) {
    const last = spoken.findLast((t) => t.text);
    heard = last ? turnNumber(last.turnId) : 0;
  }
  return named < heard;
}

/** A turn id's number, -1 for one that is not the dialog's (which orders before every turn). */
function turnNumber(turnId: string): number {
  return dialogTurnNumber(turnId) ?? -1;
}

/** The sentences of a cut turn the caller did not hear: what follows the heard ones (all of it if they differ). */
export function unheardPart(spokenText: string, heardText: string): string {
  const heard = heardText.trim();
  if (!heard) return spokenText.trim();
  return spokenText.startsWith(heard) ? spokenText.slice(heard.length).trim() : spokenText.trim();
}

/** NoInput.turnId of the timer inputs an engine asks for (TurnResult.wake). */
const WAKE_PREFIX = "wake:";

/**
 * Whether an input takes its turn in the call's order: not the call's end, a playback event other than an
 * interruption (acked at once), or a timer input not yet due (it waits in the queue on purpose).
 */
function needsOrder(message: DialogInput): boolean {
  const input = message.input;
  if (!input || input.$case === "callEnded") return false;
  if (input.$case === "playback") return input.value.kind === PlaybackEvent_Kind.KIND_INTERRUPTED;
  if (input.$case === "noInput" && input.value.turnId.startsWith(WAKE_PREFIX)) return message.atMs <= Date.now();
  return true;
}

function decodedInput(data: Uint8Array): DialogInput | undefined {
  try {
    return DialogInputCodec.decode(data);
  } catch {
    return undefined; // unreadable: its own delivery drops it at once
  }
}

/** The idempotency key of a tool call (at most 200 characters, which the tools service accepts). */
export function toolCallId(inputId: string, index: number, name: string, args: Record<string, unknown>): string {
  const base = inputId.length > 120 ? createHash("sha256").update(inputId).digest("hex").slice(0, 32) : inputId;
  const argsHash = createHash("sha256").update(stableJson(args)).digest("hex").slice(0, 12);
  return `${base}/${index}:${name.slice(0, 40)}:${argsHash}`;
}

/** JSON with object keys sorted, so the same arguments always hash the same. */
function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(",")}]`;
  if (value && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
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
