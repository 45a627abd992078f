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
    raw.noInputMs = 500;
    raw.voicemail = { say: "Please call back." }; // would talk on to the recording
    raw.states.ask.noInputMs = "15s";
    expect(problemsOf(raw)).toEqual(
      expect.arrayContaining([
        expect.stringContaining("states.menu.prompt: is required"),
        expect.stringContaining("maxReprompts: must be an integer between 0 and 10"),
        expect.stringContaining(": noInputMs: must be an integer between 1000 and 600000"),
        expect.stringContaining("states.ask.noInputMs: must be an integer between 1000 and 600000"),
        expect.stringContaining(": voicemail: must end the call: say the message, then tool end_call with end: true"),
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

  it("accepts tools, llm, endpointing and toolFiller, and the shipped order line runs on an LLM with its tool schemas", async () => {
    const orderLine = (await loadAgents(agentsDir)).get("order-line")!;
    expect(orderLine.llm).toMatchObject({ tools: ["lookup_order", "transfer_to_human", "end_call"], greeting: expect.any(String) });
    expect(orderLine.llm!.systemPrompt).toContain("lookup_order");
    expect(orderLine.tools.find((t) => t.name === "lookup_order")).toMatchObject({
      idempotent: true,
      confirm: { argument: "order_number", minLength: 3, maxLength: 12 },
      parameters: { type: "object", required: ["order_number"] },
    });
    expect(orderLine.toolFiller).toBe("One moment while I check that.");
    expect(orderLine.states.ask_order.collect!.confirm).toBe(true);

    const raw = base();
    raw.endpointing = { minSilenceMs: 400, maxSilenceMs: 900, completeSilenceMs: 250 };
    raw.toolFiller = false;
    raw.tools = [
      { name: "check_points", description: "Points.", parameters: { type: "object", properties: { id: { type: "string" } } }, webhook: { url: "${URL}/p" } },
    ];
    raw.llm = { systemPrompt: "Be brief.", model: "m", temperature: 0.2 };
    const agent = validateAgent(raw, "test");
    expect(agent.endpointing).toEqual({ minSilenceMs: 400, maxSilenceMs: 900, completeSilenceMs: 250 });
    expect(agent.toolFiller).toBeNull();
    expect(agent.llm).toMatchObject({ systemPrompt: "Be brief.", tools: ["check_points"], temperature: 0.2 });
  });

  it("reports problems in tools and llm", () => {
    const raw = base();
    raw.tools = [
      { name: "bad name!", description: "x" },
      { name: "a", description: "x", parameters: { type: "array" } },
      { name: "b", description: "x", parameters: { type: "object", properties: { n: { type: "string" } } }, confirm: { argument: "m" } },
      { name: "c", description: "x", webhook: { method: "GET" } },
      { name: "c", description: "x", timeoutMs: 5 },
    ];
    raw.llm = { systemPrompt: "", tools: ["a", "nope"], temperature: 3, apiKeyEnv: "lower", baseUrl: "ftp://x" };
    raw.endpointing = { minSilenceMs: 900, maxSilenceMs: 400, completeSilenceMs: 900 };
    raw.states = { ...raw.states, menu: { ...raw.states.menu, hints: { completeSilenceMs: 150 } } };
    expect(problemsOf(raw)).toEqual(
      expect.arrayContaining([
        expect.stringContaining("tools[0].name: must be a tool name"),
        expect.stringContaining('tools[1] (a).parameters: must be a JSON Schema with "type": "object"'),
        expect.stringContaining("tools[2] (b).confirm.argument: must name one of the parameters (n)"),
        expect.stringContaining("tools[3] (c).webhook.url: is required"),
        expect.stringContaining('tools[4] (c).name: tool "c" is declared twice'),
        expect.stringContaining("tools[4] (c).timeoutMs: must be an integer between 100 and 30000"),
        expect.stringContaining("llm.systemPrompt: must be a non-empty string"),
        expect.stringContaining('llm.tools: "nope" is not declared in tools'),
        expect.stringContaining("llm.temperature: must be a number between 0 and 2"),
        expect.stringContaining("llm.apiKeyEnv: must be an environment variable name"),
        expect.stringContaining("llm.baseUrl: must be an http(s) URL"),
        expect.stringContaining("endpointing: minSilenceMs is more than maxSilenceMs"),
        expect.stringContaining("endpointing.completeSilenceMs: must be below minSilenceMs, or it never applies"),
        expect.stringContaining("states.menu.hints.completeSilenceMs: must be 0 (off) or at least 200"),
      ]),
    );
  });

  it("loads YAML agents and reports YAML errors and duplicate names", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "vb-agents-yaml-"));
    try {
      await writeFile(path.join(dir, "one.yaml"), "greeting: { say: Hello., goto: menu }\nreprompt: Sorry?\nstates:\n  menu:\n    prompt: Say something.\n");
      expect((await loadAgents(dir)).get("one")!.states.menu.prompt).toBe("Say something.");
      await writeFile(path.join(dir, "two.yml"), "greeting: [unclosed\n");
      await writeFile(path.join(dir, "one.json"), JSON.stringify(base()));
      const problems = ((await loadAgents(dir).catch((e: unknown) => e)) as AgentConfigError).problems;
      expect(problems).toEqual([
        expect.stringMatching(/one\.yaml: agent "one" is also defined by .*one\.json/),
        expect.stringMatching(/two\.yml: not valid YAML: .*line 2/),
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the shipped README documents every top-level and state field the validator accepts", async () => {
    const readme = await readFile(path.join(agentsDir, "README.md"), "utf8");
    for (const field of ["greeting", "reprompt", "maxReprompts", "onMaxReprompts", "onToolError", "intents", "states", "voice", "prompt", "globalIntents", "collect", "hints", "tools", "llm", "endpointing", "toolFiller", "confirm", "webhook", "idempotent", "systemPrompt"]) {
      expect(readme).toContain(`\`${field}\``);
    }
  });
});
