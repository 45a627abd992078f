import { keys, type CallStore, type TranscriptEntry } from "@voicebot/state";

/**
 * Rewrites a bot line of the call record to what the caller heard before talking over it, in place, so the
 * transcript keeps its order (bot line, then the caller's interruption). Idempotent: a line already rewritten is
 * left alone. The record is append-only otherwise, so an index read here stays valid for the LSET.
 */
export async function markInterrupted(store: CallStore, callId: string, spokenText: string, heardText: string, at: string): Promise<void> {
  const key = keys.transcript(callId);
  const entries = await store.redis.lrange(key, 0, -1);
  for (let i = entries.length - 1; i >= 0; i--) {
    let entry: TranscriptEntry;
    try {
      entry = JSON.parse(entries[i]) as TranscriptEntry;
    } catch {
      continue;
    }
    if (entry.role !== "bot") continue;
    if (entry.interrupted && entry.text === heardText) return;
    if (!entry.interrupted && entry.text === spokenText) {
      await store.redis.lset(key, i, JSON.stringify({ ...entry, text: heardText, interrupted: true }));
      return;
    }
  }
  // The line is not in the record (it was never recorded, or the record was trimmed): note what was heard.
  await store.appendTranscript(callId, { role: "bot", text: heardText, at, interrupted: true });
}
