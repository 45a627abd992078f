import { rmsDbfs } from "@voicebot/audio";

/**
 * One call's voice activity detection. Frames (20 ms of 8 kHz PCM) are pushed in stream order; each gets one
 * decision, delivered in push order, either at once (energy) or a little later (Silero, batched across calls).
 * The endpointing (start/stop hysteresis, pre-roll, silence timeouts) lives in the Segmenter.
 */
export interface VadStream {
  /** One or more frames, back to back (a multi-frame CallerAudio goes in with one call); see frameCountOf. */
  push(frames: Int16Array): void;
  /** Nothing is decided after this: frames still waiting are dropped. */
  close(): void;
}

/** The VAD of a replica: opens one stream per call (and may share work between them). */
export interface VoiceActivityDetector {
  readonly kind: "silero" | "energy";
  /** `decide` is called once per pushed frame, in push order, synchronously or later. */
  open(decide: (speech: boolean) => void): VadStream;
  close(): Promise<void>;
}

/** Samples in one 20 ms frame at 8 kHz. */
export const VAD_FRAME_SAMPLES = 160;

/** Frames in one push: 160 samples each, the last one may be short (it still gets its decision). */
export function frameCountOf(pcm: Int16Array): number {
  return Math.ceil(pcm.length / VAD_FRAME_SAMPLES);
}

/** A classifier that decides each frame at once, in stream order. */
export interface FrameClassifier {
  /** True when this frame (20 ms of 8 kHz PCM) holds speech. */
  isSpeech(frame: Int16Array): boolean;
}

export interface EnergyVadOptions {
  /** A frame is speech when it is this many dB above the noise floor... */
  thresholdDb: number;
  /** ...and at least this loud (a floor adapted to digital silence must not make line hiss "speech"). */
  minSpeechDbfs: number;
}

export const defaultEnergyVadOptions: EnergyVadOptions = { thresholdDb: 10, minSpeechDbfs: -50 };

/** Levels are clamped here so digital silence (-Infinity dBFS) does not drag the floor out of reach. */
const LEVEL_MIN_DBFS = -90;
/** The first frame seeds the floor, but never above this: a call that opens with speech must still be heard. */
const INITIAL_FLOOR_MAX_DBFS = -45;
/** Per-frame smoothing of the noise floor toward the current level (20 ms frames). */
const FALL_RATE = 0.2; // quieter frames pull the floor down within ~100 ms
const RISE_RATE_SILENCE = 0.02; // louder non-speech frames lift it within ~1 s
const RISE_RATE_SPEECH = 0.004; // a lasting rise in line noise is absorbed within a few seconds even while "speech"
/** The first frames adapt fast whatever they hold: the line's noise level is unknown when the call opens. */
const WARM_UP_FRAMES = 25;
const RISE_RATE_WARM_UP = 0.1;

/**
 * Energy VAD: frame RMS level against an adaptive noise floor. Cheap and engine-independent; it cannot tell a
 * tone from a voice, which is why the segmenter also ignores very short bursts.
 */
export class EnergyVad implements FrameClassifier {
  private floorDbfs: number | undefined;
  private frames = 0;

  constructor(private readonly options: EnergyVadOptions = defaultEnergyVadOptions) {}

  /** The current noise floor estimate in dBFS (undefined before the first frame). */
  get noiseFloorDbfs(): number | undefined {
    return this.floorDbfs;
  }

  isSpeech(frame: Int16Array): boolean {
    const level = Math.max(LEVEL_MIN_DBFS, rmsDbfs(frame));
    if (this.floorDbfs === undefined) this.floorDbfs = Math.min(level, INITIAL_FLOOR_MAX_DBFS);
    const floor = this.floorDbfs;
    const speech = level >= Math.max(floor + this.options.thresholdDb, this.options.minSpeechDbfs);
    const warmingUp = ++this.frames <= WARM_UP_FRAMES;
    const rate = level < floor ? FALL_RATE : warmingUp ? RISE_RATE_WARM_UP : speech ? RISE_RATE_SPEECH : RISE_RATE_SILENCE;
    this.floorDbfs = floor + (level - floor) * rate;
    return speech;
  }
}

/** The energy VAD through the stream interface: every decision is made during push(). */
export class EnergyVadDetector implements VoiceActivityDetector {
  readonly kind = "energy";

  constructor(private readonly options: EnergyVadOptions = defaultEnergyVadOptions) {}

  open(decide: (speech: boolean) => void): VadStream {
    const vad = new EnergyVad(this.options);
    let open = true;
    return {
      push: (frames) => {
        const count = frameCountOf(frames);
        for (let i = 0; i < count && open; i++) {
          decide(vad.isSpeech(count === 1 ? frames : frames.subarray(i * VAD_FRAME_SAMPLES, (i + 1) * VAD_FRAME_SAMPLES)));
        }
      },
      close: () => {
        open = false;
      },
    };
  }

  async close(): Promise<void> {}
}
