export * from "./playout.js";
export * from "./simulator.js";
export * from "./synthesize.js";
export * from "./twiml.js";
