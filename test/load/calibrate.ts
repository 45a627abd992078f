// How fast this machine is right now, so that runs on different days (or VMs) can be compared: a fixed piece of
// the media path's work (parse a Twilio media message, decode its base64 μ-law, encode a reply) run for a moment on
// one core, then on every core at once. On a shared VM the second figure drops when neighbours are busy, and the
// load figures move with it.
import os from "node:os";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { MULAW_DECODE_TABLE } from "@voicebot/audio";

const RUN_MS = 500;

function mediaWork(ms: number): number {
  const payload = Buffer.alloc(160, 0x55).toString("base64");
  const pcm = new Int16Array(160);
  let n = 0;
  const end = performance.now() + ms;
  while (performance.now() < end) {
    for (let i = 0; i < 100; i++, n++) {
      const text = `{"event":"media","sequenceNumber":"${n}","streamSid":"MZ1","media":{"track":"inbound","chunk":"${n}","timestamp":"${n * 20}","payload":"${payload}"}}`;
      const message = JSON.parse(text) as { media: { payload: string } };
      const bytes = Buffer.from(message.media.payload, "base64");
      for (let j = 0; j < bytes.length; j++) pcm[j] = MULAW_DECODE_TABLE[bytes[j]];
      if (Buffer.from(pcm.buffer).toString("base64").length === 0) throw new Error("unreachable");
    }
  }
  return n;
}

function runWorkers(count: number): Promise<number[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<number>((resolve, reject) => {
          const worker = new Worker(new URL(import.meta.url), { workerData: RUN_MS });
          worker.once("message", (n: number) => resolve(n));
          worker.once("error", reject);
        }),
    ),
  );
}

export interface Calibration {
  /** Media messages per second on one core, the others idle. */
  alone: number;
  /** Media messages per second per core, every core running the same work. */
  allCores: number;
  cores: number;
}

export async function calibrate(): Promise<Calibration> {
  const cores = os.availableParallelism();
  await runWorkers(1); // warm-up (JIT, worker start)
  const [alone] = await runWorkers(1);
  const all = await runWorkers(cores);
  const perSecond = (n: number) => (n * 1000) / RUN_MS;
  return { alone: perSecond(alone), allCores: perSecond(all.reduce((a, b) => a + b, 0) / cores), cores };
}

if (!isMainThread) parentPort!.postMessage(mediaWork(workerData as number));
