import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { validateAgent } from "../agents/config.js";
import { parseAgentText } from "../agents/load.js";
import { ScriptedEngine, type ScriptedState } from "./scripted.js";
import { normalizeText, renderTemplate, spell, splitSentences, spokenDigits, spokenKey, spokenNumbers } from "./text.js";
import type { EngineInput, RecognitionHints, ToolOutcome, TurnIO } from "./types.js";

const orderLineFile = fileURLToPath(new URL("../../agents/order-line.yaml", import.meta.url));
const orderLine = validateAgent(parseAgentText(readFileSync(orderLineFile, "utf8"), orderLineFile), "order-line");

type Event =
  | { type: "say"; text: string; cacheable: boolean }
  | { type: "tool"; name: string; args: Record<string, unknown> }
  | { type: "heard"; text: string; source: string }
  | { type: "hints"; hints: RecognitionHints };

type ToolFn = (name: string, args: Record<string, unknown>) => ToolOutcome;

const orders: Record<string, unknown> = {
  "12345": { found: true, order_number: "12345", status: "shipped", carrier: "UPS", eta_text: "Thursday, March 6" },
  "67890": { found: true, order_number: "67890", status: "processing" },
  "55555": { found: true, order_number: "55555", status: "delivered", delivered_text: "Monday, March 3" },
  "13579": { found: true, order_number: "13579", status: "returned" },
};

const demoTools: ToolFn = (name, args) => {
  if (name === "lookup_order") {
    const n = String(args.order_number);
    return { ok: true, result: orders[n] ?? { found: false, order_number: n }, ms: 3 };
  }
  return { ok: true, result: { action: name }, ms: 1 };
};

/** Drives the engine through inputs with a recording TurnIO; no I/O. */
class Conversation {
  state: ScriptedState;
  done = false;
  events: Event[] = [];
  outcome = "";
  /** The wake the last turn asked for. */
  wake: { afterMs: number; token: string } | undefined;

  constructor(
    private readonly tools: ToolFn = demoTools,
    readonly engine = new ScriptedEngine(orderLine),
  ) {
    this.state = engine.initialState();
  }

  async send(input: EngineInput): Promise<Event[]> {
    const events: Event[] = [];
    const io: TurnIO = {
      heard: (e) => void events.push({ type: "heard", text: e.text, source: e.source }),
      say: (text, options) => {
        events.push({ type: "say", text, cacheable: options?.cacheable === true });
        return "t1";
      },
      callTool: async (name, args) => {
        events.push({ type: "tool", name, args });
        return this.tools(name, args);
      },
      setHints: (hints) => void events.push({ type: "hints", hints }),
    };
    const result = await this.engine.turn(input, this.state, io);
    this.state = result.state;
    this.done = result.done === true;
    this.outcome = result.outcome;
    this.wake = result.wake;
    this.events.push(...events);
    return events;
  }

  start = () => this.send({ kind: "start" });
  key = (digit: string) => this.send({ kind: "keypad", digit, atMs: 1 });
  speak = (text: string, confidence = 0.9) => this.send({ kind: "speech", text, confidence });
  async keys(digits: string): Promise<Event[]> {
    const all: Event[] = [];
    for (const d of digits) all.push(...(await this.key(d)));
    return all;
  }
}

const said = (events: Event[]) => events.filter((e) => e.type === "say").map((e) => (e as { text: string }).text).join(" ");
const tools = (events: Event[]) => events.filter((e) => e.type === "tool");
const hints = (events: Event[]) => events.filter((e) => e.type === "hints").map((e) => (e as { hints: RecognitionHints }).hints);

const GREETING =
  "Thanks for calling the demo shop. To check an order, say order status or press 1. To talk to an agent, say agent or press 0.";
const ASK = "Please say or key in your order number, then press pound.";
const ANYTHING_ELSE = "Is there anything else? Say order status, agent, or goodbye.";

describe("scripted engine: order line", () => {
  it("greets, enters the menu and sets phrase hints", async () => {
    const c = new Conversation();
    const events = await c.start();
    expect(said(events)).toBe(GREETING);
    expect(events.filter((e) => e.type === "say").every((e) => (e as { cacheable: boolean }).cacheable)).toBe(true);
    const [menuHints] = hints(events);
    expect(menuHints.mode).toBe("phrases");
    expect(menuHints.phrases).toEqual(expect.arrayContaining(["order status", "agent", "goodbye", "one", "zero"]));
    expect(c.state.state).toBe("menu");
    expect(c.outcome).toBe("greeting");
  });

  it("passes the agent's complete-answer silence to the recognizer, and a state's own over it", async () => {
    const raw = parseAgentText(readFileSync(orderLineFile, "utf8"), orderLineFile) as Record<string, any>;
    raw.endpointing = { completeSilenceMs: 250 };
    raw.states.ask_order.hints = { ...raw.states.ask_order.hints, completeSilenceMs: 0 };
    const c = new Conversation(demoTools, new ScriptedEngine(validateAgent(raw, "order-line")));
    expect(hints(await c.start())[0]).toMatchObject({ mode: "phrases", completeSilenceMs: 250 });
    expect(hints(await c.key("1"))[0]).toMatchObject({ mode: "digits", completeSilenceMs: 0 });
    // The order line as shipped leaves it to the asr.
    expect(hints(await new Conversation().start())[0].completeSilenceMs).toBeUndefined();
  });

  it("1 then 12345# looks the order up and reads the status back", async () => {
    const c = new Conversation();
    await c.start();
    const one = await c.key("1");
    expect(one[0]).toEqual({ type: "heard", text: "1", source: "keypad" });
    expect(said(one)).toBe(ASK);
    expect(hints(one)[0]).toMatchObject({ mode: "digits", minSilenceMs: 1000, maxSilenceMs: 2500 });

    const typing = await c.keys("12345");
    expect(typing).toEqual([]); // digits are gathered silently
    expect(c.outcome).toBe("collecting");
    const pound = await c.key("#");
    expect(pound[0]).toEqual({ type: "heard", text: "12345#", source: "keypad" });
    expect(tools(pound)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    // The tool runs before the reply that uses its result.
    expect(pound.findIndex((e) => e.type === "tool")).toBeLessThan(pound.findIndex((e) => e.type === "say"));
    expect(said(pound)).toBe(
      `Order 1 2 3 4 5 has shipped with UPS and should arrive on Thursday, March 6. ${ANYTHING_ELSE}`,
    );
    const reply = pound.filter((e) => e.type === "say") as Array<{ text: string; cacheable: boolean }>;
    expect(reply.map((e) => e.cacheable)).toEqual([false, true]);
    expect(c.state.slots.order_number).toBe("12345");
    expect(c.state.state).toBe("anything_else");
    expect(c.outcome).toBe("slot");
  });

  it("accepts a spoken order number", async () => {
    const c = new Conversation();
    await c.start();
    expect(said(await c.speak("order status"))).toBe(ASK);
    const events = await c.speak("one two three four five");
    expect(events[0]).toMatchObject({ type: "heard", text: "one two three four five", source: "speech" });
    expect(tools(events)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(events)).toContain("has shipped");
  });

  it("reads other statuses and falls back to a generic line", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    expect(said(await c.keys("55555#"))).toContain("was delivered on Monday, March 3");
    await c.speak("order status");
    expect(said(await c.speak("67890"))).toContain("hasn't shipped yet");
    await c.key("1");
    expect(said(await c.keys("13579#"))).toContain("The status of order 1 3 5 7 9 is returned.");
  });

  it("says when an order is not found and asks again", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    const events = await c.keys("99999#");
    expect(said(events)).toBe(`Sorry, I couldn't find order 9 9 9 9 9. ${ASK}`);
    expect(c.state.state).toBe("ask_order");
    expect(hints(events)[0].mode).toBe("digits");
  });

  it("apologizes when the lookup fails", async () => {
    const c = new Conversation(() => ({ ok: false, errorCode: "timeout", errorMessage: "slow", ms: 3000 }));
    await c.start();
    await c.key("1");
    const events = await c.keys("12345#");
    expect(said(events)).toBe(`Sorry, I can't look up orders right now. Please try again later, or ask for an agent. ${ANYTHING_ELSE}`);
  });

  it("0 transfers after saying so", async () => {
    const c = new Conversation();
    await c.start();
    const events = await c.key("0");
    expect(events.map((e) => e.type)).toEqual(["heard", "say", "tool"]);
    expect(said(events)).toBe("Transferring you to an agent now.");
    expect(tools(events)[0]).toMatchObject({ name: "transfer_to_human" });
    expect(c.done).toBe(true);
  });

  it.each(["agent", "I want to talk to a person", "representative please", "Human!"])("speech %j transfers", async (text) => {
    const c = new Conversation();
    await c.start();
    const events = await c.speak(text);
    expect(tools(events)[0]).toMatchObject({ name: "transfer_to_human" });
  });

  it.each([["9"], ["goodbye"], ["that's all"], ["bye"]])("%j says goodbye and ends the call", async (input) => {
    const c = new Conversation();
    await c.start();
    const events = input === "9" ? await c.key("9") : await c.speak(input);
    expect(said(events)).toBe("Thanks for calling. Goodbye.");
    expect(events.filter((e) => e.type !== "heard").map((e) => e.type)).toEqual(["say", "tool"]);
    expect(tools(events)[0]).toMatchObject({ name: "end_call" });
    expect(c.done).toBe(true);
  });

  it("keeps the conversation going when the transfer fails", async () => {
    const c = new Conversation((name, args) => (name === "transfer_to_human" ? { ok: false, errorCode: "unavailable", errorMessage: "", ms: 1 } : demoTools(name, args)));
    await c.start();
    const events = await c.key("0");
    expect(said(events)).toBe(`Transferring you to an agent now. Sorry, I couldn't reach an agent right now. Say order status, or goodbye. ${ANYTHING_ELSE}`);
    expect(c.done).toBe(false);
    expect(c.state.state).toBe("anything_else");
  });

  it("reprompts unrecognized input (never silence) and offers an agent after the maximum", async () => {
    const c = new Conversation();
    await c.start();
    const empty = await c.speak("");
    expect(said(empty)).toMatch(/^Sorry, I didn't catch that\./);
    expect(c.outcome).toBe("reprompt");
    expect(said(await c.key("5"))).toMatch(/^Sorry/);
    const third = await c.speak("blah blah");
    expect(said(third)).toContain("Would you like to talk to an agent?");
    expect(c.outcome).toBe("max_reprompts");
    expect(c.state.state).toBe("offer_agent");
    const yes = await c.speak("yes please");
    expect(tools(yes)[0]).toMatchObject({ name: "transfer_to_human" });
  });

  it("transfers when the caller still cannot be understood in the offer", async () => {
    const c = new Conversation();
    await c.start();
    for (let i = 0; i < 3; i++) await c.speak("");
    expect(c.state.state).toBe("offer_agent");
    expect(said(await c.speak(""))).toBe("Would you like to talk to an agent? Say yes or press 0.");
    const last = await c.speak("");
    expect(said(last)).toContain("Transferring you to an agent now.");
    expect(tools(last)[0]).toMatchObject({ name: "transfer_to_human" });
  });

  it("treats NoInput like an unrecognized input", async () => {
    const c = new Conversation();
    await c.start();
    expect(said(await c.send({ kind: "noInput" }))).toMatch(/^Sorry/);
  });

  it("names the no-input wait of the state the caller is in: the state's own, else the agent's", async () => {
    const c = new Conversation();
    await c.start();
    expect(c.engine.noInputMs(c.state)).toBeUndefined(); // menu: none, and the shipped agent sets none
    await c.key("1");
    expect(c.state.state).toBe("ask_order");
    expect(c.engine.noInputMs(c.state)).toBe(15_000); // time to find the order number
    const withDefault = new ScriptedEngine(validateAgent({ ...parseAgentText(readFileSync(orderLineFile, "utf8"), orderLineFile), noInputMs: 5_000 }, "x"));
    expect(withDefault.noInputMs({ ...c.state, state: "menu" })).toBe(5_000);
    expect(withDefault.noInputMs(c.state)).toBe(15_000);
    expect(withDefault.noInputMs(withDefault.initialState())).toBe(5_000); // before the greeting: the start state's
  });

  it("leaves the agent's voicemail message on an answering machine and ends the call; an agent without one just hangs up", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1"); // mid-conversation: whatever state, the machine gets the message
    const events = await c.send({ kind: "voicemail" });
    expect(said(events)).toBe("Hello, this is the demo shop calling about your order. Please call us back when it suits you. Goodbye.");
    expect(tools(events)).toEqual([{ type: "tool", name: "end_call", args: { reason: "left a voicemail message" } }]);
    expect(c.done).toBe(true);
    expect(c.outcome).toBe("voicemail");

    const raw = parseAgentText(readFileSync(orderLineFile, "utf8"), orderLineFile) as Record<string, unknown>;
    delete raw.voicemail;
    const plain = new Conversation(demoTools, new ScriptedEngine(validateAgent(raw, "x")));
    await plain.start();
    const hangUp = await plain.send({ kind: "voicemail" });
    expect(said(hangUp)).toBe("");
    expect(tools(hangUp)).toEqual([{ type: "tool", name: "end_call", args: { reason: "answering machine" } }]);
    expect(plain.done).toBe(true);

    // end_call failed: the call is not over (nothing would hang it up), so the conversation goes on.
    const failing = new Conversation((name, args) => (name === "end_call" ? { ok: false, errorCode: "failed", errorMessage: "tools down", ms: 1 } : demoTools(name, args)));
    await failing.start();
    await failing.send({ kind: "voicemail" });
    expect(failing.done).toBe(false);
  });

  it("resets the reprompt count after a recognized input", async () => {
    const c = new Conversation();
    await c.start();
    await c.speak("");
    await c.speak("");
    expect(said(await c.speak("order status"))).toBe(ASK);
    expect(c.state.reprompts).toBe(0);
  });

  it("rejects too-short entries; a full-length entry waits a pause for its pound, which is then not a stray key", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    const tooShort = await c.keys("12#");
    expect(said(tooShort)).toMatch(/doesn't look like an order number/);
    expect(tools(tooShort)).toEqual([]);
    expect(c.wake).toBeUndefined();
    // maxLength 12: the twelfth key asks for a wake instead of answering at once...
    expect(await c.keys("123456789012")).toEqual([]);
    expect(c.wake).toEqual({ afterMs: 2_000, token: expect.any(String) });
    const pound = await c.key("#");
    expect(pound.find((e) => e.type === "heard")).toEqual({ type: "heard", text: "123456789012#", source: "keypad" });
    expect(tools(pound)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "123456789012" } }]);
    // ...and without the pound the wake takes the entry (not found: still asking), even after a transcript of
    // nothing (a key's tone) came meanwhile; a wake from before a later key is stale.
    await c.keys("123456789012");
    const early = c.wake!;
    expect(said(await c.key("*"))).toMatch(/^Sorry/); // ends that entry
    await c.keys("123456789012");
    const wake = c.wake!;
    expect(wake.token).not.toBe(early.token);
    expect(await c.speak("", 0)).toEqual([]);
    expect(await c.send({ kind: "wake", token: early.token })).toEqual([]);
    expect(c.outcome).toBe("wake_ignored");
    const woken = await c.send({ kind: "wake", token: wake.token });
    expect(woken.find((e) => e.type === "heard")).toEqual({ type: "heard", text: "123456789012", source: "keypad" });
    expect(tools(woken)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "123456789012" } }]);
    // A thirteenth key makes it no order number.
    const tooLong = await c.keys("1234567890123");
    expect(said(tooLong)).toMatch(/doesn't look like an order number/);
    expect(tools(tooLong)).toEqual([]);
  });

  it("an empty transcript while keys are pressed (a key's tone) leaves the entry going; otherwise it is a miss", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    await c.keys("123");
    expect(said(await c.speak("", 0))).toBe("");
    expect(c.outcome).toBe("keying");
    const rest = await c.keys("45#");
    expect(tools(rest)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    await c.key("1");
    expect(said(await c.speak("", 0))).toMatch(/^Sorry/);
  });

  it("understands agent and goodbye while collecting digits, and * drops a half entry", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    await c.keys("12");
    const star = await c.key("*");
    expect(star[0]).toEqual({ type: "heard", text: "12*", source: "keypad" });
    expect(said(star)).toMatch(/^Sorry/);
    expect(c.state.keypad).toBe("");
    const agent = await c.speak("agent");
    expect(tools(agent)[0]).toMatchObject({ name: "transfer_to_human" });
  });

  it("prefers the longer phrase and the state's own intents", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    await c.keys("12345#");
    const events = await c.speak("no, I want an agent");
    expect(tools(events)[0]).toMatchObject({ name: "transfer_to_human" });
    const d = new Conversation();
    await d.start();
    await d.key("1");
    await d.keys("12345#");
    const no = await d.speak("No thanks.");
    expect(tools(no)[0]).toMatchObject({ name: "end_call" });
  });

  it("never changes the state it was given", async () => {
    const c = new Conversation();
    await c.start();
    const before = structuredClone(c.state);
    const frozen = c.state;
    await c.engine.turn({ kind: "keypad", digit: "1", atMs: 1 }, frozen, {
      heard() {},
      say: () => "",
      callTool: async () => ({ ok: true, result: null, ms: 0 }),
      setHints() {},
    });
    expect(frozen).toEqual(before);
  });

  it("continues from the start state when the saved state is unknown", async () => {
    const c = new Conversation();
    c.state = { state: "removed", reprompts: 0, slots: {}, keypad: "" };
    const events = await c.key("1");
    expect(said(events)).toBe(ASK);
  });
});

describe("scripted engine: confirming uncertain digits", () => {
  const READBACK = "I heard 1 2 3 4 5. Is that right? Say yes, or key in the number.";

  async function asked(): Promise<Conversation> {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    const events = await c.speak("one two three four five", 0.6);
    expect(said(events)).toBe(READBACK);
    expect(events.find((e) => e.type === "say")).toMatchObject({ cacheable: false });
    expect(tools(events)).toEqual([]);
    // Not ended early after "no": a corrected number may follow a pause.
    expect(hints(events)[0]).toMatchObject({ mode: "phrases", phrases: expect.arrayContaining(["yes", "no", "five"]), minSilenceMs: 1000, completeSilenceMs: 0 });
    expect(c.outcome).toBe("confirm_asked");
    return c;
  }

  it("reads a low-confidence number back and looks it up after a yes", async () => {
    const c = await asked();
    const yes = await c.speak("yes that's right", 0.7);
    expect(tools(yes)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(yes)).toContain("has shipped");
    expect(c.outcome).toBe("confirmed");
    expect(c.state.confirm).toBeUndefined();
  });

  it('asks again after a "no" and takes the corrected number', async () => {
    const c = await asked();
    const no = await c.speak("no", 0.9);
    expect(said(no)).toBe("Sorry about that. Please say or key in the number again.");
    expect(hints(no)[0].mode).toBe("digits");
    expect(c.outcome).toBe("confirm_rejected");
    const again = await c.speak("five five five five five", 0.95);
    expect(tools(again)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "55555" } }]);
  });

  it('takes "no, <number>" said clearly as the correction, and reads back an unclear one', async () => {
    const c = await asked();
    const corrected = await c.speak("no, six seven eight nine zero", 0.92);
    expect(tools(corrected)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "67890" } }]);
    expect(c.outcome).toBe("corrected");
    const d = await asked();
    expect(said(await d.speak("no it's five five five five five", 0.5))).toBe("I heard 5 5 5 5 5. Is that right? Say yes, or key in the number.");
  });

  it("takes a keyed-in number instead", async () => {
    const c = await asked();
    // Nothing said while keying; the recognizer goes back to listening for digits.
    const keyed = await c.keys("5555");
    expect(keyed.filter((e) => e.type !== "hints")).toEqual([]);
    expect(hints(keyed).map((h) => h.mode)).toEqual(["digits"]);
    const pound = await c.key("#");
    expect(tools(pound)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "5555" } }]);
  });

  it("reads back digits of the wrong length, and a yes to them gets the invalid line", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    expect(said(await c.speak("one two", 0.99))).toBe("I heard 1 2. Is that right? Say yes, or key in the number.");
    const yes = await c.speak("yes", 0.99);
    expect(said(yes)).toMatch(/doesn't look like an order number/);
    // The recognizer listens for a number again, not for yes or no (a local one would hear the number as one word).
    expect(hints(yes).at(-1)?.mode).toBe("digits");
    expect(tools(c.events)).toEqual([]);
  });

  it("a caller whose number keeps being read back wrong reaches the state's escalation, not an endless readback", async () => {
    const c = await asked();
    const outcomes: string[] = [];
    for (let i = 0; i < 6 && c.outcome !== "max_reprompts"; i++) {
      await c.speak("no", 0.9);
      outcomes.push(c.outcome);
      if (c.outcome === "max_reprompts") break;
      await c.speak("one two three four five", 0.6);
    }
    expect(outcomes.at(-1)).toBe("max_reprompts");
    expect(outcomes.length).toBeLessThanOrEqual(4);
  });

  it("takes a whole keyed number when the caller waits without pressing pound", async () => {
    const c = new Conversation();
    await c.start();
    await c.key("1");
    await c.keys("12345");
    const waited = await c.send({ kind: "noInput" });
    expect(tools(waited)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    // Too few digits for a number: reprompted as before.
    await c.key("1");
    await c.keys("12");
    expect(tools(await c.send({ kind: "noInput" }))).toEqual([]);
  });

  it("listens for the number again when a keyed entry ends a readback", async () => {
    const c = await asked();
    const key = await c.key("5");
    expect(hints(key).at(-1)?.mode).toBe("digits");
    expect(c.state.confirm).toBeUndefined();
  });

  it("repeats the question on silence or something else, then asks for the keypad", async () => {
    const c = await asked();
    expect(said(await c.send({ kind: "noInput" }))).toBe(READBACK);
    expect(said(await c.speak("hmm", 0.9))).toBe(READBACK);
    const last = await c.speak("what", 0.9);
    expect(said(last)).toBe("Please key in the number on your keypad, then press pound.");
    expect(c.state.confirm).toBeUndefined();
  });

  it("still understands the agent's intents while confirming", async () => {
    const c = await asked();
    expect(tools(await c.speak("agent", 0.9))[0]).toMatchObject({ name: "transfer_to_human" });
  });

  it("uses the configured threshold", async () => {
    const engine = new ScriptedEngine(orderLine, { digitsConfirmConfidence: 0.5 });
    const state = engine.initialState();
    const io: TurnIO = { heard() {}, say: () => "", callTool: async () => ({ ok: true, result: { found: false }, ms: 1 }), setHints() {} };
    const menu = await engine.turn({ kind: "start" }, state, io);
    const ask = await engine.turn({ kind: "keypad", digit: "1", atMs: 1 }, menu.state, io);
    const result = await engine.turn({ kind: "speech", text: "12345", confidence: 0.6 }, ask.state, io);
    expect(result.outcome).toBe("slot");
  });
});

describe("text helpers", () => {
  it("normalizes", () => {
    expect(normalizeText("  That's ALL, thanks!  ")).toBe("thats all thanks");
  });

  it("finds spoken digits", () => {
    expect(spokenDigits("one two three four five")).toBe("12345");
    expect(spokenDigits("12345")).toBe("12345");
    expect(spokenDigits("1 2 3 4 5")).toBe("12345");
    expect(spokenDigits("my order number is 1, 2, 3")).toBe("123");
    expect(spokenDigits("twelve three forty five")).toBe("12345");
    expect(spokenDigits("double five triple oh one")).toBe("550001");
    expect(spokenDigits("six oh two")).toBe("602");
    expect(spokenDigits("oh I don't know")).toBe("");
    expect(spokenDigits("twenty")).toBe("20");
    expect(spokenDigits("agent")).toBe("");
  });

  it("finds each spoken number on its own", () => {
    expect(spokenNumbers("my order is 1 2 3 4 5 and my zip is 90210")).toEqual(["12345", "90210"]);
    expect(spokenNumbers("one two three, four five")).toEqual(["12345"]);
    expect(spokenNumbers("six oh two double five")).toEqual(["60255"]);
    expect(spokenNumbers("no numbers here")).toEqual([]);
  });

  it("finds a spoken key", () => {
    expect(spokenKey("one")).toBe("1");
    expect(spokenKey("Press 0.")).toBe("0");
    expect(spokenKey("option nine please")).toBe("9");
    expect(spokenKey("one two")).toBeUndefined();
    expect(spokenKey("order status")).toBeUndefined();
  });

  it("renders templates", () => {
    const scope = { slots: { n: "123" }, result: { status: "shipped", items: ["a", "b", "c"], nested: { x: 1 } } };
    expect(renderTemplate("Order {{slots.n|spell}} {{ result.status }}.", scope)).toBe("Order 1 2 3 shipped.");
    expect(renderTemplate("{{result.items}} {{result.nested.x}} {{result.missing}}!", scope)).toBe("a, b and c 1 !");
    expect(spell("12 3")).toBe("1 2 3");
  });

  it("splits sentences", () => {
    expect(splitSentences("Hi there. How are you? Fine!  Ok")).toEqual(["Hi there.", "How are you?", "Fine!", "Ok"]);
    expect(splitSentences("It costs 3.50 dollars.")).toEqual(["It costs 3.50 dollars."]);
  });
});

describe("scripted engine: tool timeouts", () => {
  it("waits for a tool as long as its action says, else as long as the agent declared it may take", async () => {
    const yaml = `
greeting: { say: "Hi.", goto: menu }
reprompt: Again?
states:
  menu:
    prompt: Press a key.
    intents:
      - { name: slow, keys: ["1"], do: { tool: { name: slow_lookup, args: {} }, results: [{ say: "Done." }] } }
      - { name: quick, keys: ["2"], do: { tool: { name: slow_lookup, args: {}, timeoutMs: 700 }, results: [{ say: "Done." }] } }
      - { name: builtin, keys: ["3"], do: { tool: { name: end_call, args: {} }, results: [{ say: "Bye." }] } }
tools:
  - name: slow_lookup
    description: A slow backend.
    parameters: { type: object, properties: {} }
    timeoutMs: 12000
    webhook: { url: "https://example.invalid/slow", method: POST }
`;
    const agent = validateAgent(parseAgentText(yaml, "timeouts.yaml"), "timeouts");
    const engine = new ScriptedEngine(agent);
    let state = engine.initialState();
    const asked: Array<{ timeoutMs?: number } | undefined> = [];
    const io: TurnIO = {
      heard() {},
      say: () => "t1",
      callTool: async (_name, _args, options) => (asked.push(options), { ok: true, result: null, ms: 1 }),
      setHints() {},
    };
    state = (await engine.turn({ kind: "start" }, state, io)).state;
    for (const digit of ["1", "2", "3"]) state = (await engine.turn({ kind: "keypad", digit, atMs: 1 }, state, io)).state;
    expect(asked).toEqual([{ timeoutMs: 12_000 }, { timeoutMs: 700 }, {}]);
  });
});
