import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { AgentConfigError, validateAgent, type AgentConfig } from "./config.js";

const EXTENSIONS = [".json", ".yaml", ".yml"];

/** The agent files in a directory: `<agent>.json`, `<agent>.yaml` or `<agent>.yml` (the name is the file name). */
export async function agentFiles(dir: string): Promise<Array<{ name: string; file: string }>> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    throw new AgentConfigError([`${dir}: cannot read the agents directory: ${(error as Error).message}`]);
  }
  return entries
    .filter((f) => EXTENSIONS.includes(path.extname(f)))
    .sort()
    .map((f) => ({ name: f.slice(0, -path.extname(f).length), file: path.join(dir, f) }));
}

/** Parses one agent file as JSON or YAML (by its extension); throws an Error whose message says where it broke. */
export function parseAgentText(text: string, file: string): unknown {
  if (file.endsWith(".json")) {
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new Error(`not valid JSON: ${(error as Error).message}`);
    }
  }
  try {
    // Plain data only: no custom tags, and duplicate keys are errors (they are usually mistakes).
    return parseYaml(text, { uniqueKeys: true, prettyErrors: true });
  } catch (error) {
    throw new Error(`not valid YAML: ${(error as Error).message.replace(/\s+/g, " ").trim()}`);
  }
}

/**
 * Reads and validates every agent file in `dir`. Throws one error listing every problem of every file, each as
 * "<file>: <path>: <problem>".
 */
export async function loadAgents(dir: string): Promise<Map<string, AgentConfig>> {
  const files = await agentFiles(dir);
  if (files.length === 0) throw new AgentConfigError([`${dir}: no agent files (<name>.json, <name>.yaml or <name>.yml)`]);
  const agents = new Map<string, AgentConfig>();
  const problems: string[] = [];
  const seen = new Map<string, string>();
  for (const { name, file } of files) {
    const other = seen.get(name);
    if (other) {
      problems.push(`${file}: agent "${name}" is also defined by ${other}`);
      continue;
    }
    seen.set(name, file);
    let raw: unknown;
    try {
      raw = parseAgentText(await readFile(file, "utf8"), file);
    } catch (error) {
      problems.push(`${file}: ${(error as Error).message}`);
      continue;
    }
    try {
      agents.set(name, validateAgent(raw, name, file));
    } catch (error) {
      if (error instanceof AgentConfigError) problems.push(...error.problems);
      else throw error;
    }
  }
  if (problems.length > 0) throw new AgentConfigError(problems);
  return agents;
}
