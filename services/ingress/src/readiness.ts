// Ingress is ready only when a call could actually be served: besides NATS and Redis (checked by the kit), at
// least one ready replica of every stage must answer its readiness ping.
import { errorText, subjects, type Bus, type Logger } from "@voicebot/bus";
import { ReadinessRequest, ReadinessResponse } from "@voicebot/proto";

const PING_TIMEOUT_MS = 500;

export class ReadinessProbe {
  private readonly lastOk = new Map<string, number>();
  private readonly available = new Map<string, boolean>();
  private timer: NodeJS.Timeout | undefined;
  private probing = false;

  constructor(
    private readonly bus: Bus,
    private readonly services: readonly string[],
    private readonly intervalMs: number,
    private readonly from: string,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    if (this.services.length === 0 || this.timer) return;
    void this.probe();
    this.timer = setInterval(() => void this.probe(), this.intervalMs);
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The first required service with no successful ping in the last few probe rounds. */
  notReadyReason(): string | undefined {
    const maxAge = this.intervalMs * 3;
    for (const service of this.services) {
      const ok = this.lastOk.get(service);
      if (ok === undefined || this.now() - ok > maxAge) return `no ready ${service} replica`;
    }
    return undefined;
  }

  private async probe(): Promise<void> {
    if (this.probing) return; // a slow round must not pile up requests
    this.probing = true;
    try {
      await Promise.all(this.services.map((service) => this.ping(service)));
    } finally {
      this.probing = false;
    }
  }

  private async ping(service: string): Promise<void> {
    let ok = false;
    let error = "";
    try {
      await this.bus.request(subjects.ping(service), ReadinessRequest, ReadinessRequest.create({ from: this.from }), ReadinessResponse, PING_TIMEOUT_MS);
      this.lastOk.set(service, this.now());
      ok = true;
    } catch (e) {
      error = errorText(e);
    }
    // Log transitions only, not every probe.
    if (this.available.get(service) !== ok) {
      this.available.set(service, ok);
      // `stage`, not `service`: that field names the process logging.
      if (ok) this.log.info("required service answers readiness pings", { stage: service });
      else this.log.warn("required service does not answer readiness pings", { stage: service, error });
    }
  }
}
