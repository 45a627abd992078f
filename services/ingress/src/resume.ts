// Calls that outlive their stream. Our TwiML follows `<Connect><Stream>` with a `<Redirect>` back to the voice
// webhook: when a stream closes without `stop` (its ingress died, or handed the call over while draining), Twilio
// runs that redirect, and the webhook connects the call to a new stream on a live replica, which resumes it.

/** Custom parameter: a `<Redirect>` back to the voice webhook follows this stream (a close can be resumed). */
export const RESUMABLE_PARAM = "vbResumable";
/** Custom parameter: this stream resumes a live call, for the n-th time. */
export const RESUME_PARAM = "vbResume";
/**
 * Custom parameter of a resuming stream: when the call started (ms since the epoch, from its record), so that the new
 * stream numbers its frames on from the call's first frame at once, before (or without) its own record look-up.
 */
export const STARTED_AT_PARAM = "vbStartedAt";
/** Query parameter of the redirect: which resume it asks for. */
export const RESUME_QUERY = "vbResume";
/** A call resumed this many times is not resumed again (a stream that keeps failing at once would loop forever). */
export const MAX_RESUMES = 5;

/** The voice webhook's URL that resumes a call for the `resume`-th time (`origin`: https://host as Twilio sees it). */
export function resumeUrl(origin: string, resume: number, agent: string | undefined): string {
  const url = new URL("/twilio/voice", origin);
  url.searchParams.set(RESUME_QUERY, String(resume));
  if (agent) url.searchParams.set("agent", agent);
  return url.toString();
}
