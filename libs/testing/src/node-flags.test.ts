// The services run with the same node flags wherever they are started: production images, `pnpm start`, and the
// tests and benchmarks (which start them through this library).
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot, SERVICE_NODE_FLAGS, type ServiceName } from "./processes.js";

const SERVICES: ServiceName[] = ["ingress", "asr", "dialog", "tools", "tts"];

describe("SERVICE_NODE_FLAGS", () => {
  it("is what every service's image starts node with", () => {
    for (const name of SERVICES) {
      const dockerfile = readFileSync(path.join(repoRoot, "services", name, "Dockerfile"), "utf8");
      const entrypoints = [...dockerfile.matchAll(/^ENTRYPOINT (\[.*\])$/gm)].map((m) => JSON.parse(m[1]) as string[]);
      expect(entrypoints, name).toEqual([["node", ...SERVICE_NODE_FLAGS, "dist/main.js"]]);
    }
  });

  it("is what `pnpm start` starts the services with", () => {
    const script = readFileSync(path.join(repoRoot, "scripts", "start.mjs"), "utf8");
    const declared = /^const serviceNodeFlags = (\[.*\]);$/m.exec(script);
    expect(declared, "scripts/start.mjs declares serviceNodeFlags").not.toBeNull();
    expect(JSON.parse(declared![1])).toEqual(SERVICE_NODE_FLAGS);
    expect(script).toContain('[...serviceNodeFlags, path.join("services", service.name, "dist", "main.js")]');
  });

  it("is accepted by this node (an unknown flag stops node before the service starts)", () => {
    const run = spawnSync(process.execPath, [...SERVICE_NODE_FLAGS, "-e", "process.stdout.write('ran')"], { encoding: "utf8" });
    expect(run.stderr).toBe("");
    expect(run.status).toBe(0);
    expect(run.stdout).toBe("ran");
    const bad = spawnSync(process.execPath, ["--no-such-gc-flag", "-e", "0"], { encoding: "utf8" });
    expect(bad.status).not.toBe(0);
  });
});
