export { mulawEncode, mulawDecode, mulawDecodeInto, MULAW_DECODE_TABLE } from "./mulaw.js";
export { l16FromBytes, l16ToBytes } from "./l16.js";
export { resample, Resampler } from "./resample.js";
export { FrameSplitter, MULAW_SILENCE, FRAME_MS, samplesPerFrame } from "./framing.js";
export { parseWav, wavFromPcm, wavFromMulaw, WavStreamParser, type WavAudio } from "./wav.js";
export { rmsDbfs, mulawFrameEnergy, SILENCE_DBFS } from "./levels.js";
