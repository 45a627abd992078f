import type { EnvReader } from "@voicebot/service-kit";
import { DEFAULT_NO_SILENCE_FILE, DEFAULT_NO_SILENCE_TEXT, loadNoSilenceClip } from "./no-silence.js";
import type { SilenceBatchOptions } from "./silence-batch.js";

export const PROBED_SERVICES = ["asr", "dialog", "tools", "tts"] as const;
export type ProbedService = (typeof PROBED_SERVICES)[number];

export interface TwilioRestConfig {
  accountSid: string;
  authToken: string;
  baseUrl: string;
  timeoutMs: number;
}

export interface IngressConfig {
  /** Agent for calls whose stream carries no `agent` custom parameter. */
  defaultAgent: string;
  /** How much audio may sit in Twilio's buffer ahead of real time. */
  playoutLeadMs: number;
  /** Period of the one timer that paces every call's playout. */
  playoutTickMs: number;
  /** Calls are spread over this many groups, pumped in turn within each tick (see scheduler.ts). */
  playoutPhases: number;
  /** A turn waiting this long for a missing chunk or part, with a later turn queued, is given up. */
  playoutStallMs: number;
  /** The same with no later turn queued (a pause inside a turn is normal then). */
  playoutAloneStallMs: number;
  /** HANGUP/TRANSFER act after this long even if the turn they wait for never finished playing. */
  controlTimeoutMs: number;
  /** Services that must answer a readiness ping for this ingress to accept calls. */
  requireServices: ProbedService[];
  readinessProbeIntervalMs: number;
  /** WebSocket message size limit (ws `maxPayload`). */
  maxMessageBytes: number;
  /** Largest decoded `media` payload accepted (Twilio sends 160 bytes). */
  maxMediaBytes: number;
  /** Sustained inbound messages per second per connection; above it messages are dropped. */
  maxMessagesPerSecond: number;
  messageBurst: number;
  /**
   * Sustained keypad presses per second per stream (a burst of twice that at once); faster keys are dropped. A phone
   * keypad cannot go faster than ~12 a second (ITU-T Q.24: 40 ms of tone and 40 ms of pause per digit), and each
   * key is a dialog input: a client sending hundreds would fill the dialog's work queue for every call.
   */
  maxKeysPerSecond: number;
  /** A stream that sends no `start` within this time is closed. */
  startTimeoutMs: number;
  /** New streams are refused above this many live ones (0 = no limit). */
  maxCalls: number;
  /** Live streams allowed per client address; more are refused with 429 (0 = no limit). */
  maxCallsPerClient: number;
  /** Take the client address from X-Forwarded-For (only behind a proxy that sets it). */
  trustProxy: boolean;
  /** Proxies in front of the ingress that append to X-Forwarded-For: the client is that many entries from the right. */
  proxyHops: number;
  /** Stop bot audio when the caller starts speaking (per call: customParameters.bargeIn). */
  bargeIn: boolean;
  /** Barge in only once the caller has spoken this long since SpeechActivity STARTED arrived (0 = at once). */
  bargeInMinSpeechMs: number;
  /** How long an inbound frame that arrived out of order may be held to wait for the frames before it. */
  inboundJitterMs: number;
  /** The caller's quiet frames, past a hangover, published several to a CallerAudio (see silence-batch.ts). */
  silenceBatch: SilenceBatchOptions;
  /**
   * How much of each call's recent caller audio is kept for an asr replica that takes the call over (recent-audio.ts);
   * 0 = none. 8 KB per second per call.
   */
  callerAudioReplayMs: number;
  /** Set when both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are: transfers and DTMF go through the REST API. */
  twilioRest: TwilioRestConfig | undefined;
  /** Check X-Twilio-Signature on the upgrade (needs TWILIO_AUTH_TOKEN). */
  validateSignature: boolean;
  /** The public wss:// URL Twilio connects to, as signed; default: built from the Host header. */
  publicStreamUrl: string | undefined;
  authToken: string | undefined;
  /** Bearer token of the ingress API (/v1/...); unset: call records are open and calls cannot be placed. */
  apiToken: string | undefined;
  /** A placed call's statusCallback may be on a private, loopback or link-local address (a CRM inside the cluster). */
  statusCallbackPrivate: boolean;
  /** No new bot turn this long after the caller's input ended: play the fallback line (0 = off). */
  noSilenceDeadlineMs: number;
  /** Neither the bot nor the caller heard this long after the bot's turn: the dialog prompts again (0 = off). */
  noInputMs: number;
  /** The fallback line: μ-law 8 kHz, whole frames (undefined when the deadline is off). */
  noSilenceClip: Uint8Array | undefined;
  /** What the fallback line says (for the call record). */
  noSilenceText: string;
  /**
   * How often the live calls' stream leases are renewed (and their records checked: one that vanished means Redis
   * lost its data), and lost streams looked for.
   */
  recordCheckMs: number;
  /**
   * A stream lease not renewed for this long is lost (its ingress died, or its stream closed and no new stream took
   * the call up): the call is ended. Also how long a stream that closed without `stop` has to be resumed.
   */
  streamLeaseMs: number;
  /** A draining ingress waits at most this long for a quiet moment to hand a resumable call over. */
  handoverWaitMs: number;
  /** A stream whose peer answered no ping for this long is dropped (a half-open link, or a peer that stopped reading). */
  deadSocketMs: number;
  /** A started stream with no `media` this long is ended as `media_timeout` (0 = never). */
  mediaTimeoutMs: number;
}

const AGENT = /^[A-Za-z0-9_.-]{1,64}$/;

export function readIngressConfig(env: EnvReader): IngressConfig {
  const defaultAgent = env.string("DEFAULT_AGENT", "order-line");
  const accountSid = env.optional("TWILIO_ACCOUNT_SID");
  const authToken = env.optional("TWILIO_AUTH_TOKEN");
  const baseUrl = env.url("TWILIO_API_BASE_URL", "https://api.twilio.com", ["https", "http"]).replace(/\/+$/, "");
  const timeoutMs = env.int("TWILIO_API_TIMEOUT_MS", 5_000, { min: 100, max: 60_000 });
  const validateSignature = env.bool("TWILIO_VALIDATE_SIGNATURE", false);
  const publicStreamUrl = env.optional("TWILIO_STREAM_URL");
  if (publicStreamUrl) env.url("TWILIO_STREAM_URL", publicStreamUrl, ["wss", "ws"]);

  const apiToken = env.optional("INGRESS_API_TOKEN");
  if (apiToken !== undefined && !/^[\x21-\x7e]{16,512}$/.test(apiToken)) {
    env.problem("INGRESS_API_TOKEN must be 16 to 512 printable characters without spaces (e.g. openssl rand -hex 32)");
  }

  const noSilenceDeadlineMs = env.int("NO_SILENCE_DEADLINE_MS", 4_000, { min: 0, max: 60_000 });
  const noSilenceFile = env.string("NO_SILENCE_AUDIO_FILE", DEFAULT_NO_SILENCE_FILE);
  let noSilenceClip: Uint8Array | undefined;
  if (noSilenceDeadlineMs > 0) {
    try {
      noSilenceClip = loadNoSilenceClip(noSilenceFile);
    } catch (error) {
      env.problem(`NO_SILENCE_AUDIO_FILE=${JSON.stringify(noSilenceFile)}: ${(error as Error).message}`);
    }
  }

  const config: IngressConfig = {
    defaultAgent,
    playoutLeadMs: env.int("PLAYOUT_LEAD_MS", 100, { min: 20, max: 2_000 }),
    playoutTickMs: env.int("PLAYOUT_TICK_MS", 20, { min: 5, max: 100 }),
    playoutPhases: env.int("PLAYOUT_PHASES", 4, { min: 1, max: 5 }),
    playoutStallMs: env.int("PLAYOUT_STALL_MS", 5_000, { min: 100 }),
    playoutAloneStallMs: env.int("PLAYOUT_ALONE_STALL_MS", 30_000, { min: 100 }),
    controlTimeoutMs: env.int("CONTROL_TIMEOUT_MS", 15_000, { min: 0 }),
    requireServices: readRequiredServices(env),
    readinessProbeIntervalMs: env.int("INGRESS_READINESS_PROBE_MS", 1_000, { min: 100, max: 60_000 }),
    maxMessageBytes: env.int("INGRESS_MAX_MESSAGE_BYTES", 64 * 1024, { min: 1_024, max: 16 * 1024 * 1024 }),
    maxMediaBytes: env.int("INGRESS_MAX_MEDIA_BYTES", 8_000, { min: 160 }),
    maxMessagesPerSecond: env.int("INGRESS_MAX_MSGS_PER_SEC", 200, { min: 1 }),
    messageBurst: env.int("INGRESS_MSG_BURST", 400, { min: 1 }),
    maxKeysPerSecond: env.int("INGRESS_MAX_KEYS_PER_SEC", 12, { min: 1, max: 1_000 }),
    startTimeoutMs: env.int("INGRESS_START_TIMEOUT_MS", 10_000, { min: 100 }),
    maxCalls: env.int("INGRESS_MAX_CALLS", 0, { min: 0 }),
    maxCallsPerClient: env.int("INGRESS_MAX_CALLS_PER_CLIENT", 0, { min: 0 }),
    trustProxy: env.bool("INGRESS_TRUST_PROXY", false),
    proxyHops: env.int("INGRESS_PROXY_HOPS", 1, { min: 1, max: 10 }),
    bargeIn: env.bool("BARGE_IN", true),
    bargeInMinSpeechMs: env.int("BARGE_IN_MIN_SPEECH_MS", 0, { min: 0, max: 5_000 }),
    inboundJitterMs: env.int("INBOUND_JITTER_MS", 60, { min: 0, max: 1_000 }),
    // An asr takeover comes within the lease (ASR_LEASE_MS, 1.5 s) and a scan (250 ms) of the crash; the rest covers
    // what the caller had said of the utterance open then.
    callerAudioReplayMs: env.int("INGRESS_CALLER_AUDIO_REPLAY_MS", 5_000, { min: 0, max: 30_000 }),
    silenceBatch: {
      maxFrames: env.int("INGRESS_SILENCE_BATCH_FRAMES", 10, { min: 0, max: 50 }),
      // Above the asr's default endpoint silence (ASR_MIN_SILENCE_MS, 600) with margin.
      hangoverMs: env.int("INGRESS_SILENCE_HANGOVER_MS", 1_000, { min: 100, max: 60_000 }),
      // A frame's RMS; 2.73 dB or more below the asr's Silero gate (ASR_VAD_GATE_DBFS, -55) and below its energy VAD
      // floor (ASR_VAD_MIN_SPEECH_DBFS, -50): see silence-batch.ts.
      levelDbfs: env.number("INGRESS_SILENCE_LEVEL_DBFS", -58, { min: -90, max: -20 }),
    },
    twilioRest: accountSid && authToken ? { accountSid, authToken, baseUrl, timeoutMs } : undefined,
    validateSignature,
    publicStreamUrl,
    authToken,
    apiToken,
    statusCallbackPrivate: env.bool("STATUS_CALLBACK_ALLOW_PRIVATE", false),
    noSilenceDeadlineMs,
    noInputMs: env.int("NO_INPUT_MS", 8_000, { min: 0, max: 120_000 }),
    noSilenceClip,
    noSilenceText: env.string("NO_SILENCE_TEXT", noSilenceFile === DEFAULT_NO_SILENCE_FILE ? DEFAULT_NO_SILENCE_TEXT : "(fallback line)"),
    recordCheckMs: env.int("INGRESS_RECORD_CHECK_MS", 2_000, { min: 100, max: 60_000 }),
    streamLeaseMs: env.int("INGRESS_STREAM_LEASE_MS", 10_000, { min: 1_000, max: 600_000 }),
    handoverWaitMs: env.int("INGRESS_HANDOVER_WAIT_MS", 5_000, { min: 0, max: 60_000 }),
    deadSocketMs: env.int("INGRESS_DEAD_SOCKET_MS", 60_000, { min: 1_000, max: 3_600_000 }),
    mediaTimeoutMs: env.int("INGRESS_MEDIA_TIMEOUT_MS", 30_000, { min: 0, max: 3_600_000 }),
  };
  if (!AGENT.test(defaultAgent)) env.problem(`DEFAULT_AGENT=${JSON.stringify(defaultAgent)} must match ${AGENT}`);
  if (validateSignature && !authToken) env.problem("TWILIO_VALIDATE_SIGNATURE=true needs TWILIO_AUTH_TOKEN");
  if (config.streamLeaseMs < 2 * config.recordCheckMs) {
    env.problem(`INGRESS_STREAM_LEASE_MS must be at least twice INGRESS_RECORD_CHECK_MS (its renewal): now ${config.streamLeaseMs} / ${config.recordCheckMs}`);
  }
  // Each group's tick comes every PLAYOUT_TICK_MS / PLAYOUT_PHASES: Node's timers have 1 ms resolution.
  if (config.playoutTickMs / config.playoutPhases < 4) {
    env.problem(`PLAYOUT_TICK_MS / PLAYOUT_PHASES must be at least 4 ms (now ${config.playoutTickMs} / ${config.playoutPhases})`);
  }
  return config;
}

/** customParameters.bargeIn: "true"/"false" (also 1/0, yes/no, on/off); undefined when absent or unreadable. */
export function parseBool(value: string | undefined): boolean | undefined {
  const v = value?.trim().toLowerCase();
  if (v === undefined || v === "") return undefined;
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  return undefined;
}

export function isValidAgent(agent: string): boolean {
  return AGENT.test(agent);
}

/** INGRESS_REQUIRE_SERVICES: comma list, default all four; "" or "none" requires none. */
function readRequiredServices(env: EnvReader): ProbedService[] {
  const raw = env.raw("INGRESS_REQUIRE_SERVICES");
  if (raw !== undefined && (raw.trim() === "" || raw.trim().toLowerCase() === "none")) return [];
  return env.list("INGRESS_REQUIRE_SERVICES", PROBED_SERVICES, [...PROBED_SERVICES]);
}
