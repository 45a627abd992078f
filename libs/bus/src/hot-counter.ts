import { Counter, type CounterConfiguration, type LabelValues } from "prom-client";

/** A count kept as a plain number on a hot path: add to `value`; the counter takes it in when it is read. */
export interface PendingCount {
  value: number;
}

interface Pending {
  labels: LabelValues<string> | undefined;
  count: PendingCount;
}

const pendingByCounter = new WeakMap<Counter<string>, Map<string, Pending>>();

/**
 * A prom-client counter for per-message or per-frame counts. prom-client hashes the label values on every inc()
 * (on a labels() child too): at thousands of messages a second that was ~3 % of a service's CPU. Hot paths add to
 * a PendingCount (pendingCount) instead, and the counter adds those in before every read. inc() still works for
 * rare events.
 */
export function hotCounter<L extends string = string>(config: Omit<CounterConfiguration<L>, "collect">): Counter<L> {
  return new Counter<L>({
    ...config,
    collect() {
      addPendingCounts(this as Counter<string>);
    },
  });
}

/**
 * The pending count of a hotCounter for one label set (none for an unlabelled counter). Look it up once per
 * subscription, call or stream, not per message: the lookup is the cost this avoids.
 */
export function pendingCount<L extends string>(counter: Counter<L>, labels?: LabelValues<L>): PendingCount {
  const key = counter as Counter<string>;
  let byLabels = pendingByCounter.get(key);
  if (!byLabels) pendingByCounter.set(key, (byLabels = new Map()));
  const labelsKey = labels === undefined ? "" : JSON.stringify(labels);
  let pending = byLabels.get(labelsKey);
  if (!pending) byLabels.set(labelsKey, (pending = { labels, count: { value: 0 } }));
  return pending.count;
}

/** Only label sets that were counted appear, as with inc() per event. */
function addPendingCounts(counter: Counter<string>): void {
  for (const { labels, count } of pendingByCounter.get(counter)?.values() ?? []) {
    if (count.value === 0) continue;
    if (labels) counter.inc(labels, count.value);
    else counter.inc(count.value);
    count.value = 0;
  }
}
