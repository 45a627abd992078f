/** What a tool sees of the request that runs it. */
export interface ToolContext {
  callId: string;
  turnId: string;
  agent: string;
  /** The request's idempotency key (webhooks pass it on as Idempotency-Key). */
  toolCallId: string;
  /** Aborted when the request timed out: stop work that is no longer wanted. */
  signal: AbortSignal;
}

export interface Tool {
  name: string;
  /** Used when the request does not set its own timeout. */
  defaultTimeoutMs: number;
  /** Running it twice does no harm: failures are retried (with back-off, within the timeout). */
  idempotent?: boolean;
  /** Runs the tool; the value returned is the JSON result. Throws InvalidArgumentsError for bad arguments. */
  run(args: Record<string, unknown>, ctx: ToolContext): Promise<unknown>;
}

/** The arguments do not fit the tool: the caller's fault, retrying cannot help. */
export class InvalidArgumentsError extends Error {}

/** A failure retrying cannot fix (a backend's 4xx answer); any other error of an idempotent tool is retried. */
export class PermanentToolError extends Error {}

/** Reads an optional string argument, accepting numbers (an LLM may send 12345 for "12345"). */
export function optionalString(args: Record<string, unknown>, name: string, maxLength = 500): string | undefined {
  const value = args[name];
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value !== "string" && typeof value !== "number") throw new InvalidArgumentsError(`${name} must be a string`);
  // A long number lost its digits when the JSON was parsed (12345678901234567890 reads as ...7000): say so, rather
  // than look up some other number.
  if (typeof value === "number" && !(Number.isSafeInteger(value) || (Number.isFinite(value) && Math.abs(value) < 1e15))) {
    throw new InvalidArgumentsError(`${name} must be sent as a string (a number this long loses digits)`);
  }
  const text = String(value);
  if (text.length > maxLength) throw new InvalidArgumentsError(`${name} is longer than ${maxLength} characters`);
  return text;
}
