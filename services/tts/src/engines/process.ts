// Running an engine binary: no shell (text goes in argv as-is), stderr kept for error messages, killed on abort.

import { spawn, type ChildProcess } from "node:child_process";

export interface EngineProcessOptions {
  /** Engine name for messages ("flite"). */
  label: string;
  /** Debian package that provides the binary, for the "not installed" message. */
  debianPackage: string;
  signal?: AbortSignal;
  /** "pipe" to read the child's stdout. */
  stdout: "pipe" | "ignore";
}

export interface EngineProcess {
  readonly child: ChildProcess;
  /** Resolves when the process has exited with 0. Rejects with the abort reason on abort (the child is
   *  killed; settles once it is gone), a "not installed" error when the binary is missing, or an error
   *  carrying stderr on any other exit. */
  readonly done: Promise<void>;
  /** Kills the process if it is still running. */
  kill(): void;
  /** What the process wrote to stderr so far (flite reports some failures there and still exits 0). */
  stderr(): string;
}

/** Kept stderr per process; engines print a line or two, a runaway child must not grow memory. */
const MAX_STDERR = 4096;

const squash = (text: string) => text.trim().replace(/\s+/g, " ");

export function startEngineProcess(binary: string, args: string[], options: EngineProcessOptions): EngineProcess {
  const { label, debianPackage, signal } = options;
  signal?.throwIfAborted();
  const child = spawn(binary, args, { stdio: ["ignore", options.stdout, "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (text: string) => {
    if (stderr.length < MAX_STDERR) stderr += text;
  });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  const done = new Promise<void>((resolve, reject) => {
    // Settles on "close" even when aborted, so once `done` has settled the process is gone (reaped) and
    // its output file is no longer being written. SIGKILL makes that a matter of a millisecond or two.
    const onAbort = () => kill();
    const cleanup = () => signal?.removeEventListener("abort", onAbort);
    signal?.addEventListener("abort", onAbort, { once: true });
    // A failed spawn emits "error" before "close"; the first settlement wins.
    child.on("error", (error: NodeJS.ErrnoException) => {
      cleanup();
      reject(error.code === "ENOENT" ? new Error(`${label} not installed: apt-get install ${debianPackage} (no ${binary})`) : error);
    });
    child.once("close", (code, killedBy) => {
      cleanup();
      if (signal?.aborted) reject(signal.reason);
      else if (code === 0) resolve();
      else {
        const detail = squash(stderr);
        reject(new Error(`${label} ${code === null ? `killed by ${killedBy}` : `exited with code ${code}`}${detail ? `: ${detail}` : ""}`));
      }
    });
  });
  done.catch(() => undefined); // callers await it when they need it; an abandoned run is not an unhandled rejection
  return { child, done, kill, stderr: () => squash(stderr) };
}

/** `pcm` cut into views of at most `size` samples; stops (throws the reason) as soon as `signal` aborts. */
export function* pieces(pcm: Int16Array, size: number, signal: AbortSignal | undefined): Generator<Int16Array, void, undefined> {
  for (let at = 0; at < pcm.length; at += size) {
    signal?.throwIfAborted();
    yield pcm.subarray(at, at + size);
  }
}
