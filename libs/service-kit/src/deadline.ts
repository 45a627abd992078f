import { RunnableTimer } from "./loop-stalls.js";

/**
 * `promise`, or a rejection with `timedOut()` once `ms` of time this process could run have passed (a stall of its
 * own is not the other side's: RunnableTimer); the promise's own later outcome is ignored. For waits a caller must
 * bound itself (a cache read, an engine's result, a read on a link gone dark).
 */
export function withinMs<T>(promise: Promise<T>, ms: number, timedOut: () => Error = () => new Error(`no answer within ${ms} ms`)): Promise<T> {
  let timer: RunnableTimer | undefined;
  const late = new Promise<never>((_resolve, reject) => {
    timer = new RunnableTimer(ms, () => reject(timedOut()));
  });
  return Promise.race([promise, late]).finally(() => timer?.clear());
}
