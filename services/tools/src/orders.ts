import { readFile } from "node:fs/promises";

/** One order as a source knows it. Dates are calendar days (YYYY-MM-DD). */
export interface Order {
  orderNumber: string;
  status: string;
  carrier?: string;
  trackingNumber?: string;
  etaDate?: string;
  deliveredDate?: string;
  items?: string[];
}

/** Where lookup_order finds orders. The demo reads a JSON file; a database source implements the same. */
export interface OrderSource {
  /** The order with this normalized number (digits only), or undefined. */
  findOrder(orderNumber: string, signal?: AbortSignal): Promise<Order | undefined>;
  close?(): Promise<void>;
}

const DIGIT_WORDS: Record<string, string> = {
  zero: "0",
  oh: "0",
  o: "0",
  one: "1",
  two: "2",
  three: "3",
  four: "4",
  five: "5",
  six: "6",
  seven: "7",
  eight: "8",
  nine: "9",
};

/**
 * Turns what a caller said or keyed ("#12 345", "one two three", "12-345#") into the digits of an order number.
 * Returns "" when nothing digit-like is in it.
 */
export function normalizeOrderNumber(raw: string): string {
  const words = raw.toLowerCase().split(/[^a-z0-9]+/).filter(Boolean);
  let digits = "";
  for (const word of words) {
    if (/^\d+$/.test(word)) digits += word;
    else if (DIGIT_WORDS[word]) digits += DIGIT_WORDS[word];
    else digits += word.replace(/\D/g, ""); // "a12b" keeps 12; plain words add nothing
  }
  return digits;
}

interface OrderFileEntry {
  order_number: string;
  status: string;
  carrier?: string;
  tracking_number?: string;
  eta?: string;
  eta_in_days?: number;
  delivered_on?: string;
  delivered_days_ago?: number;
  items?: string[];
}

const DATE = /^\d{4}-\d{2}-\d{2}$/;

/** Orders from a JSON file (`{"orders":[...]}`), read once; relative dates are resolved at lookup time. */
export class JsonFileOrderSource implements OrderSource {
  private constructor(
    private readonly orders: Map<string, OrderFileEntry>,
    private readonly now: () => Date,
  ) {}

  static async load(file: string, now: () => Date = () => new Date()): Promise<JsonFileOrderSource> {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(file, "utf8"));
    } catch (error) {
      throw new Error(`orders file ${file}: ${error instanceof Error ? error.message : String(error)}`);
    }
    return new JsonFileOrderSource(parseOrders(raw, file), now);
  }

  static fromEntries(entries: unknown, now: () => Date = () => new Date()): JsonFileOrderSource {
    return new JsonFileOrderSource(parseOrders({ orders: entries }, "orders"), now);
  }

  get size(): number {
    return this.orders.size;
  }

  /** Every order, with relative dates resolved for today (to seed a database from the demo file). */
  async all(): Promise<Order[]> {
    const orders: Order[] = [];
    for (const number of this.orders.keys()) orders.push((await this.findOrder(number))!);
    return orders;
  }

  async findOrder(orderNumber: string): Promise<Order | undefined> {
    const entry = this.orders.get(orderNumber);
    if (!entry) return undefined;
    const today = this.now();
    return {
      orderNumber: entry.order_number,
      status: entry.status,
      carrier: entry.carrier,
      trackingNumber: entry.tracking_number,
      etaDate: entry.eta ?? (entry.eta_in_days !== undefined ? addDays(today, entry.eta_in_days) : undefined),
      deliveredDate:
        entry.delivered_on ?? (entry.delivered_days_ago !== undefined ? addDays(today, -entry.delivered_days_ago) : undefined),
      items: entry.items,
    };
  }
}

function parseOrders(raw: unknown, file: string): Map<string, OrderFileEntry> {
  const problems: string[] = [];
  const orders = new Map<string, OrderFileEntry>();
  const list = (raw as { orders?: unknown } | null)?.orders;
  if (!Array.isArray(list)) throw new Error(`orders file ${file}: expected an object with an "orders" array`);
  list.forEach((item, i) => {
    const where = `orders[${i}]`;
    if (!item || typeof item !== "object") return void problems.push(`${where}: must be an object`);
    const e = item as Record<string, unknown>;
    const number = typeof e.order_number === "string" || typeof e.order_number === "number" ? normalizeOrderNumber(String(e.order_number)) : "";
    if (!number) problems.push(`${where}.order_number: must be a number or a string of digits`);
    if (typeof e.status !== "string" || !e.status) problems.push(`${where}.status: must be a non-empty string`);
    for (const key of ["carrier", "tracking_number"] as const) {
      if (e[key] !== undefined && typeof e[key] !== "string") problems.push(`${where}.${key}: must be a string`);
    }
    for (const key of ["eta", "delivered_on"] as const) {
      if (e[key] !== undefined && (typeof e[key] !== "string" || spokenDate(e[key] as string) === undefined)) {
        problems.push(`${where}.${key}: must be a calendar date YYYY-MM-DD`);
      }
    }
    for (const key of ["eta_in_days", "delivered_days_ago"] as const) {
      if (e[key] !== undefined && !Number.isInteger(e[key])) problems.push(`${where}.${key}: must be an integer`);
    }
    if (e.items !== undefined && !(Array.isArray(e.items) && e.items.every((x) => typeof x === "string"))) {
      problems.push(`${where}.items: must be a list of strings`);
    }
    if (number && orders.has(number)) problems.push(`${where}.order_number: ${number} appears twice`);
    orders.set(number, { ...(e as unknown as OrderFileEntry), order_number: number });
  });
  if (problems.length > 0) throw new Error(`orders file ${file}: ${problems.join("; ")}`);
  return orders;
}

function addDays(from: Date, days: number): string {
  const d = new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate() + days));
  return d.toISOString().slice(0, 10);
}

const SPOKEN_DATE = new Intl.DateTimeFormat("en-US", { weekday: "long", month: "long", day: "numeric", timeZone: "UTC" });

/** "2025-03-06" -> "Thursday, March 6", for reading a date to the caller; undefined for no calendar date ("2025-02-30"). */
export function spokenDate(date: string): string | undefined {
  if (!DATE.test(date)) return undefined;
  const day = new Date(`${date}T00:00:00Z`);
  if (Number.isNaN(day.getTime()) || day.toISOString().slice(0, 10) !== date) return undefined;
  return SPOKEN_DATE.format(day);
}
