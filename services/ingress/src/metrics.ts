import { hotCounter, pendingCount, type PendingCount } from "@voicebot/bus";
import { Counter, Histogram, type Registry } from "prom-client";

/** Counts made for every media message (hot counters: plain additions, taken in when the registry is read). */
export interface MediaCounts {
  /** Caller frames published (voicebot_ingress_frames_in_total). */
  framesIn: PendingCount;
  /** CallerAudio messages published, by `batched` (voicebot_ingress_caller_audio_messages_total). */
  batchedMessages: PendingCount;
  singleMessages: PendingCount;
  /** Bot frames sent to Twilio (voicebot_ingress_frames_out_total). */
  framesOut: PendingCount;
}

/** Every metric the ingress exports besides the kit's own (active calls, readiness, bus). */
export class IngressMetrics {
  /** Add to these on the media path instead of calling inc() on framesIn, callerAudioMessages or framesOut. */
  readonly media: MediaCounts;
  readonly protocolErrors: Counter<"reason">;
  readonly framesIn: Counter;
  readonly callerAudioMessages: Counter<"batched">;
  readonly framesOut: Counter;
  readonly turnLatency: Histogram;
  /** The latency budget: each turn's time per stage (the same split the call record shows). */
  readonly turnStage: Histogram<"stage">;
  readonly underruns: Counter<"where">;
  readonly skippedChunks: Counter<"reason">;
  readonly droppedBotAudio: Counter<"reason">;
  readonly controls: Counter<"action" | "outcome">;
  readonly twilioApi: Counter<"action" | "outcome">;
  readonly rejectedStreams: Counter<"reason">;
  readonly publishErrors: Counter<"message">;
  readonly storeErrors: Counter<"op">;
  readonly apiRefused: Counter<"route">;
  readonly outboundCalls: Counter<"outcome">;
  readonly voiceWebhooks: Counter<"outcome">;
  readonly statusCallbacks: Counter<"outcome">;
  readonly statusRelays: Counter<"outcome">;
  readonly amdVerdicts: Counter<"answered_by" | "outcome">;
  readonly amdActionsAtStreamStart: Counter<"answered_by" | "outcome">;
  readonly playbackEvents: Counter<"kind">;
  readonly bargeIns: Counter<"by">;
  readonly bargeInsIgnored: Counter<"reason">;
  readonly falseInterruptions: Counter;
  readonly clearLatency: Histogram;
  readonly cancels: Counter<"reason">;
  readonly inboundReordered: Counter;
  readonly callerAudioReplays: Counter<"result">;
  readonly callerAudioReplayedFrames: Counter;
  readonly inboundDropped: Counter<"reason">;
  readonly inboundMissing: Counter;
  readonly inboundConcealed: Counter;
  readonly noSilenceFallbacks: Counter;
  readonly noInputs: Counter;
  readonly recordsRestored: Counter;
  readonly handovers: Counter;
  readonly resumes: Counter<"outcome">;
  readonly detachedStreams: Counter;
  readonly lostStreams: Counter;

  constructor(registry: Registry) {
    const registers = [registry];
    this.protocolErrors = new Counter({
      name: "voicebot_ingress_protocol_errors_total",
      help: "Inbound Twilio messages rejected, by reason",
      labelNames: ["reason"],
      registers,
    });
    this.framesIn = hotCounter({ name: "voicebot_ingress_frames_in_total", help: "20 ms caller frames forwarded", registers });
    this.callerAudioMessages = hotCounter({
      name: "voicebot_ingress_caller_audio_messages_total",
      help: "CallerAudio messages published; batched=true holds several quiet frames (frames_in_total / this = frames per message)",
      labelNames: ["batched"],
      registers,
    });
    this.framesOut = hotCounter({ name: "voicebot_ingress_frames_out_total", help: "20 ms bot frames sent to Twilio", registers });
    this.media = {
      framesIn: pendingCount(this.framesIn),
      batchedMessages: pendingCount(this.callerAudioMessages, { batched: "true" }),
      singleMessages: pendingCount(this.callerAudioMessages, { batched: "false" }),
      framesOut: pendingCount(this.framesOut),
    };
    this.turnStage = new Histogram({
      name: "voicebot_turn_stage_seconds",
      help: "Per-turn time spent in each stage: endpoint wait, ASR, queues, dialog, tools, LLM first token, TTS first audio, ingress send",
      labelNames: ["stage"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5],
      registers,
    });
    this.turnLatency = new Histogram({
      name: "voicebot_ingress_turn_latency_seconds",
      help: "Caller input end to the turn's first audio frame sent",
      buckets: [0.2, 0.4, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 5, 8],
      registers,
    });
    this.underruns = new Counter({
      name: "voicebot_ingress_playout_underruns_total",
      help: "Times Twilio's buffer ran dry in the middle of a turn (audio arrived late): inside a chunk or between two",
      labelNames: ["where"],
      registers,
    });
    this.skippedChunks = new Counter({
      name: "voicebot_ingress_playout_skipped_chunks_total",
      help: "Speech chunks not played (synthesis failed, stalled, bad format)",
      labelNames: ["reason"],
      registers,
    });
    this.droppedBotAudio = new Counter({
      name: "voicebot_ingress_bot_audio_dropped_total",
      help: "BotAudio parts dropped (late, duplicate, for a finished turn, superseded by a CLEAR naming a later dialog turn, overtaken: first came after a later dialog turn had begun playing)",
      labelNames: ["reason"],
      registers,
    });
    this.controls = new Counter({
      name: "voicebot_ingress_controls_total",
      help: "CallControl actions handled, by outcome",
      labelNames: ["action", "outcome"],
      registers,
    });
    this.twilioApi = new Counter({
      name: "voicebot_ingress_twilio_api_requests_total",
      help: "Twilio REST API calls, by outcome",
      labelNames: ["action", "outcome"],
      registers,
    });
    this.rejectedStreams = new Counter({
      name: "voicebot_ingress_rejected_streams_total",
      help: "WebSocket upgrades refused",
      labelNames: ["reason"],
      registers,
    });
    this.publishErrors = new Counter({
      name: "voicebot_ingress_publish_errors_total",
      help: "Messages that could not be published to NATS",
      labelNames: ["message"],
      registers,
    });
    this.storeErrors = new Counter({
      name: "voicebot_ingress_store_errors_total",
      help: "Failed Redis writes/reads",
      labelNames: ["op"],
      registers,
    });
    this.apiRefused = new Counter({
      name: "voicebot_ingress_api_unauthorized_total",
      help: "API requests refused for a missing or wrong bearer token (INGRESS_API_TOKEN)",
      labelNames: ["route"],
      registers,
    });
    this.outboundCalls = new Counter({
      name: "voicebot_ingress_outbound_calls_total",
      help: "POST /v1/calls: calls placed through the Twilio API, or why not (invalid, not_configured, refused, rate_limited, twilio_error, unreachable, unknown = Twilio may have placed it, unavailable = the Idempotency-Key could not be checked; idempotent_done / _pending / _mismatch = a repeat of a key)",
      labelNames: ["outcome"],
      registers,
    });
    this.voiceWebhooks = new Counter({
      name: "voicebot_ingress_voice_webhooks_total",
      help: "POST /twilio/voice: answered with stream TwiML (answered, resumed), hung up (resume_ended, resume_limit), dialed a transfer target (transfer), or refused (invalid, bad_signature)",
      labelNames: ["outcome"],
      registers,
    });
    this.statusCallbacks = new Counter({
      name: "voicebot_ingress_status_callbacks_total",
      help: "POST /twilio/status: progress reports of placed calls (reported; ended_unanswered = the record now says busy, no-answer, failed, canceled or stream_never_connected), or refused (invalid, bad_signature, store_error)",
      labelNames: ["outcome"],
      registers,
    });
    this.amdVerdicts = new Counter({
      name: "voicebot_ingress_amd_verdicts_total",
      help: "POST /twilio/amd: answering machine verdicts on placed calls, by Twilio's AnsweredBy and what was done (recorded: a human or unknown; voicemail: the agent's message is left; hung_up; before_stream: recorded for the stream to act on when it starts, counted again in voicebot_ingress_amd_actions_at_stream_start_total; not_live: the call ended or is unknown; invalid, bad_signature). One count per verdict",
      labelNames: ["answered_by", "outcome"],
      registers,
    });
    this.amdActionsAtStreamStart = new Counter({
      name: "voicebot_ingress_amd_actions_at_stream_start_total",
      help: "Answering machine verdicts acted on when their call's stream started (those that came before it: amd_verdicts_total outcome before_stream; one racing the stream's start may be acted on by both, the message still left once): voicemail (the agent's message is left) or hung_up",
      labelNames: ["answered_by", "outcome"],
      registers,
    });
    this.statusRelays = new Counter({
      name: "voicebot_ingress_status_relays_total",
      help: "Progress reports passed on to the statusCallback given to POST /v1/calls (ok, failed, refused: not a public address)",
      labelNames: ["outcome"],
      registers,
    });
    this.playbackEvents = new Counter({
      name: "voicebot_ingress_playback_events_total",
      help: "PlaybackEvents published",
      labelNames: ["kind"],
      registers,
    });
    this.bargeIns = new Counter({
      name: "voicebot_ingress_barge_ins_total",
      help: "Bot audio cut because the caller started speaking or pressed a key",
      labelNames: ["by"] as const,
      registers,
    });
    this.bargeInsIgnored = new Counter({
      name: "voicebot_ingress_barge_ins_ignored_total",
      help: "Caller speech onsets that cut nothing (nothing playing, barge-in off, speech too short)",
      labelNames: ["reason"],
      registers,
    });
    this.clearLatency = new Histogram({
      name: "voicebot_ingress_clear_latency_seconds",
      help: "Caller speech onset (SpeechActivity.atMs) to the Twilio clear sent",
      buckets: [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2],
      registers,
    });
    this.cancels = new Counter({
      name: "voicebot_ingress_cancels_total",
      help: "CancelTurn messages published, by reason",
      labelNames: ["reason"],
      registers,
    });
    this.callerAudioReplays = new Counter({
      name: "voicebot_ingress_caller_audio_replays_total",
      help: "Requests of an asr replica taking a call over for the call's recent caller audio: sent (some frames), none_kept (none from the frame asked for on)",
      labelNames: ["result"],
      registers,
    });
    this.callerAudioReplayedFrames = new Counter({
      name: "voicebot_ingress_caller_audio_replayed_frames_total",
      help: "Caller frames sent again to an asr replica that took a call over",
      registers,
    });
    this.inboundReordered = new Counter({
      name: "voicebot_ingress_inbound_frames_reordered_total",
      help: "Caller frames that arrived out of order and were put back in order",
      registers,
    });
    this.inboundDropped = new Counter({
      name: "voicebot_ingress_inbound_frames_dropped_total",
      help: "Caller frames dropped: duplicate, late (arrived after their place was filled), or implausible (a lone frame numbered far ahead of the stream)",
      labelNames: ["reason"],
      registers,
    });
    this.inboundMissing = new Counter({
      name: "voicebot_ingress_inbound_frames_missing_total",
      help: "Caller frames that never arrived in time (gaps in Twilio's chunk numbering)",
      registers,
    });
    this.inboundConcealed = new Counter({
      name: "voicebot_ingress_inbound_frames_concealed_total",
      help: "Missing caller frames replaced by silence or a repeat of the previous frame",
      registers,
    });
    this.noSilenceFallbacks = new Counter({
      name: "voicebot_ingress_no_silence_fallbacks_total",
      help: "Fallback lines played because no bot turn began within NO_SILENCE_DEADLINE_MS of the caller's input",
      registers,
    });
    this.falseInterruptions = new Counter({
      name: "voicebot_ingress_false_interruptions_total",
      help: "Barge-ins by a sound the asr found too short to be speech (a cough, a click): the dialog was asked to let the cut turn go on",
      registers,
    });
    this.noInputs = new Counter({
      name: "voicebot_ingress_no_inputs_total",
      help: "Times the caller stayed silent NO_INPUT_MS after the bot's turn and the dialog was asked to prompt again",
      registers,
    });
    this.recordsRestored = new Counter({
      name: "voicebot_ingress_call_records_restored_total",
      help: "Live calls whose record vanished from Redis (data lost): re-created and re-announced to the pipeline",
      registers,
    });
    this.handovers = new Counter({
      name: "voicebot_ingress_handovers_total",
      help: "Live calls a draining ingress handed over to another replica (closed for Twilio's <Redirect> to resume them)",
      registers,
    });
    this.resumes = new Counter({
      name: "voicebot_ingress_resumes_total",
      help: "Streams that resumed a call (its ingress died or handed it over), by outcome (resumed, call_ended, record_lost)",
      labelNames: ["outcome"],
      registers,
    });
    this.detachedStreams = new Counter({
      name: "voicebot_ingress_detached_streams_total",
      help: "Streams that stopped without ending their call (handed over, closed without stop, superseded), for a new stream to take it up",
      registers,
    });
    this.lostStreams = new Counter({
      name: "voicebot_ingress_lost_streams_total",
      help: "Live calls whose stream lease lapsed with no stream taking them up (their ingress died, or no resume came): ended as stream_lost",
      registers,
    });
  }
}
