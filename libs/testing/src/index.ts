export * from "./processes.js";
export * from "./servers.js";
export * from "./fakes/index.js";
export * from "./metrics.js";
export * from "./tls.js";
export * from "./proxy.js";
