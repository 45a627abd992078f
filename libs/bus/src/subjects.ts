// Every NATS subject voicebot uses is named here, and only here. The `v1` token moves with the proto packages.

const CALL_ID = /^[A-Za-z0-9_-]{1,128}$/;

/** Call ids become subject tokens and Redis key parts, so they must be plain tokens. */
export function isValidCallId(callId: string): boolean {
  return CALL_ID.test(callId);
}

const CALL_SUBJECT_PREFIX = "vb.v1.call.";

function call(callId: string, kind: string): string {
  if (!isValidCallId(callId)) throw new Error(`invalid call id ${JSON.stringify(callId)}`);
  return `${CALL_SUBJECT_PREFIX}${callId}.${kind}`;
}

/** The call id a per-call subject names (`vb.v1.call.<id>.…`); undefined for any other subject. */
export function callIdOfSubject(subject: string): string | undefined {
  if (!subject.startsWith(CALL_SUBJECT_PREFIX)) return undefined;
  const end = subject.indexOf(".", CALL_SUBJECT_PREFIX.length);
  if (end < 0) return undefined;
  const callId = subject.slice(CALL_SUBJECT_PREFIX.length, end);
  return isValidCallId(callId) ? callId : undefined;
}

export const subjects = {
  /** Caller audio, ingress -> the asr replica that owns the call. CallerAudio. */
  callerAudio: (callId: string) => call(callId, "audio.in"),
  /**
   * The caller audio the call's ingress still keeps, from a frame on (an asr replica taking the call over).
   * CallerAudioReplayRequest -> CallerAudio. Every ingress replica listens on the wildcard; only the one streaming the
   * call answers.
   */
  callerAudioReplay: (callId: string) => call(callId, "audio.replay"),
  callerAudioReplayAll: "vb.v1.call.*.audio.replay",
  /** Bot audio, tts -> the ingress holding the call's stream. BotAudio. */
  botAudio: (callId: string) => call(callId, "audio.out"),
  /** Voice activity, asr -> ingress/dialog (barge-in). SpeechActivity. */
  speech: (callId: string) => call(callId, "speech"),
  /** Partial and final transcripts for observers. Transcript. */
  transcript: (callId: string) => call(callId, "transcript"),
  /** What the caller heard, ingress -> anyone. PlaybackEvent. */
  playback: (callId: string) => call(callId, "playback"),
  /** Act on the live call, dialog/tools -> ingress. CallControl. */
  control: (callId: string) => call(callId, "control"),
  /** Stop work for a turn or the whole call, -> asr/tts/dialog. CancelTurn. */
  cancel: (callId: string) => call(callId, "cancel"),
  cancelAll: "vb.v1.call.*.cancel",
  /** The call ended. CallEnded. */
  ended: (callId: string) => call(callId, "ended"),
  endedAll: "vb.v1.call.*.ended",
  /** A chunk failed in every tts engine. SynthesisFailed. */
  ttsFailed: (callId: string) => call(callId, "tts.failed"),
  /** Is the call's stream alive? Answered by the ingress replica streaming it. ReadinessRequest -> ReadinessResponse. */
  stream: (callId: string) => call(callId, "stream"),

  /** A call's stream opened; one asr replica claims it (queue group). CallStarted. */
  callStarted: "vb.v1.calls.started",
  /** Dialog work queue (JetStream), one subject per call. DialogInput. */
  dialogInput: (callId: string) => call(callId, "dialog.in"),
  dialogInputAll: "vb.v1.call.*.dialog.in",
  /** Text to speak, dialog -> any tts replica (JetStream work queue `streams.tts`). SpeakRequest. */
  ttsSpeak: "vb.v1.tts.speak",
  /** Tool execution, dialog -> any tools replica (request/reply, queue group). ToolCallRequest -> ToolCallResult. */
  toolsCall: "vb.v1.tools.call",
  /** Readiness ping answered by every ready replica of a service (request/reply, queue group). */
  ping: (service: string) => `vb.v1.ping.${service}`,
} as const;

/** Queue groups equal the service name, so replicas of one service share work. */
export const queueGroups = {
  asr: "asr",
  dialog: "dialog",
  tools: "tools",
  tts: "tts",
} as const;

/** JetStream streams. Dialog inputs are kept until a dialog replica acks the finished turn. */
export const streams = {
  dialog: { name: "VB_DIALOG_IN", subjects: [subjects.dialogInputAll], durable: "dialog" },
  /** SpeakRequests, kept until the tts replica that spoke the chunk acks it (a crashed replica's chunk is redone). */
  tts: { name: "VB_TTS_SPEAK", subjects: [subjects.ttsSpeak], durable: "tts" },
} as const;

/** Header names carried on every message. */
export const headerNames = {
  callId: "vb-call-id",
  traceId: "vb-trace-id",
  /** Request/reply: "wanted" on a request that asks its server to confirm it took it up, "sent" on that receipt. */
  receipt: "vb-receipt",
} as const;
