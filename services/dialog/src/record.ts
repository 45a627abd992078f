import type { CallStore, TranscriptEntry } from "@voicebot/state";

/** Reads again this often when appends move the line between the read and the rewrite. */
const ATTEMPTS = 3;

/**
 * Rewrites a bot line of the call record to what the caller heard before talking over it, in place, so the
 * transcript keeps its order (bot line, then the caller's interruption). Idempotent: a line already rewritten is
 * left alone. The rewrite only lands on the line read (a full record drops its oldest line on each append, which
 * moves the rest): else it reads again.
 */
export async function markInterrupted(store: CallStore, callId: string, spokenText: string, heardText: string, at: string): Promise<void> {
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const lines = await store.transcriptLines(callId);
    const found = findSpoken(lines, spokenText, heardText);
    if (found === "done") return;
    if (found === undefined) {
      // The line is not in the record (it was never recorded, or the record was trimmed): note what was heard.
      await store.appendTranscript(callId, { role: "bot", text: heardText, at, interrupted: true });
      return;
    }
    const { index, entry } = found;
    if (await store.replaceTranscriptEntry(callId, index, lines[index], { ...entry, text: heardText, interrupted: true })) return;
  }
  // Appends kept moving the line: it stays as it was said rather than a second line being added for it.
}

/** The latest bot line that said `spokenText` and is not marked yet; "done" when it was marked already. */
function findSpoken(lines: string[], spokenText: string, heardText: string): { index: number; entry: TranscriptEntry } | "done" | undefined {
  for (let i = lines.length - 1; i >= 0; i--) {
    let entry: TranscriptEntry;
    try {
      entry = JSON.parse(lines[i]) as TranscriptEntry;
    } catch {
      continue;
    }
    if (entry.role !== "bot") continue;
    if (entry.interrupted && entry.text === heardText) return "done";
    if (!entry.interrupted && entry.text === spokenText) return { index: i, entry };
  }
  return undefined;
}
