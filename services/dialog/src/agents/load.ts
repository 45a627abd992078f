import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { AgentConfigError, validateAgent, type AgentConfig } from "./config.js";

/**
 * Reads and validates every `<agent>.json` in `dir` (the agent's name is the file name). Throws one error listing
 * every problem of every file, each as "<file>: <path>: <problem>".
 */
export async function loadAgents(dir: string): Promise<Map<string, AgentConfig>> {
  let files: string[];
  try {
    files = (await readdir(dir)).filter((f) => f.endsWith(".json")).sort();
  } catch (error) {
    throw new AgentConfigError([`${dir}: cannot read the agents directory: ${(error as Error).message}`]);
  }
  if (files.length === 0) throw new AgentConfigError([`${dir}: no agent files (<name>.json)`]);
  const agents = new Map<string, AgentConfig>();
  const problems: string[] = [];
  for (const file of files) {
    const full = path.join(dir, file);
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(full, "utf8"));
    } catch (error) {
      problems.push(`${full}: not valid JSON: ${(error as Error).message}`);
      continue;
    }
    try {
      agents.set(file.slice(0, -".json".length), validateAgent(raw, file.slice(0, -".json".length), full));
    } catch (error) {
      if (error instanceof AgentConfigError) problems.push(...error.problems);
      else throw error;
    }
  }
  if (problems.length > 0) throw new AgentConfigError(problems);
  return agents;
}
