// Live memory of a service process: a full garbage collection through the V8 inspector, then process.memoryUsage().
// RSS and the heap size between collections measure how much memory the process has taken from the system (young
// generation growth, allocator arenas), which grows with the allocation rate; what the calls themselves keep alive is
// the heap and buffers that survive a full collection. The services run with --inspect on a loopback port for this
// (the bench only); nothing is attached until the sample is taken.
import { createWriteStream } from "node:fs";
import { WebSocket } from "ws";

export interface LiveMemory {
  /** V8 heap used after a full collection. */
  heapUsed: number;
  /** Memory of Buffers and other objects outside the V8 heap, after the collection. */
  external: number;
  rss: number;
}

/** Node flag that opens the inspector on `port` (loopback only). */
export function inspectFlag(port: number): string {
  return `--inspect=127.0.0.1:${port}`;
}

/** With `snapshotFile`, a V8 heap snapshot is written there after the sample (`heap-diff.ts` compares two). */
export async function liveMemory(port: number, timeoutMs = 15_000, snapshotFile?: string): Promise<LiveMemory> {
  const signal = AbortSignal.timeout(snapshotFile ? 10 * timeoutMs : timeoutMs);
  const targets = (await (await fetch(`http://127.0.0.1:${port}/json/list`, { signal })).json()) as Array<{ webSocketDebuggerUrl: string }>;
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl, { perMessageDeflate: false, maxPayload: 1 << 30 });
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
      signal.addEventListener("abort", () => reject(new Error(`inspector on ${port}: no connection in ${timeoutMs} ms`)));
    });
    let nextId = 1;
    const call = (method: string, params: object = {}) =>
      new Promise<any>((resolve, reject) => {
        const id = nextId++;
        const onMessage = (data: Buffer) => {
          const message = JSON.parse(data.toString());
          if (message.id !== id) return;
          ws.off("message", onMessage);
          if (message.error) reject(new Error(`${method}: ${message.error.message}`));
          else resolve(message.result);
        };
        ws.on("message", onMessage);
        ws.send(JSON.stringify({ id, method, params }));
        signal.addEventListener("abort", () => reject(new Error(`inspector on ${port}: ${method} took over ${timeoutMs} ms`)));
      });
    await call("HeapProfiler.collectGarbage");
    const result = await call("Runtime.evaluate", { expression: "JSON.stringify(process.memoryUsage())", returnByValue: true });
    const usage = JSON.parse(result.result.value as string) as NodeJS.MemoryUsage;
    if (snapshotFile) {
      const file = createWriteStream(snapshotFile);
      const onChunk = (data: Buffer) => {
        const message = JSON.parse(data.toString());
        if (message.method === "HeapProfiler.addHeapSnapshotChunk") file.write(message.params.chunk);
      };
      ws.on("message", onChunk);
      await call("HeapProfiler.takeHeapSnapshot", { reportProgress: false });
      ws.off("message", onChunk);
      await new Promise<void>((resolve, reject) => file.end((error?: Error | null) => (error ? reject(error) : resolve())));
    }
    return { heapUsed: usage.heapUsed, external: usage.external, rss: usage.rss };
  } finally {
    ws.terminate();
  }
}
