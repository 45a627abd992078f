import { execFile, spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

export interface ServerHandle {
  url: string;
  port: number;
  process: ChildProcess;
  /** SIGKILL (a crash), no cleanup. */
  kill(): void;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Asks the OS for a free TCP port on loopback. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function waitFor<T>(
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  { timeoutMs = 10_000, intervalMs = 25, what = "condition" } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value as T;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function canConnect(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * The first line a server at `port` answers (after `send`, if given), or undefined. Tells a server we started from
 * another one that took the port between freePort() and our spawn (tests run in parallel, each taking free ports).
 */
function firstLine(port: number, send?: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let data = "";
    const done = (line: string | undefined) => {
      socket.destroy();
      resolve(line);
    };
    socket.setTimeout(1_000, () => done(undefined));
    socket.once("connect", () => send && socket.write(send));
    socket.on("data", (chunk) => {
      data += chunk.toString("utf8");
      const end = data.indexOf("\r\n");
      if (end >= 0) done(data.slice(0, end));
    });
    socket.once("error", () => done(undefined));
    socket.once("close", () => done(undefined));
  });
}

function requireBinary(binary: string, install: string): string {
  const dirs = (process.env.PATH ?? "").split(path.delimiter).concat(["/usr/sbin", "/usr/bin", "/usr/local/bin"]);
  for (const dir of dirs) {
    const candidate = path.join(dir, binary);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      /* keep looking */
    }
  }
  throw new Error(`${binary} not found on PATH: install it (${install})`);
}



function handleFor(url: string, port: number, child: ChildProcess, cleanup: () => Promise<void>): ServerHandle {
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3_000))]);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await cleanup();
  };
  return { url, port, process: child, kill: () => child.kill("SIGKILL"), stop, [Symbol.asyncDispose]: stop };
}

/**
 * Starts a real nats-server with JetStream on an OS-chosen port (port -1 plus a ports file: no races, no sleeps).
 * Pass `port` to restart a server on the same address (for reconnect tests) and `storeDir` to keep its streams.
 */
export async function startNats(
  options: { port?: number; storeDir?: string; monitor?: boolean; args?: string[] } = {},
): Promise<ServerHandle & { storeDir: string; monitorUrl?: string }> {
  const binary = requireBinary("nats-server", "apt-get install nats-server");
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-nats-"));
  const storeDir = options.storeDir ?? path.join(dir, "js");
  // `monitor`: also the HTTP monitoring endpoint (/varz, /connz...) on an OS-chosen port, for load measurements.
  const monitorArgs = options.monitor ? ["-m", "-1"] : [];
  // `args`: more server flags (authentication, a config file); they come first, so the address flags win.
  const args = [...(options.args ?? []), "-a", "127.0.0.1", "-p", String(options.port ?? -1), ...monitorArgs, "-js", "-sd", storeDir, "--ports_file_dir", dir];
  const child = spawn(binary, args, {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
  const { port, monitorUrl } = await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`nats-server exited: ${stderr}`);
      const files = (await readdir(dir)).filter((f) => f.endsWith(".ports"));
      if (files.length === 0) return undefined;
      const ports = JSON.parse(await readFile(path.join(dir, files[0]), "utf8")) as { nats: string[]; monitoring?: string[] };
      const port = Number(new URL(ports.nats[0]).port);
      if (options.monitor && !ports.monitoring?.[0]) return undefined;
      return (await canConnect(port)) ? { port, monitorUrl: ports.monitoring?.[0] } : undefined;
    },
    { what: "nats-server to listen" },
  );
  // The temp dir holds the ports file (and the JetStream store unless the caller keeps its own).
  const handle = handleFor(`nats://127.0.0.1:${port}`, port, child, () => rm(dir, { recursive: true, force: true, maxRetries: 3 }));
  return { ...handle, storeDir, ...(monitorUrl ? { monitorUrl } : {}) };
}

/**
 * A real NATS cluster of `size` nodes with JetStream on loopback: each node its own client port, store and name
 * (vb-0, vb-1, ...), routes to all. `url` lists every node, as a client in a cluster is given them. A node can be
 * killed (a crash) and started again on its ports with its store.
 */
export async function startNatsCluster(size = 3): Promise<{
  url: string;
  nodes: Array<ServerHandle & { name: string }>;
  restart(index: number): Promise<void>;
  stop(): Promise<void>;
}> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startNatsClusterOnce(size);
    } catch (error) {
      // A free port may have been taken before a node bound it (tests run in parallel): try other ports.
      if (attempt >= 3) throw error;
    }
  }
}

async function startNatsClusterOnce(size: number): Promise<Awaited<ReturnType<typeof startNatsCluster>>> {
  const binary = requireBinary("nats-server", "apt-get install nats-server");
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-nats-cluster-"));
  const ports = await Promise.all(Array.from({ length: size }, async () => ({ client: await freePort(), route: await freePort() })));
  const routes = ports.map((p) => `nats://127.0.0.1:${p.route}`).join(",");
  const start = async (index: number) => {
    const name = `vb-${index}`;
    const { client, route } = ports[index];
    const args = ["-a", "127.0.0.1", "-p", String(client), "-n", name, "-js", "-sd", path.join(dir, name), "--cluster_name", "vb", "--cluster", `nats://127.0.0.1:${route}`, "--routes", routes];
    const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`nats-server ${name} exited: ${stderr}`);
        return (await firstLine(client))?.includes(`"server_name":"${name}"`) || undefined;
      },
      { what: `nats-server ${name} to listen` },
    );
    return { ...handleFor(`nats://127.0.0.1:${client}`, client, child, async () => undefined), name };
  };
  const started = await Promise.allSettled(ports.map((_, i) => start(i)));
  const failed = started.find((r) => r.status === "rejected");
  if (failed) {
    await Promise.all(started.map((r) => (r.status === "fulfilled" ? r.value.stop() : undefined)));
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
    throw failed.reason;
  }
  const nodes = started.map((r) => (r as PromiseFulfilledResult<ServerHandle & { name: string }>).value);
  return {
    url: nodes.map((n) => n.url).join(","),
    nodes,
    async restart(index) {
      const node = nodes[index];
      const exited = new Promise((resolve) => node.process.once("exit", resolve));
      if (node.process.exitCode === null && node.process.signalCode === null) {
        node.kill();
        await exited;
      }
      nodes[index] = await start(index);
    },
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
      await rm(dir, { recursive: true, force: true, maxRetries: 3 });
    },
  };
}

/**
 * Starts a real redis-server without persistence on a free port (or the given one, for restart tests). `args`: more
 * server flags (`--requirepass`, `--replicaof`); `tls`: serve TLS only, on that port, with these PEM files.
 */
export async function startRedis(
  options: { port?: number; args?: string[]; tls?: { certFile: string; keyFile: string; caFile: string } } = {},
): Promise<ServerHandle> {
  const binary = requireBinary("redis-server", "apt-get install redis-server");
  // A directory of its own: a replica writes the RDB it syncs there, and any redis-server started later in the same
  // directory would load it (a shared /tmp/dump.rdb once filled every test's fresh Redis with another test's calls).
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-redis-"));
  for (let attempt = 0; ; attempt++) {
    const port = options.port ?? (await freePort());
    const { tls } = options;
    const listen = tls
      ? ["--port", "0", "--tls-port", String(port), "--tls-cert-file", tls.certFile, "--tls-key-file", tls.keyFile, "--tls-ca-cert-file", tls.caFile, "--tls-auth-clients", "no"]
      : ["--port", String(port)];
    const child = spawn(binary, [...listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...(options.args ?? [])], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout!.on("data", (d) => (output = (output + d).slice(-4000)));
    try {
      await waitFor(
        async () => {
          if (child.exitCode !== null) throw new Error(`redis-server exited: ${output}`);
          if (tls) return (await canConnect(port)) || undefined;
          const reply = await firstLine(port, "PING\r\n");
          return (reply === "+PONG" || reply?.startsWith("-NOAUTH")) || undefined;
        },
        { what: "redis-server to listen" },
      );
      // Another test's server may have answered on a port taken meanwhile; ours then exits at once (address in use).
      await new Promise((resolve) => setTimeout(resolve, 100));
      if (child.exitCode !== null) throw new Error(`redis-server exited: ${output}`);
      return handleFor(`${tls ? "rediss" : "redis"}://127.0.0.1:${port}`, port, child, () => rm(dir, { recursive: true, force: true, maxRetries: 3 }));
    } catch (error) {
      child.kill("SIGKILL");
      if (options.port || attempt >= 3) {
        await rm(dir, { recursive: true, force: true, maxRetries: 3 });
        throw error; // a random port may have been taken meanwhile: try another
      }
    }
  }
}

/**
 * Starts a real Redis Sentinel watching the master `name` at `masterPort` with quorum 1 and a short down-after
 * time (1 s: shorter risks a failover when a busy machine delays a reply), so a test sees a failover within a few
 * seconds of the master's death. With `replicas`, it returns
 * once it knows that many replicas in sync (it learns them from the master's INFO: none can be promoted before).
 */
export async function startRedisSentinel(options: {
  masterPort: number;
  name?: string;
  replicas?: number;
  /** The sentinel's own password (`requirepass`), and the one it uses with the master and replicas. */
  password?: string;
  masterPassword?: string;
  /** TLS only, for clients and to the master and replicas (which then listen with TLS too). */
  tls?: { certFile: string; keyFile: string; caFile: string };
}): Promise<ServerHandle> {
  const binary = requireBinary("redis-server", "apt-get install redis-server");
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-sentinel-"));
  const port = await freePort();
  const name = options.name ?? "mymaster";
  const config = path.join(dir, "sentinel.conf"); // sentinel rewrites its config file: it must be its own
  await writeFile(
    config,
    [
      ...(options.tls
        ? [`port 0`, `tls-port ${port}`, `tls-cert-file ${options.tls.certFile}`, `tls-key-file ${options.tls.keyFile}`, `tls-ca-cert-file ${options.tls.caFile}`]
        : [`port ${port}`]),
      ...(options.tls ? ["tls-auth-clients no", "tls-replication yes"] : []),
      "bind 127.0.0.1",
      `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${options.masterPort} 1`,
      `sentinel down-after-milliseconds ${name} 1000`,
      `sentinel failover-timeout ${name} 5000`,
      `sentinel parallel-syncs ${name} 1`,
      ...(options.masterPassword ? [`sentinel auth-pass ${name} ${options.masterPassword}`] : []),
      ...(options.password ? [`requirepass ${options.password}`] : []),
      "",
    ].join("\n"),
  );
  const child = spawn(binary, [config, "--sentinel"], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (d) => (output = (output + d).slice(-4000)));
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`redis sentinel exited: ${output}`);
      return (await canConnect(port)) || undefined;
    },
    { what: "redis sentinel to listen" },
  );
  const cli = requireBinary("redis-cli", "apt-get install redis-tools");
  await waitFor(
    async () => {
      const auth = options.password ? ["--no-auth-warning", "-a", options.password] : [];
      const tls = options.tls ? ["--tls", "--cacert", options.tls.caFile] : [];
      const { stdout } = await promisify(execFile)(cli, ["-p", String(port), ...tls, ...auth, "sentinel", "replicas", name]);
      return (stdout.match(/^master-link-status\nok$/gm)?.length ?? 0) >= (options.replicas ?? 0);
    },
    { what: `redis sentinel to know ${options.replicas ?? 0} replicas`, timeoutMs: 15_000, intervalMs: 100 },
  );
  return handleFor(`${options.tls ? "rediss" : "redis"}://127.0.0.1:${port}`, port, child, () => rm(dir, { recursive: true, force: true, maxRetries: 3 }));
}
