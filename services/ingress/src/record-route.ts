import { errorText, isValidCallId, type Logger } from "@voicebot/bus";
import { sendJson, type HttpServer } from "@voicebot/service-kit";
import type { CallStore } from "@voicebot/state";
import { refuseWithoutToken } from "./api-auth.js";
import type { IngressMetrics } from "./metrics.js";

/** GET /v1/calls/:callSid: the call record (meta, transcript, tool calls, turn latencies). */
export function registerRecordRoute(http: HttpServer, store: CallStore, log: Logger, metrics: IngressMetrics, apiToken: string | undefined): void {
  http.route("GET", /^\/v1\/calls\/([^/]+)\/?$/, async (req, res, match) => {
    if (refuseWithoutToken(req, res, apiToken)) return metrics.apiRefused.inc({ route: "get_record" });
    let callSid: string;
    try {
      callSid = decodeURIComponent(match[1]);
    } catch {
      sendJson(res, 400, { error: "invalid call id" });
      return;
    }
    if (!isValidCallId(callSid)) {
      sendJson(res, 400, { error: "invalid call id" });
      return;
    }
    try {
      const record = await store.getRecord(callSid);
      if (record) sendJson(res, 200, record);
      else sendJson(res, 404, { error: "call not found", callSid });
    } catch (error) {
      metrics.storeErrors.inc({ op: "get_record" });
      log.error("reading a call record failed", { callSid, error: errorText(error) });
      sendJson(res, 503, { error: "call store unavailable" });
    }
  });
}
