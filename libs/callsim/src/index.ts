export * from "./playout.js";
export * from "./simulator.js";
export * from "./synthesize.js";
