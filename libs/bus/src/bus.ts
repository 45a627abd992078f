import {
  AckPolicy,
  connect,
  createInbox,
  ErrorCode,
  type ConnectionOptions,
  DeliverPolicy,
  headers as natsHeaders,
  JsMsg,
  Msg,
  MsgHdrs,
  NatsConnection,
  nanos,
  RetentionPolicy,
  StorageType,
  Subscription,
  ConsumerEvents,
  ConsumerMessages,
  JetStreamClient,
  type JetStreamManager,
} from "nats";
import type { Counter, Registry } from "prom-client";
import { natsSecurityOptions, parseNatsServers, type NatsAuth, type NatsTls } from "./connection.js";
import { hotCounter, pendingCount, type PendingCount } from "./hot-counter.js";
import { InOrder } from "./in-order.js";
import { LogThrottle, type Logger } from "./log.js";
import { callIdOfSubject, headerNames } from "./subjects.js";

/** What ts-proto generates for each message: enough to put it on the wire and take it off. */
export interface Codec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

export interface BusOptions {
  /** Comma-separated NATS URLs; `nats://user:pass@host` or `nats://token@host` carry credentials. */
  servers: string;
  /** Credentials given apart from the URLs (the service's NATS_* settings); they take precedence. */
  auth?: NatsAuth;
  /** TLS to the server (a `tls://` URL alone means TLS with the system's trusted CAs). */
  tls?: NatsTls;
  /**
   * Copies of each work-queue stream (and its consumer) the NATS cluster keeps: 1 on a single server, 3 on a
   * three-node cluster so the queues outlive a node. Existing streams are scaled to it.
   */
  streamReplicas?: number;
  /** Connection name shown by the NATS server (service + instance). */
  name: string;
  log: Logger;
  registry: Registry;
}

export interface SubscribeOptions {
  /** Short stable name for logs and metric labels (never a per-call subject). */
  name: string;
  /** Queue group: one member receives each message. */
  queue?: string;
  /** Run the handler for one message at a time, in arrival order (per-call audio). */
  ordered?: boolean;
}

export interface Delivery {
  subject: string;
  /** The message's call id header, else the call id in a per-call subject (`vb.v1.call.<id>.…`). */
  callId: string | undefined;
}

export type Handler<T> = (message: T, delivery: Delivery) => void | Promise<void>;

export interface WorkItem {
  subject: string;
  /** 1 on first delivery; more when a crashed or slow worker's message came back. */
  deliveryCount: number;
  /** The message's sequence in its stream: an earlier message of the same subject has a lower one. */
  streamSeq: number;
  ack(): void;
  /** Give the message back to be redelivered after delayMs. */
  nak(delayMs?: number): void;
  /** Tell JetStream the work is still going (resets the ack deadline). */
  working(): void;
  /**
   * The item now only waits for other work (its call's earlier input): it stops counting against the consumer's
   * concurrency, so the process takes other calls' work meanwhile. Up to `concurrency` such items at once; past
   * that an item keeps counting. It does not count again when its wait is over (so at most twice `concurrency`
   * items are ever in hand).
   */
  waiting(): void;
}

export interface WorkQueueDefinition {
  name: string;
  subjects: readonly string[];
  durable: string;
}

export interface ConsumeOptions {
  name: string;
  /** How long a message may stay unacked before JetStream gives it to another worker. */
  ackWaitMs: number;
  maxDeliver: number;
  /** Most messages in progress at once in this process. */
  concurrency: number;
}

/** How many acked messages a consumer remembers, to ack a redelivery of one again instead of running it. */
const RECENTLY_ACKED_KEPT = 4_096;

/** A durable publish waits this long for the stream's ack before it is sent again... */
/** How long ensureStream waits for a NATS cluster's JetStream to answer (a leader election). */
const JETSTREAM_READY_MS = 30_000;
const DURABLE_ATTEMPT_MS = 1_000;
/**
 * ...and gives up after this long. It must outlast a stream leader's election in a NATS cluster: a follower waits
 * 4-9 s for a lost leader before it campaigns (nats-server raft.go), and a split vote takes a second round. With 5 s,
 * speech queued while a crashed node's streams re-elected was lost (a CI run: the answer never played).
 */
const DURABLE_DEADLINE_MS = 20_000;
/** Wait between attempts at making a lost work queue again (while NATS is still coming back). */
const RECREATE_RETRY_MS = 500;
/** Wait before starting a consumer again that ended without being asked to. */
const RESTART_PAUSE_MS = 100;
/** Messages a work-queue consumer pulls ahead of the one its loop is reading (see consume). */
const WORK_QUEUE_PREFETCH = 4;

export class BusError extends Error {
  constructor(
    message: string,
    readonly code: "timeout" | "no_responders" | "disconnected" | "remote",
  ) {
    super(message);
  }
}

/**
 * Typed NATS access for every service: protobuf codecs, call ids in headers (except on high-rate media, whose
 * subject names the call), handler isolation (a bad message or a throwing handler is logged and counted, never
 * fatal), request/reply and a JetStream work queue.
 */
export class Bus {
  private readonly subs = new Set<Subscription>();
  private readonly consumers = new Set<ConsumerMessages>();
  private readonly js: JetStreamClient;
  private readonly decodeErrors: Counter<"handler">;
  private readonly handlerErrors: Counter<"handler">;
  private readonly droppedWorkItems: Counter<"handler" | "reason">;
  private readonly received: Counter<"handler">;
  private readonly redeliveredInHand: Counter<"handler">;
  private readonly published: PendingCount;
  private readonly statusChanges: Counter<"type">;
  private readonly resentRequests: Counter<"subject" | "reason">;
  /** Set by drain/close: consumers stop for good instead of starting over. */
  private closing = false;
  /** Bad messages are counted in full and logged in samples (per handler, one line a second). */
  private readonly logThrottle = new LogThrottle();

  private constructor(
    readonly nc: NatsConnection,
    private readonly log: Logger,
    registry: Registry,
    private readonly streamReplicas = 1,
  ) {
    this.js = nc.jetstream();
    // Shared by every Bus on the registry; per-message counts go through pendingCount().
    const metric = <L extends string>(name: string, help: string, labelNames: L[]) =>
      (registry.getSingleMetric(name) as Counter<L> | undefined) ?? hotCounter({ name, help, labelNames, registers: [registry] });
    this.decodeErrors = metric("voicebot_bus_decode_errors_total", "Messages that failed protobuf decoding", ["handler"]);
    this.handlerErrors = metric("voicebot_bus_handler_errors_total", "Message handlers that threw", ["handler"]);
    this.droppedWorkItems = metric(
      "voicebot_bus_work_items_dropped_total",
      "Work queue messages given up on at their last delivery (failed: the handler threw; handed_back: it asked for a redelivery that would never come), removed from the queue",
      ["handler", "reason"],
    );
    this.received = metric("voicebot_bus_messages_received_total", "Messages handled", ["handler"]);
    this.redeliveredInHand = metric(
      "voicebot_bus_redelivered_in_hand_total",
      "Work queue messages JetStream delivered again while this process was still at work on them (it stalled past the ack wait); not run twice",
      ["handler"],
    );
    this.published = pendingCount(metric("voicebot_bus_messages_published_total", "Messages published", []));
    this.statusChanges = metric("voicebot_bus_connection_events_total", "NATS connection status changes", ["type"]);
    this.resentRequests = metric(
      "voicebot_bus_requests_resent_total",
      "Requests sent again: no replica took them up in time (no_receipt: the one NATS chose was frozen or stalled), or the replica that took one stopped confirming it was still at work (taker_silent: it died or froze)",
      ["subject", "reason"],
    );
    void this.watchStatus();
  }

  /**
   * Connects, retrying until NATS answers (saying why not in the log every 10 s); afterwards reconnects forever.
   * Refused credentials end it at once: retrying cannot fix them.
   */
  static async connect(options: BusOptions): Promise<Bus> {
    const { servers, auth, tls } = parseNatsServers(options.servers);
    const connectOptions: ConnectionOptions = {
      servers,
      ...natsSecurityOptions(options.auth ?? auth, options.tls ?? (tls ? {} : undefined)),
      name: options.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 100,
      // A link that goes dark without closing is dropped after 2 unanswered pings (~15 s), and an attempt to connect
      // that hears nothing gives up after 5 s (nats.js waits 20 s), so a node that is back is found within seconds.
      pingInterval: 5_000,
      maxPingOut: 2,
      timeout: 5_000,
      // Otherwise every request and JetStream publish captures a stack trace up front, for an error we log by its
      // message: ~2 % of the CPU of ingress and the dialog under load (cpu profiles: NatsError, BaseRequest).
      noAsyncTraces: true,
    };
    const notYet = new LogThrottle(10_000);
    let nc: NatsConnection;
    for (let attempt = 1; ; attempt++) {
      try {
        nc = await connect(connectOptions);
        break;
      } catch (error) {
        const code = (error as { code?: string }).code;
        if (code === ErrorCode.AuthorizationViolation || code === ErrorCode.AuthenticationExpired) throw error;
        const throttled = notYet.admit("connect");
        if (throttled) options.log.warn("nats not reachable yet", { servers: servers.join(","), error: errorText(error), attempt });
        await new Promise((resolve) => setTimeout(resolve, Math.min(250 * attempt, 1_000)));
      }
    }
    options.log.info("nats connected", { server: nc.getServer() });
    return new Bus(nc, options.log, options.registry, options.streamReplicas);
  }

  get connected(): boolean {
    // isClosed() is final; between a disconnect and a reconnect the protocol reports no server.
    return !this.nc.isClosed() && this.isLinkUp;
  }
  private isLinkUp = true;

  private async watchStatus(): Promise<void> {
    for await (const status of this.nc.status()) {
      this.statusChanges.inc({ type: status.type });
      if (status.type === "disconnect" || status.type === "staleConnection") this.isLinkUp = false;
      if (status.type === "reconnect") this.isLinkUp = true;
      if (status.type === "disconnect" || status.type === "reconnect" || status.type === "error") {
        this.log.warn(`nats ${status.type}`, { data: String(status.data) });
      }
    }
  }

  /** Resolves when the connection is closed for good (the error, if it died). */
  closed(): Promise<void | Error> {
    return this.nc.closed();
  }

  /**
   * `callId` goes into the `vb-call-id` header. Leave it out for high-rate media (CallerAudio, BotAudio): the
   * message then goes without headers (cheaper to send, route and receive), and the receiver's Delivery.callId
   * comes from the per-call subject.
   */
  publish<T>(subject: string, codec: Codec<T>, message: T, callId?: string): void {
    const data = codec.encode(message).finish();
    if (callId) this.nc.publish(subject, data, { headers: callHeaders(callId) });
    else this.nc.publish(subject, data);
    this.published.value++;
  }

  /**
   * A synchronous handler runs right in the client's read loop: no promise per message. With `ordered`, a handler
   * that returns a promise holds back the subscription's next messages until it settles.
   */
  subscribe<T>(subject: string, codec: Codec<T>, handler: Handler<T>, options: SubscribeOptions): Subscription {
    const { name } = options;
    const received = pendingCount(this.received, { handler: name });
    /** Undefined when the handler is done; else its promise, which never rejects (failures are logged here). */
    const deliver = (msg: Msg): Promise<void> | undefined => {
      const message = this.decode(codec, msg, name);
      if (message === undefined) return undefined;
      received.value++;
      let result: void | Promise<void>;
      try {
        result = handler(message, new LazyDelivery(msg));
      } catch (error) {
        this.handlerFailed(name, msg.subject, error);
        return undefined;
      }
      if (!isPromise(result)) return undefined;
      return result.then(undefined, (error: unknown) => this.handlerFailed(name, msg.subject, error));
    };
    // Ordered: messages that arrive while a handler's promise is pending wait, in order.
    const inOrder = options.ordered ? new InOrder(deliver) : undefined;
    const sub = this.nc.subscribe(subject, {
      queue: options.queue,
      callback: (err, msg) => {
        if (err) {
          this.log.error("subscription error", { handler: name, error: err.message });
          return;
        }
        if (inOrder) inOrder.push(msg);
        else void deliver(msg);
      },
    });
    this.subs.add(sub);
    void sub.closed.then(() => this.subs.delete(sub));
    return sub;
  }

  private handlerFailed(name: string, subject: string, error: unknown): void {
    this.handlerErrors.inc({ handler: name });
    const admitted = this.logThrottle.admit(`handler:${name}`);
    if (admitted) this.log.error("message handler failed", { handler: name, subject, error: errorText(error), ...admitted });
  }

  private decode<T>(codec: Codec<T>, msg: Msg | JsMsg, name: string): T | undefined {
    try {
      return codec.decode(msg.data);
    } catch (error) {
      this.decodeErrors.inc({ handler: name });
      // The subject is read only here: turning it into a string for every message is a cost most handlers skip.
      const admitted = this.logThrottle.admit(`decode:${name}`);
      if (admitted) this.log.error("undecodable message dropped", { handler: name, subject: msg.subject, error: errorText(error), ...admitted });
      return undefined;
    }
  }

  async request<Req, Res>(
    subject: string,
    requestCodec: Codec<Req>,
    message: Req,
    responseCodec: Codec<Res>,
    timeoutMs: number,
    callId?: string,
    options: RequestOptions = {},
  ): Promise<Res> {
    if (options.receiptMs !== undefined) {
      const reply = await this.requestWithReceipt(subject, requestCodec.encode(message).finish(), timeoutMs, callId, options.receiptMs, options.maxSends ?? 3);
      return responseCodec.decode(reply.data);
    }
    let reply: Msg;
    try {
      reply = await this.nc.request(subject, requestCodec.encode(message).finish(), {
        timeout: timeoutMs,
        headers: callHeaders(callId),
      });
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "503") throw new BusError(`no responders on ${subject}`, "no_responders");
      if (code === "TIMEOUT") throw new BusError(`request on ${subject} timed out after ${timeoutMs} ms`, "timeout");
      throw new BusError(`request on ${subject} failed: ${errorText(error)}`, "disconnected");
    }
    return responseCodec.decode(reply.data);
  }

  /**
   * A request whose server says it took it up (a receipt: see serve) within `receiptMs`, else sent again, to the
   * same reply inbox, so that a queue group can give it to another replica: NATS keeps routing to a member whose
   * process is frozen or starved (its connection is open) until pings time it out, minutes later. The server repeats
   * its receipt while it works; a taker silent for TAKER_SILENT_MS died or froze after taking the request, so it is
   * sent again too. The first answer from any sending is the answer; a server that sends no receipt (an older
   * version) still answers the first.
   */
  private requestWithReceipt(subject: string, payload: Uint8Array, timeoutMs: number, callId: string | undefined, receiptMs: number, maxSends: number): Promise<Msg> {
    const inbox = createInbox();
    const hdrs = callHeaders(callId) ?? natsHeaders();
    hdrs.set(headerNames.receipt, RECEIPT_WANTED);
    return new Promise<Msg>((resolve, reject) => {
      let sends = 0;
      let receipted = false;
      let resend: NodeJS.Timeout | undefined;
      const finish = (outcome: Msg | BusError) => {
        clearTimeout(resend);
        clearTimeout(deadline);
        sub.unsubscribe();
        if (outcome instanceof BusError) reject(outcome);
        else resolve(outcome);
      };
      const sendAgainAfter = (ms: number, reason: "no_receipt" | "taker_silent") => {
        clearTimeout(resend);
        if (sends < maxSends) resend = setTimeout(() => send(reason), ms);
      };
      const sub = this.nc.subscribe(inbox, {
        callback: (err, msg) => {
          if (err) return finish(new BusError(`request on ${subject} failed: ${errorText(err)}`, "disconnected"));
          if (msg.headers?.get(headerNames.receipt) === RECEIPT_SENT) {
            receipted = true;
            sendAgainAfter(TAKER_SILENT_MS, "taker_silent");
            return;
          }
          if (msg.headers?.code === 503) {
            // No replica subscribed. Only the answer to a sending nobody took up yet counts.
            if (!receipted) finish(new BusError(`no responders on ${subject}`, "no_responders"));
            return;
          }
          finish(msg);
        },
      });
      const send = (reason?: "no_receipt" | "taker_silent") => {
        sends++;
        if (reason) this.resentRequests.inc({ subject, reason });
        receipted = false;
        try {
          this.nc.publish(subject, payload, { reply: inbox, headers: hdrs });
        } catch (error) {
          return finish(new BusError(`request on ${subject} failed: ${errorText(error)}`, "disconnected"));
        }
        sendAgainAfter(receiptMs, "no_receipt");
      };
      const deadline = setTimeout(() => finish(new BusError(`request on ${subject} timed out after ${timeoutMs} ms`, "timeout")), timeoutMs);
      send();
    });
  }

  /**
   * Answers requests; with a queue group, one replica answers each. Without one, every replica gets each request and
   * those it is not for return NOT_MINE: no answer (the one it is for answers). A request that asks for a receipt (see
   * requestWithReceipt) gets one the moment it is taken up, and again every RECEIPT_REPEAT_MS until it is answered.
   */
  serve<Req, Res>(
    subject: string,
    requestCodec: Codec<Req>,
    responseCodec: Codec<Res>,
    handler: (request: Req, delivery: Delivery) => Promise<Res | typeof NOT_MINE>,
    options: SubscribeOptions,
  ): Subscription {
    const received = pendingCount(this.received, { handler: options.name });
    const sub = this.nc.subscribe(subject, {
      queue: options.queue,
      callback: (err, msg) => {
        if (err) return;
        const request = this.decode(requestCodec, msg, options.name);
        if (request === undefined) return;
        received.value++;
        let stillWorking: NodeJS.Timeout | undefined;
        if (msg.reply && msg.headers?.get(headerNames.receipt) === RECEIPT_WANTED) {
          const receipt = () => {
            try {
              msg.respond(EMPTY, { headers: receiptHeaders });
            } catch {
              clearInterval(stillWorking); // the connection closed: the requester will send it again
            }
          };
          receipt();
          stillWorking = setInterval(receipt, RECEIPT_REPEAT_MS);
        }
        // Read now: the handler may run long, and a lazy delivery would keep the client's read buffer alive.
        const delivery: Delivery = { subject: msg.subject, callId: callIdOf(msg) };
        handler(request, delivery).then(
          (response) => {
            clearInterval(stillWorking);
            if (response !== NOT_MINE) msg.respond(responseCodec.encode(response).finish());
          },
          (error) => {
            clearInterval(stillWorking);
            this.handlerErrors.inc({ handler: options.name });
            const admitted = this.logThrottle.admit(`handler:${options.name}`);
            if (admitted) this.log.error("request handler failed", { handler: options.name, error: errorText(error), ...admitted });
          },
        );
      },
    });
    this.subs.add(sub);
    void sub.closed.then(() => this.subs.delete(sub));
    return sub;
  }

  /** Creates or updates a work-queue stream and its consumer: each message is kept until one worker acks it. */
  async ensureWorkQueue(definition: WorkQueueDefinition, ackWaitMs: number, maxDeliver: number): Promise<void> {
    await this.ensureStream(definition);
    await this.whenJetStreamReady(definition.name, async () => {
      const jsm = await this.nc.jetstreamManager();
      const settings = { ack_wait: nanos(ackWaitMs), max_deliver: maxDeliver };
      try {
        await jsm.consumers.add(definition.name, { durable_name: definition.durable, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ...settings });
      } catch (error) {
        // NATS 2.10 on creates only: a consumer made with other settings (an ack wait changed by a rolling update)
        // is refused as existing, and every new replica would fail to start. It is updated instead.
        if (!consumerExists(error)) throw error;
        await jsm.consumers.update(definition.name, definition.durable, settings);
        this.log.info("work queue consumer settings updated", { stream: definition.name, ackWaitMs, maxDeliver });
      }
    });
  }

  /**
   * Creates or updates a work-queue stream without its consumer (for a producer that may start before it). A NATS
   * cluster that has just started (or lost a node) elects its JetStream leader first, answering nothing or 503 for
   * a few seconds: that is waited out, up to JETSTREAM_READY_MS.
   */
  async ensureStream(definition: WorkQueueDefinition): Promise<void> {
    await this.whenJetStreamReady(definition.name, () => this.createOrUpdateStream(definition));
  }

  private async whenJetStreamReady<T>(stream: string, act: () => Promise<T>): Promise<T> {
    for (const since = Date.now(); ; ) {
      try {
        return await act();
      } catch (error) {
        const code = (error as { code?: string }).code;
        const notReady = code === "TIMEOUT" || code === "503" || /temporarily unavailable/i.test(errorText(error));
        if (!notReady || this.nc.isClosed() || Date.now() - since > JETSTREAM_READY_MS) throw error;
        this.log.warn("jetstream not ready yet", { stream, error: errorText(error) });
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    }
  }

  private async createOrUpdateStream(definition: WorkQueueDefinition): Promise<void> {
    const jsm = await this.nc.jetstreamManager();
    const config = {
      name: definition.name,
      subjects: [...definition.subjects],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      max_age: nanos(60 * 60 * 1000),
      duplicate_window: nanos(2 * 60 * 1000),
      num_replicas: this.streamReplicas,
    };
    try {
      await jsm.streams.info(definition.name);
      await jsm.streams.update(definition.name, config);
    } catch (error) {
      if (!/stream not found/i.test(errorText(error))) throw error;
      await jsm.streams.add(config);
    }
  }

  /**
   * Publishes to a JetStream subject; the same msgId within two minutes is stored once. A publish made while the
   * client reconnects can vanish (no ack, no error), so each attempt waits at most DURABLE_ATTEMPT_MS for the
   * stream's ack and is repeated (safe: same msgId) until DURABLE_DEADLINE_MS; then the last error is thrown.
   * Callers do not retry on top of it.
   */
  async publishDurable<T>(subject: string, codec: Codec<T>, message: T, msgId: string, callId?: string): Promise<void> {
    const data = codec.encode(message).finish();
    const deadline = Date.now() + DURABLE_DEADLINE_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.js.publish(subject, data, { msgID: msgId, headers: callHeaders(callId), timeout: DURABLE_ATTEMPT_MS });
        this.published.value++;
        return;
      } catch (error) {
        // TIMEOUT: lost in a reconnect or a slow server; 503: the stream is not there (yet), e.g. NATS restarting.
        const code = (error as { code?: string }).code;
        const delayMs = Math.min(50 * 2 ** attempt, 500);
        if ((code !== "TIMEOUT" && code !== "503") || this.nc.isClosed() || Date.now() + delayMs >= deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
    }
  }

  /**
   * Pulls from a work queue and runs up to `concurrency` handlers at once. The handler must ack or nak.
   * Survives NATS restarts: the client re-pulls after a reconnect, and a stream or consumer the server lost (a
   * restart without its JetStream store) is made again, so consuming goes on either way.
   */
  async consume<T>(
    definition: WorkQueueDefinition,
    codec: Codec<T>,
    handler: (message: T, item: WorkItem, delivery: Delivery) => Promise<void>,
    options: ConsumeOptions,
  ): Promise<{ stop(): Promise<void> }> {
    await this.ensureWorkQueue(definition, options.ackWaitMs, options.maxDeliver);
    const inFlight = new Set<Promise<void>>();
    // Messages are known by stream sequence and stored time: a stream NATS made anew (it lost its store) numbers
    // its messages from 1 again, and a redelivery carries the time its message was stored.
    const identity = (msg: JsMsg) => `${msg.seq}:${msg.info.timestampNanos}`;
    /** Messages whose handler is running, with how many times JetStream has delivered them. */
    const inHand = new Map<string, { deliveries: number; acked: boolean }>();
    /**
     * The latest messages acked here: a redelivery that was on its way (or waited in the client) when the ack went,
     * or whose ack was lost, is acked again instead of run.
     */
    const recentlyAcked = new Set<string>();
    const rememberAcked = (id: string) => {
      recentlyAcked.add(id);
      if (recentlyAcked.size > RECENTLY_ACKED_KEPT) recentlyAcked.delete(recentlyAcked.values().next().value!);
    };
    const slots = new WorkSlots(options.concurrency);
    const received = pendingCount(this.received, { handler: options.name });
    let stopped = false;
    let current: ConsumerMessages | undefined;
    let wake: (() => void) | undefined;
    const pause = (ms: number) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    const open = async (): Promise<ConsumerMessages> => {
      const consumer = await this.js.consumers.get(definition.name, definition.durable);
      // Heartbeats every second: when the consumer's leader moves to another node of a NATS cluster (its node
      // died), the pull waiting there is gone without a word, and two missed heartbeats are what makes the client
      // pull again. With the defaults (30 s pulls, 15 s heartbeats) the queue stood still ~30 s.
      // A few messages ahead (WORK_QUEUE_PREFETCH): nats.js pulls more as the loop below reads on, and the loop
      // reads on only with a slot free, so a replica busy in every slot holds at most that many it cannot start yet.
      // Pulling `concurrency` ahead, it held up to that many, unheartbeated: an idle replica could not have them, and
      // past the ack wait JetStream gave them to another replica too. One at a time, every message waited for its
      // own pull round trip: at 100 calls keyed inputs waited p99 77-122 ms in the queue (5-28 ms with 4 ahead).
      // Left: busy in every slot for over 2 s (no pull out, so no heartbeats), nats.js's heartbeat monitor queues one
      // more pull a second, each for up to 4, all sent once a slot frees (it was `concurrency` each before).
      return consumer.consume({ max_messages: Math.min(options.concurrency, WORK_QUEUE_PREFETCH), expires: 5_000, idle_heartbeat: 1_000 });
    };
    let messages: ConsumerMessages | undefined = await open();
    const loop = (async () => {
      // A connection closed for good (credentials revoked) makes /healthz fail and the process restart: no retrying.
      while (!stopped && !this.closing && !this.nc.isClosed()) {
        if (!messages) {
          try {
            await this.ensureWorkQueue(definition, options.ackWaitMs, options.maxDeliver);
            messages = await open();
            this.log.info("work queue consumer running again", { handler: options.name, stream: definition.name });
          } catch (error) {
            this.log.warn("work queue unavailable; retrying", { handler: options.name, stream: definition.name, error: errorText(error) });
            await pause(RECREATE_RETRY_MS);
            continue;
          }
          if (stopped || this.closing) {
            messages.stop();
            break;
          }
        }
        current = messages;
        this.consumers.add(messages);
        void this.watchConsumer(messages, definition, options.name);
        try {
          for await (const msg of messages) {
            // This process stalled (a paused or CPU-starved pod) past the ack wait between heartbeats, and JetStream
            // gave a message back to this consumer that its handler still has, or acked just before the redelivery
            // left the server. Running it again would do the work twice (a sentence spoken twice).
            const id = identity(msg);
            const redelivered = msg.info.redeliveryCount > 1;
            const held = redelivered ? inHand.get(id) : undefined;
            if (held || (redelivered && recentlyAcked.has(id))) {
              if (held) {
                held.deliveries = msg.info.redeliveryCount; // the handler at work acks it; this delivery counts
                msg.working();
              } else {
                msg.ack();
              }
              this.redeliveredInHand.inc({ handler: options.name });
              const admitted = this.logThrottle.admit(`in-hand:${options.name}`);
              if (admitted) this.log.warn("work item redelivered while in hand here; not run again", { handler: options.name, subject: msg.subject, deliveries: msg.info.redeliveryCount, ...admitted });
              continue;
            }
            const record = { deliveries: msg.info.redeliveryCount, acked: false };
            inHand.set(id, record);
            const slot = slots.take();
            const task = this.runWorkItem(msg, codec, handler, options, received, slot, record).finally(() => {
              inFlight.delete(task);
              if (inHand.get(id) === record) inHand.delete(id);
              if (record.acked) rememberAcked(id);
              slot.settled();
            });
            inFlight.add(task);
            await slots.free();
          }
        } catch (error) {
          if (!stopped && !this.closing) this.log.warn("work queue consumer failed; starting it again", { handler: options.name, error: errorText(error) });
        }
        this.consumers.delete(messages);
        messages = undefined;
        // Not asked to stop: the server lost the queue or the consumer failed. A short pause keeps a queue that
        // fails at once from spinning this loop.
        if (!stopped && !this.closing) await pause(RESTART_PAUSE_MS);
      }
    })();
    return {
      stop: async () => {
        // Stop pulling new work, then let the work in hand finish (rolling updates lose nothing).
        stopped = true;
        if (current) stopPulling(current);
        wake?.();
        await loop.catch(() => undefined);
        await Promise.allSettled(inFlight);
      },
    };
  }

  /**
   * The client keeps re-pulling after a reconnect, but never recreates a stream or consumer the server no longer
   * has: stop this consumer then, so the consume loop makes them again and starts over.
   */
  private async watchConsumer(messages: ConsumerMessages, definition: WorkQueueDefinition, name: string): Promise<void> {
    try {
      for await (const status of await messages.status()) {
        if (status.type === ConsumerEvents.StreamNotFound || status.type === ConsumerEvents.ConsumerNotFound || status.type === ConsumerEvents.ConsumerDeleted) {
          this.log.warn("work queue lost by NATS; making it again", { handler: name, stream: definition.name, event: status.type });
          messages.stop();
          return;
        }
      }
    } catch {
      /* the consumer stopped */
    }
  }

  private async runWorkItem<T>(
    msg: JsMsg,
    codec: Codec<T>,
    handler: (message: T, item: WorkItem, delivery: Delivery) => Promise<void>,
    { name, maxDeliver }: ConsumeOptions,
    received: PendingCount,
    slot: WorkSlot,
    held: { deliveries: number; acked: boolean },
  ): Promise<void> {
    const message = this.decode(codec, msg, name);
    if (message === undefined) {
      msg.term(); // undecodable: redelivery cannot help
      return;
    }
    received.value++;
    const deliveryCount = msg.info.redeliveryCount;
    // JetStream delivers a message at most maxDeliver times; one handed back after that stays in a work queue for
    // good, where every later message of its call would find it first (bus.firstQueued). It is removed instead.
    // A redelivery that came while the handler ran counts too (see consume).
    const lastDelivery = () => held.deliveries >= maxDeliver;
    const giveUp = (reason: "failed" | "handed_back", error?: unknown) => {
      msg.term();
      this.droppedWorkItems.inc({ handler: name, reason });
      const admitted = this.logThrottle.admit(`given-up:${name}`);
      if (admitted) {
        this.log.error("work item given up on at its last delivery", { handler: name, subject: msg.subject, deliveries: held.deliveries, reason, ...(error ? { error: errorText(error) } : {}), ...admitted });
      }
    };
    const item: WorkItem = {
      subject: msg.subject,
      deliveryCount,
      streamSeq: msg.seq,
      ack: () => {
        held.acked = true;
        msg.ack();
      },
      nak: (delayMs) => (lastDelivery() ? giveUp("handed_back") : msg.nak(delayMs)),
      working: () => msg.working(),
      waiting: () => slot.waiting(),
    };
    try {
      await handler(message, item, { subject: msg.subject, callId: callIdOf(msg) });
    } catch (error) {
      this.handlerErrors.inc({ handler: name });
      if (lastDelivery()) return giveUp("failed", error);
      const admitted = this.logThrottle.admit(`handler:${name}`);
      if (admitted) this.log.error("work item failed; it will be redelivered", { handler: name, subject: msg.subject, error: errorText(error), ...admitted });
      msg.nak(250);
    }
  }

  /**
   * The first message still in work queue `stream` on `subject`, from stream sequence `fromSeq` on (a work queue
   * keeps a message until a worker acks it), or undefined when there is none.
   */
  async firstQueued(stream: string, subject: string, fromSeq = 1): Promise<{ seq: number; data: Uint8Array } | undefined> {
    // A short timeout: callers go on without the answer rather than wait out a NATS outage (default 5 s).
    this.jsm ??= await this.nc.jetstreamManager({ timeout: FIRST_QUEUED_TIMEOUT_MS });
    try {
      // MSG.GET with next_by_subj (NATS 2.9+); nats.js types only the direct-get form of it.
      const found = await this.jsm.streams.getMessage(stream, { seq: fromSeq, next_by_subj: subject } as unknown as { seq: number });
      return { seq: found.seq, data: found.data };
    } catch (error) {
      if ((error as { api_error?: { err_code?: number } }).api_error?.err_code === NO_MESSAGE_FOUND) return undefined;
      throw error;
    }
  }

  private jsm: JetStreamManager | undefined;

  /**
   * Stops taking messages on every subscription, delivers those already sent, then closes. Work-queue handlers still
   * running are not waited for (their acks would fail once closed): stop each consumer first (`consume().stop()`).
   */
  async drain(): Promise<void> {
    this.closing = true;
    for (const messages of this.consumers) stopPulling(messages);
    if (!this.nc.isClosed()) await this.nc.drain().catch(() => this.nc.close());
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const messages of this.consumers) messages.stop();
    if (!this.nc.isClosed()) await this.nc.close();
  }
}

/**
 * Ends a pull consumer without losing what the server already sent it: UNSUB, then a round trip, so every message
 * sent before the UNSUB reaches the iterator before it ends. `ConsumerMessages.stop()` unsubscribes at once and drops
 * the messages still on the wire, which the server then holds as delivered until their ack wait runs out (a turn
 * two seconds late in every rolling update). nats.js drains only whole connections or plain subscriptions, so this
 * reaches the consumer's own subscription.
 */
function stopPulling(messages: ConsumerMessages): void {
  const subscription = (messages as unknown as { sub?: Subscription }).sub;
  if (!subscription || subscription.isClosed()) return messages.stop();
  if (subscription.isDraining()) return;
  // When the drain has run, nats.js ends the iterator after the messages it holds (consumer.js: sub.closed while
  // draining); stop() is the fallback when the connection is gone.
  subscription.drain().catch(() => messages.stop());
}

interface WorkSlot {
  waiting(): void;
  settled(): void;
}

/**
 * A consumer's concurrency: `limit` items counted at once, plus up to `limit` more that said they only wait for
 * other work (WorkItem.waiting), which give their slot back.
 */
class WorkSlots {
  private counted = 0;
  private waitingItems = 0;
  private onFree: (() => void) | undefined;

  constructor(private readonly limit: number) {}

  take(): WorkSlot {
    this.counted++;
    let state: "counted" | "waiting" | "done" = "counted";
    return {
      waiting: () => {
        if (state !== "counted" || this.waitingItems >= this.limit) return;
        state = "waiting";
        this.waitingItems++;
        this.release();
      },
      settled: () => {
        if (state === "counted") this.release();
        else if (state === "waiting") this.waitingItems--;
        state = "done";
      },
    };
  }

  /** Resolves once fewer than `limit` items count. */
  async free(): Promise<void> {
    while (this.counted >= this.limit) await new Promise<void>((resolve) => (this.onFree = resolve));
  }

  private release(): void {
    this.counted--;
    const wake = this.onFree;
    this.onFree = undefined;
    wake?.();
  }
}

/** A delivery that reads the subject and the headers only when the handler asks (most never do). */
class LazyDelivery implements Delivery {
  constructor(private readonly msg: Msg) {}

  get subject(): string {
    return this.msg.subject;
  }

  get callId(): string | undefined {
    return callIdOf(this.msg);
  }
}

function callIdOf(msg: Msg | JsMsg): string | undefined {
  return msg.headers?.get(headerNames.callId) || callIdOfSubject(msg.subject);
}

function isPromise(value: unknown): value is Promise<void> {
  return typeof (value as Promise<void> | undefined)?.then === "function";
}

export interface RequestOptions {
  /**
   * Ask the server for a receipt and send the request again when none came within this many ms, or when the server
   * that took it stops confirming it is at work (at most `maxSends` times in all). Only for requests that may run
   * twice: their handlers must deduplicate (tools do, by toolCallId).
   */
  receiptMs?: number;
  maxSends?: number;
}

/** What a `serve` handler returns for a request meant for another replica: it sends no answer. */
export const NOT_MINE: unique symbol = Symbol("not mine");

const FIRST_QUEUED_TIMEOUT_MS = 1_000;
/** JetStream's error code for a message get that found nothing. */
const NO_MESSAGE_FOUND = 10037;

const RECEIPT_WANTED = "wanted";
/** A server working on a request confirms it this often... */
const RECEIPT_REPEAT_MS = 500;
/** ...and a requester that hears nothing from it for this long sends the request again (it died or froze). */
const TAKER_SILENT_MS = 4 * RECEIPT_REPEAT_MS;
const RECEIPT_SENT = "sent";
const EMPTY = new Uint8Array(0);
const receiptHeaders = (() => {
  const h = natsHeaders();
  h.set(headerNames.receipt, RECEIPT_SENT);
  return h;
})();

function callHeaders(callId: string | undefined): MsgHdrs | undefined {
  if (!callId) return undefined;
  const h = natsHeaders();
  h.set(headerNames.callId, callId);
  return h;
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** NATS 2.10+'s answer to creating a consumer that exists with other settings (JSConsumerAlreadyExists, 10148). */
function consumerExists(error: unknown): boolean {
  const apiError = (error as { api_error?: { err_code?: number } }).api_error;
  return apiError?.err_code === 10148 || /consumer already exists/i.test(errorText(error));
}
