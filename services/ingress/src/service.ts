import { errorText } from "@voicebot/bus";
import type { RunningService, ServiceDefinition } from "@voicebot/service-kit";
import { readIngressConfig, type IngressConfig } from "./config.js";
import { TwilioEndpoint } from "./endpoint.js";
import { IngressMetrics } from "./metrics.js";
import { ReadinessProbe } from "./readiness.js";
import { registerAmdCallback } from "./amd-callback.js";
import { registerOutboundRoute } from "./outbound-route.js";
import { registerRecordRoute } from "./record-route.js";
import { registerStatusCallback } from "./status-callback.js";
import { registerVoiceWebhook } from "./voice-webhook.js";
import { PlayoutScheduler } from "./scheduler.js";
import { SAFE_SILENCE_LEVEL_DBFS } from "./silence-batch.js";
import { LiveCalls } from "./session.js";
import { TwilioRestClient } from "./twilio-rest.js";

export const definition: ServiceDefinition<IngressConfig> = {
  name: "ingress",
  defaultHttpPort: 8080,
  portEnv: "INGRESS_PORT",
  readConfig: readIngressConfig,
  async start(ctx, config): Promise<RunningService> {
    const { log, bus, store, http, registry } = ctx;
    const metrics = new IngressMetrics(registry);
    const scheduler = new PlayoutScheduler(
      config.playoutTickMs,
      (error) => log.error("playout failed for a call; its audio stopped", { error: errorText(error) }),
      undefined,
      config.playoutPhases,
    );
    const twilioApi = config.twilioRest ? new TwilioRestClient(config.twilioRest) : undefined;
    log.info(twilioApi ? "Twilio REST API configured: transfers redirect the call" : "no Twilio REST credentials: transfers close the stream", {
      requireServices: config.requireServices,
    });
    const endpoint = new TwilioEndpoint({
      bus,
      store,
      log,
      metrics,
      config,
      scheduler,
      twilioApi,
      liveCalls: new LiveCalls(),
      instanceId: ctx.common.instanceId,
    });
    http.upgrade("/twilio", endpoint.handleUpgrade);
    registerRecordRoute(http, store, log, metrics, config.apiToken);
    registerOutboundRoute(http, { config, twilioApi, store, log, metrics });
    registerStatusCallback(http, { config, store, log, metrics });
    registerAmdCallback(http, { config, store, bus, log, metrics });
    registerVoiceWebhook(http, { config, store, log, metrics });
    if (config.silenceBatch.maxFrames > 1 && config.silenceBatch.levelDbfs > SAFE_SILENCE_LEVEL_DBFS) {
      log.warn(`INGRESS_SILENCE_LEVEL_DBFS is above ${SAFE_SILENCE_LEVEL_DBFS.toFixed(2)} dBFS RMS: a window of quiet frames can pass the asr's default -55 dBFS VAD gate, so a soft speech onset may wait for a batch; keep ASR_VAD_GATE_DBFS 2.73 dB or more above it`, {
        levelDbfs: config.silenceBatch.levelDbfs,
      });
    }
    if (!config.apiToken) log.warn("INGRESS_API_TOKEN is not set: call records are readable without a token, and POST /v1/calls is off");
    const probe = new ReadinessProbe(bus, config.requireServices, config.readinessProbeIntervalMs, ctx.common.instanceId, log);
    probe.start();
    // Stream leases renewed every few seconds, lost streams' calls ended; and Redis may come back empty (a restart
    // without persistence): live calls whose record is gone are looked for as soon as it is reachable again too.
    const keepStreams = () =>
      void endpoint.keepStreams().catch((error) => log.warn("renewing the live calls' streams failed", { error: errorText(error) }));
    const streamTimer = setInterval(keepStreams, config.recordCheckMs);
    store.redis.on("ready", keepStreams);

    return {
      notReadyReason: () => {
        if (config.maxCalls > 0 && endpoint.activeCalls >= config.maxCalls) return "at capacity";
        return probe.notReadyReason();
      },
      activeCalls: () => endpoint.activeCalls,
      drain: () => endpoint.drain(),
      close: async () => {
        clearInterval(streamTimer);
        store.redis.off("ready", keepStreams);
        probe.stop();
        await endpoint.close();
        scheduler.close();
      },
    };
  },
};
