export * from "./processes.js";
export * from "./servers.js";
