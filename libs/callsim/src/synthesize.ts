import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { mulawEncode, wavFromMulaw } from "@voicebot/audio";

export type SpeechEngine = "flite" | "espeak-ng";

export interface SynthesizeOptions {
  engine?: SpeechEngine;
  /** flite: kal, kal16, awb, rms, slt (default slt); espeak-ng: a voice name (default en-us). */
  voice?: string;
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-2000)));
    child.once("error", (error: NodeJS.ErrnoException) =>
      reject(new Error(error.code === "ENOENT" ? `${command} is not installed (apt-get install ${command === "sox" ? "sox" : command})` : `${command}: ${error.message}`)),
    );
    child.once("exit", (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${command} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`)),
    );
  });
}

/**
 * Speaks `text` with a local engine and returns it as a phone line carries it: 8 kHz μ-law, mono.
 * Engines run without a shell (the text goes through a file, never the command line) and temp files are removed.
 */
export async function synthesize(text: string, options: SynthesizeOptions = {}): Promise<Uint8Array> {
  if (text.trim() === "") throw new Error("nothing to say");
  const engine = options.engine ?? "flite";
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-say-"));
  try {
    const textFile = path.join(dir, "text.txt");
    const wav = path.join(dir, "speech.wav");
    const raw = path.join(dir, "speech.raw");
    await writeFile(textFile, text, "utf8");
    if (engine === "flite") await run("flite", ["-voice", options.voice ?? "slt", "-f", textFile, "-o", wav]);
    else await run("espeak-ng", ["-v", options.voice ?? "en-us", "-f", textFile, "-w", wav]);
    // sox band-limits and resamples to the telephone rate; μ-law encoding uses the same codec as the services.
    await run("sox", [wav, "-t", "raw", "-r", "8000", "-c", "1", "-e", "signed-integer", "-b", "16", "-L", raw]);
    const bytes = await readFile(raw);
    const pcm = new Int16Array(Math.floor(bytes.length / 2));
    for (let i = 0; i < pcm.length; i++) pcm[i] = bytes.readInt16LE(i * 2);
    return mulawEncode(pcm);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Saves 8 kHz μ-law as a playable WAV file. */
export async function writeWav(file: string, mulaw: Uint8Array): Promise<void> {
  await writeFile(file, wavFromMulaw(mulaw));
}
