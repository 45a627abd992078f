// Caller audio is published once per event-loop turn, all calls together. Each Twilio frame arrives in its own
// socket read; published right there, the NATS client flushes it with its own socket write (it flushes at the end
// of the current microtask queue), so a process with N calls made ~50·N write syscalls per second for 160-byte
// messages, the largest single cost of ingress under load. Queued here and published together from setImmediate
// (after the poll phase has read every socket that was ready), one write carries the whole turn's frames. The added
// delay is the rest of the current poll phase: well under a millisecond unless the process is saturated anyway.

export class PublishBatch {
  private queue: Array<{ publish: () => void; failed: (error: unknown) => void }> = [];
  private scheduled = false;

  /**
   * Runs `publish` with every other one queued in this event-loop turn, in the order they were added. A publish
   * that throws (a bug) is handed to `failed` and the others still go out.
   */
  add(publish: () => void, failed: (error: unknown) => void): void {
    this.queue.push({ publish, failed });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  /** Publishes what is queued now (a call ending flushes its last frames before announcing its end). */
  readonly flush = (): void => {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = [];
    for (const { publish, failed } of queue) {
      try {
        publish();
      } catch (error) {
        failed(error);
      }
    }
  };

  get pending(): number {
    return this.queue.length;
  }
}

/** The process's batch for caller audio (one per process: the point is to share the socket write). */
export const callerAudioBatch = new PublishBatch();
