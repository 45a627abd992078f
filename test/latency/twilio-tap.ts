// A transparent relay between call simulators and ingress's /twilio that records, in arrival order, every message
// ingress sends to each caller. The simulator keeps its view of the call (what it played, when); the tap adds
// the exact order of media, marks and clear on the wire, which is what tells whether audio of a cut turn still
// reached the caller after the `clear`.
import { WebSocket, WebSocketServer, type RawData } from "ws";

export interface TappedMessage {
  /** Wall-clock ms the message came from ingress. */
  at: number;
  event: string;
  /** Mark name (`<turnId>.<chunkSeq>`) for `mark`. */
  mark?: string;
  /** Decoded payload bytes for `media` (μ-law 8 kHz: 8 bytes per ms). */
  bytes: number;
}

export interface TappedCall {
  callSid: string;
  /** Everything ingress sent to the caller, in order. */
  fromBot: TappedMessage[];
}

export interface TwilioTap {
  /** ws://127.0.0.1:<port>/twilio: point simulators here instead of at ingress. */
  url: string;
  /** The messages of a call (by its callSid, known from its `start`). */
  call(callSid: string): TappedCall;
  close(): Promise<void>;
}

function base64Bytes(payload: string): number {
  const padding = payload.endsWith("==") ? 2 : payload.endsWith("=") ? 1 : 0;
  return (payload.length / 4) * 3 - padding;
}

/** A close code that may be sent on the other leg (1005/1006/1015 are reserved for "none"/"abnormal"). */
function forwardableCode(code: number): number {
  return code === 1000 || (code >= 1001 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999) ? code : 1000;
}

export async function startTap(targetUrl: string): Promise<TwilioTap> {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/twilio", perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => server.once("listening", resolve).once("error", reject));
  const port = (server.address() as { port: number }).port;
  const calls = new Map<string, TappedCall>();
  const sockets = new Set<WebSocket>();

  server.on("connection", (caller) => {
    const upstream = new WebSocket(targetUrl, { perMessageDeflate: false });
    sockets.add(caller).add(upstream);
    const pending: string[] = [];
    let call: TappedCall | undefined;

    caller.on("message", (data: RawData) => {
      const text = data.toString();
      if (!call) {
        // The simulator's first messages are `connected` then `start`, which names the call.
        const message = JSON.parse(text) as { event?: string; start?: { callSid?: string } };
        if (message.event === "start" && message.start?.callSid) {
          call = { callSid: message.start.callSid, fromBot: [] };
          calls.set(call.callSid, call);
        }
      }
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else pending.push(text);
    });
    upstream.on("open", () => {
      for (const text of pending.splice(0)) upstream.send(text);
    });
    upstream.on("message", (data: RawData) => {
      const at = Date.now();
      const text = data.toString();
      const message = JSON.parse(text) as { event: string; media?: { payload: string }; mark?: { name: string } };
      call?.fromBot.push({
        at,
        event: message.event,
        mark: message.mark?.name,
        bytes: message.media ? base64Bytes(message.media.payload) : 0,
      });
      if (caller.readyState === WebSocket.OPEN) caller.send(text);
    });
    upstream.on("close", (code, reason) => {
      sockets.delete(upstream);
      if (caller.readyState === WebSocket.OPEN) caller.close(forwardableCode(code), reason.toString());
    });
    caller.on("close", (code, reason) => {
      sockets.delete(caller);
      if (upstream.readyState === WebSocket.OPEN) upstream.close(forwardableCode(code), reason.toString());
      else upstream.terminate();
    });
    upstream.on("error", () => caller.terminate());
    caller.on("error", () => upstream.terminate());
  });

  return {
    url: `ws://127.0.0.1:${port}/twilio`,
    call(callSid) {
      const call = calls.get(callSid);
      if (!call) throw new Error(`the tap saw no start for call ${callSid}`);
      return call;
    },
    async close() {
      for (const socket of sockets) socket.terminate();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** What reached the caller after the first `clear`, judged by the marks: audio of a later turn, or leaked audio. */
export interface AfterClear {
  /** Wall-clock ms the clear came from ingress (undefined: no clear). */
  clearAt: number | undefined;
  /** Turn ids with marks on the wire before the clear (the cut turn and any before it). */
  cutTurns: string[];
  /** Marks of those turns sent after the clear (must be none). */
  cutMarksAfter: string[];
  /** Media bytes after the clear not followed by a mark of a later turn: audio of a cut turn (must be 0). */
  leakedBytes: number;
  /** Media messages that carried those bytes. */
  leakedMessages: number;
  /** Media bytes after the clear that belong to later turns. */
  laterBytes: number;
  /** When the first media after the clear arrived. */
  firstMediaAfterAt: number | undefined;
}

/** `t12.3` -> 12 (turn ids are `t<n>` and only grow within a call). */
function turnNumber(mark: string): number {
  return Number(/^t(\d+)\./.exec(mark)?.[1] ?? Number.NaN);
}

/**
 * Splits the caller's view at the first `clear`. Media belongs to the turn named by the next mark (ingress sends a
 * chunk's mark right after its last frame), and turn ids only grow, so media after the clear that is followed by
 * a mark of a turn no later than the one playing at the clear, or by no mark at all, is audio that should have
 * been cancelled. The caller must have heard a mark of the cut turn before the clear for this to name it.
 */
export function afterClear(call: TappedCall): AfterClear {
  const messages = call.fromBot;
  const clearIndex = messages.findIndex((m) => m.event === "clear");
  if (clearIndex < 0) {
    return { clearAt: undefined, cutTurns: [], cutMarksAfter: [], leakedBytes: 0, leakedMessages: 0, laterBytes: 0, firstMediaAfterAt: undefined };
  }
  const before = messages.slice(0, clearIndex).flatMap((m) => (m.event === "mark" && m.mark ? [m.mark] : []));
  const lastCut = Math.max(-1, ...before.map(turnNumber).filter((n) => !Number.isNaN(n)));
  const after = messages.slice(clearIndex + 1);
  const result: AfterClear = {
    clearAt: messages[clearIndex].at,
    cutTurns: [...new Set(before.map((m) => m.slice(0, m.lastIndexOf("."))))],
    cutMarksAfter: [],
    leakedBytes: 0,
    leakedMessages: 0,
    laterBytes: 0,
    firstMediaAfterAt: after.find((m) => m.event === "media")?.at,
  };
  let segment = { bytes: 0, messages: 0 };
  for (const m of after) {
    if (m.event === "media") {
      segment.bytes += m.bytes;
      segment.messages += 1;
    } else if (m.event === "mark" && m.mark) {
      const n = turnNumber(m.mark);
      if (Number.isNaN(n) || n <= lastCut) {
        result.cutMarksAfter.push(m.mark);
        result.leakedBytes += segment.bytes;
        result.leakedMessages += segment.messages;
      } else {
        result.laterBytes += segment.bytes;
      }
      segment = { bytes: 0, messages: 0 };
    }
  }
  // Audio with no mark after it never finished a chunk: nothing says it belongs to a later turn.
  result.leakedBytes += segment.bytes;
  result.leakedMessages += segment.messages;
  return result;
}
