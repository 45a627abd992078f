import { rmsDbfs } from "@voicebot/audio";

/**
 * Decides, one 20 ms frame at a time, whether the caller is speaking. The endpointing (start/stop hysteresis,
 * pre-roll, silence timeouts) lives in the Segmenter, so a better classifier (Silero) only replaces this part.
 */
export interface VoiceActivityDetector {
  /** True when this frame (20 ms of 8 kHz PCM) holds speech. Frames must come in stream order. */
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
export class EnergyVad implements VoiceActivityDetector {
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
