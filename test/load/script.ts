// What every simulated caller does, and the names shared by the load generator, the fakes and the bench.

export const OPENAI_KEY = "load-openai-key";
export const ELEVENLABS_KEY = "load-elevenlabs-key";

/** What the fake recognizer answers for every utterance (the caller always says this). */
export const TRANSCRIPT = "order status";

/**
 * Each call slot has its own order number (100000 + slot), so the bot's answer "Order 1 0 0 0 4 2 has shipped..."
 * is the one sentence the fake TTS is asked for per keypad turn (prompts come from the tts cache) and names the
 * call it belongs to.
 */
const ORDER_BASE = 100_000;

export function orderNumber(slot: number): string {
  return String(ORDER_BASE + slot);
}

/** The slot of "Order 1 0 0 0 4 2 has shipped ..." (the order number spelled digit by digit), or -1. */
export function slotOfOrderText(text: string): number {
  const match = /order ((?:\d ?){6,7})/i.exec(text);
  if (!match) return -1;
  const slot = Number(match[1].replace(/\s+/g, "")) - ORDER_BASE;
  return slot >= 0 ? slot : -1;
}

/** The orders file the tools service reads: one shipped order per slot. */
export function ordersFile(slots: number): string {
  const orders = Array.from({ length: slots }, (_, slot) => ({
    order_number: orderNumber(slot),
    status: "shipped",
    carrier: "UPS",
    eta_in_days: 2,
    items: ["wireless headphones"],
  }));
  return JSON.stringify({ orders });
}

export type StepKind = "speech" | "keys" | "key";
export interface Step {
  kind: StepKind;
  /** Keys to press (keys and key steps). */
  digits?: string;
}

/**
 * The loop every caller runs after the greeting, against the order-line agent:
 * say "order status" (menu -> ask_order), key the order number and # (lookup_order, the answer, "anything else?"),
 * press 1 (-> ask_order), key the number again, and around. A call may also start at step 2 (1 works in the menu too).
 */
export function callScript(slot: number): Step[] {
  const entry = `${orderNumber(slot)}#`;
  return [
    { kind: "speech" },
    { kind: "keys", digits: entry },
    { kind: "key", digits: "1" },
    { kind: "keys", digits: entry },
  ];
}
