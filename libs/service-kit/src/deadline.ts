import { StallAwareTimer } from "./loop-stalls.js";

/**
 * `promise`, or a rejection with `timedOut()` once `ms` have passed (a deadline that comes due during a stall
 * of this process's own reads what came meanwhile first: StallAwareTimer); the promise's own later outcome is ignored. For waits a caller must
 * bound itself (a cache read, an engine's result, a read on a link gone dark).
 */
export function withinMs<T>(promise: Promise<T>, ms: number, timedOut: () => Error = () => new Error(`no answer within ${ms} ms`)): Promise<T> {
  let timer: StallAwareTimer | undefined;
  const late = new Promise<never>((_resolve, reject) => {
    timer = new StallAwareTimer(ms, () => reject(timedOut()));
  });
  return Promise.race([promise, late]).finally(() => timer?.clear());
}
