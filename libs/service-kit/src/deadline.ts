/**
 * `promise`, or a rejection with `timedOut()` once `ms` have passed; the promise's own later outcome is ignored.
 * For waits a caller must bound itself (a cache read, an engine's result, a read on a link gone dark).
 */
export function withinMs<T>(promise: Promise<T>, ms: number, timedOut: () => Error = () => new Error(`no answer within ${ms} ms`)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(timedOut()), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
