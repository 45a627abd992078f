export * from "./config.js";
export * from "./http.js";
export * from "./log.js";
export * from "./service.js";
export * from "./api-client.js";
export * from "./link-failure.js";
export * from "./deadline.js";
export * from "./loop-stalls.js";
