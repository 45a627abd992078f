import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { AgentConfigError, validateAgent } from "./config.js";
import { loadAgents } from "./load.js";

const agentsDir = fileURLToPath(new URL("../../agents", import.meta.url));

function problemsOf(raw: unknown): string[] {
  try {
    validateAgent(raw, "test");
  } catch (error) {
    if (error instanceof AgentConfigError) return error.problems;
    throw error;
  }
  return [];
}

/** A small valid agent to break one piece at a time. */
function base(): Record<string, any> {
  return {
    greeting: { say: "Hello.", goto: "menu" },
    reprompt: "Sorry?",
    intents: [{ name: "bye", phrases: ["goodbye"], keys: ["9"], do: { say: "Bye.", tool: { name: "end_call" }, end: true } }],
    states: {
      menu: {
        prompt: "Press 1 for orders.",
        intents: [{ name: "orders", phrases: ["orders"], keys: ["1"], do: { goto: "ask" } }],
      },
      ask: {
        prompt: "Key in the number.",
        collect: {
          slot: "num",
          minLength: 2,
          maxLength: 6,
          do: {
            tool: { name: "lookup", args: { n: "{{slots.num}}" } },
            results: [{ when: { found: true }, say: "Status {{result.status}} for {{slots.num|spell}}.", goto: "menu" }],
            onError: { say: "Failed: {{error.code}}.", goto: "menu" },
          },
        },
      },
    },
  };
}

describe("agent config validation", () => {
  it("accepts the shipped agents", async () => {
    const agents = await loadAgents(agentsDir);
    expect([...agents.keys()]).toContain("order-line");
    const orderLine = agents.get("order-line")!;
    expect(orderLine.greeting).toEqual({ say: "Thanks for calling the demo shop.", goto: "menu" });
    expect(orderLine.states.ask_order.collect).toMatchObject({ slot: "order_number", terminator: "#" });
  });

  it("accepts the base agent and fills defaults", () => {
    const agent = validateAgent(base(), "test");
    expect(agent.maxReprompts).toBe(2);
    expect(agent.states.menu.globalIntents).toBe(true);
    expect(agent.states.ask.collect).toMatchObject({ minLength: 2, maxLength: 6, terminator: "#" });
    expect(agent.onToolError.say).toBeTruthy();
  });

  it("reports each problem with its path", () => {
    const raw = base();
    raw.states.menu.intents[0].do.goto = "nowhere";
    raw.states.menu.promt = "typo";
    raw.states.ask.collect.minLength = 9;
    raw.intents[0].keys = ["x"];
    const problems = problemsOf(raw);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^test\.json: states\.menu\.intents\[0\] \(orders\)\.do\.goto: unknown state "nowhere"/),
        expect.stringMatching(/^test\.json: states\.menu\.promt: unknown field/),
        expect.stringMatching(/states\.ask\.collect: minLength 9 is more than maxLength 6/),
        expect.stringMatching(/intents\[0\] \(bye\)\.keys: "x" is not a keypad key/),
      ]),
    );
    expect(problems).toHaveLength(4);
  });

  it("checks required fields and types", () => {
    expect(problemsOf({})).toEqual(
      expect.arrayContaining([
        expect.stringContaining("(agent).greeting: is required"),
        expect.stringContaining("(agent).reprompt: is required"),
        expect.stringContaining("(agent).states: is required"),
      ]),
    );
    const raw = base();
    delete raw.states.menu.prompt;
    raw.maxReprompts = -1;
    raw.states.ask.hints = { mode: "words" };
    expect(problemsOf(raw)).toEqual(
      expect.arrayContaining([
        expect.stringContaining("states.menu.prompt: is required"),
        expect.stringContaining("maxReprompts: must be an integer between 0 and 10"),
        expect.stringContaining('states.ask.hints.mode: must be "phrases" or "digits"'),
      ]),
    );
  });

  it("checks templates: known roots, filters, slots and where result/error exist", () => {
    const raw = base();
    raw.states.menu.prompt = "Hi {{result.status}} {{slots.missing}} {{caller.name}} {{slots.num|shout}} {{oops";
    raw.states.menu.reprompt = "Error {{error.code}}";
    const problems = problemsOf(raw);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringContaining("{{result.status}} is only available in a tool's results or onError"),
        expect.stringContaining('no state collects a slot named "missing"'),
        expect.stringContaining("unknown template value {{caller.name}}"),
        expect.stringContaining('unknown filter "shout"'),
        expect.stringContaining("malformed template"),
        expect.stringContaining("{{error.code}} is only available in a tool's onError"),
      ]),
    );
  });

  it("checks action structure", () => {
    const raw = base();
    raw.greeting = { say: "Hello." };
    raw.intents[0].do.goto = "menu";
    raw.states.menu.intents[0].do = {};
    raw.states.ask.collect.do = { results: [], say: "x" };
    raw.states.menu.onMaxReprompts = { say: "Bye.", end: true };
    raw.intents[0].do.results = [];
    const problems = problemsOf(raw);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringContaining("greeting: must go to a state (goto) or end the call"),
        expect.stringContaining("intents[0] (bye).do: cannot both end and goto"),
        expect.stringContaining("intents[0] (bye).do: an ending action cannot have results"),
        expect.stringContaining("states.menu.intents[0] (orders).do: must do something"),
        expect.stringContaining("states.ask.collect.do: results and onError need a tool"),
        expect.stringContaining("states.menu.onMaxReprompts: an ending action needs the tool"),
      ]),
    );
  });

  it("keeps keypad keys unambiguous", () => {
    const raw = base();
    raw.states.menu.intents.push({ name: "again", keys: ["1"], do: { goto: "menu" } });
    raw.states.ask.intents = [{ name: "digit", keys: ["5", "#", "*"], do: { goto: "menu" } }];
    raw.states.menu.intents.push({ name: "silent", do: { goto: "menu" } });
    const problems = problemsOf(raw);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringContaining('key "1" is already used by intent orders'),
        expect.stringContaining('states.ask.intents (digit).keys: key "5" is taken by the digits'),
        expect.stringContaining('states.ask.intents (digit).keys: key "#" is taken by the digits'),
        expect.stringContaining("(silent): needs phrases, keywords or keys"),
      ]),
    );
    expect(problems.some((p) => p.includes('"*"'))).toBe(false);
  });

  it("loadAgents names the file of every problem and rejects bad JSON", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "vb-agents-"));
    try {
      await writeFile(path.join(dir, "good.json"), JSON.stringify(base()));
      await writeFile(path.join(dir, "broken.json"), "{ nope");
      const bad = base();
      bad.states.menu.intents[0].do.goto = "gone";
      await writeFile(path.join(dir, "bad.json"), JSON.stringify(bad));
      const error = await loadAgents(dir).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AgentConfigError);
      const problems = (error as AgentConfigError).problems;
      expect(problems).toEqual([
        expect.stringMatching(/bad\.json: states\.menu\.intents\[0\] \(orders\)\.do\.goto: unknown state "gone"/),
        expect.stringMatching(/broken\.json: not valid JSON/),
      ]);
      await rm(path.join(dir, "broken.json"));
      await rm(path.join(dir, "bad.json"));
      expect([...(await loadAgents(dir)).keys()]).toEqual(["good"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the shipped README documents every top-level and state field the validator accepts", async () => {
    const readme = await readFile(path.join(agentsDir, "README.md"), "utf8");
    for (const field of ["greeting", "reprompt", "maxReprompts", "onMaxReprompts", "onToolError", "intents", "states", "voice", "prompt", "globalIntents", "collect", "hints"]) {
      expect(readme).toContain(`\`${field}\``);
    }
  });
});
