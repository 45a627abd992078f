export * from "./bus.js";
export * from "./connection.js";
export * from "./log.js";
export * from "./subjects.js";
export type { Subscription } from "nats";
export * from "./hot-counter.js";
export * from "./in-order.js";
export * from "./turn-ids.js";
