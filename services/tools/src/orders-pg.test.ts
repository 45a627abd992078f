// lookup_order against the real PostgreSQL (TEST_DATABASE_URL, default the local server's `test` database);
// every run uses a schema of its own and drops it afterwards.
import { randomBytes } from "node:crypto";
import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { ToolCallRequest, ToolCallResult } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { freePort, startNats, startRedis, startTcpProxy, type ServerHandle } from "@voicebot/testing";
import type pg from "pg";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JsonFileOrderSource } from "./orders.js";
import { createOrdersTable, createPool, OrdersTableError, PgOrderSource, upsertOrders } from "./orders-pg.js";
import { definition } from "./service.js";

const DATABASE_URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const schema = `vb_test_${randomBytes(4).toString("hex")}`;
const table = `${schema}.orders`;

let pool: pg.Pool;
let nats: ServerHandle;
let redis: ServerHandle;
let service: ServiceHandle;
let bus: Bus;
let store: CallStore;

beforeAll(async () => {
  pool = createPool(DATABASE_URL);
  await createOrdersTable(pool, table);
  const demo = await JsonFileOrderSource.fromEntries([
    { order_number: "12345", status: "shipped", carrier: "UPS", tracking_number: "1Z999", eta: "2025-03-06", items: ["wireless headphones"] },
    { order_number: "55555", status: "delivered", carrier: "USPS", delivered_on: "2025-03-01" },
    { order_number: "67890", status: "processing" },
  ]).all();
  await upsertOrders(pool, table, demo);
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  service = await startService(definition, {
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    ORDERS_DATABASE_URL: DATABASE_URL,
    ORDERS_TABLE: table,
  });
  bus = await Bus.connect({ servers: nats.url, name: "orders-pg-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
});

afterAll(async () => {
  await bus?.close();
  await store?.close();
  await service?.stop();
  await Promise.all([nats?.stop(), redis?.stop()]);
  await pool?.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await pool?.end();
});

async function lookup(orderNumber: unknown): Promise<ToolCallResult> {
  const callId = `CApg${randomBytes(4).toString("hex")}`;
  await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ", agent: "order-line", from: "", to: "", startedAt: "" });
  const request = ToolCallRequest.create({ callId, toolCallId: "pg-1", name: "lookup_order", argumentsJson: JSON.stringify({ order_number: orderNumber }), turnId: "t2", agent: "order-line" });
  return bus.request(subjects.toolsCall, ToolCallRequest, request, ToolCallResult, 5_000, callId);
}

describe("lookup_order from PostgreSQL", () => {
  it("reads an order row, with dates as calendar days read out for the caller", async () => {
    const result = await lookup("#12 345#");
    expect(result.ok).toBe(true);
    expect(JSON.parse(result.resultJson)).toEqual({
      found: true,
      order_number: "12345",
      status: "shipped",
      carrier: "UPS",
      tracking_number: "1Z999",
      eta: "2025-03-06",
      eta_text: "Thursday, March 6",
      items: ["wireless headphones"],
    });
    expect(JSON.parse((await lookup(55555)).resultJson)).toMatchObject({ status: "delivered", delivered_on: "2025-03-01", delivered_text: "Saturday, March 1" });
    expect(JSON.parse((await lookup("67890")).resultJson)).toEqual({ found: true, order_number: "67890", status: "processing" });
    expect(JSON.parse((await lookup("99999")).resultJson)).toEqual({ found: false, order_number: "99999" });
  });

  it("reads timestamp columns as their calendar day (a table made by someone else)", async () => {
    const other = `${schema}.orders_ts`;
    await pool.query(`CREATE TABLE ${other} (order_number text PRIMARY KEY, status text NOT NULL, eta timestamptz, delivered_on timestamp)`);
    // Noon UTC: the same day in the session's time zone, whichever the server has.
    await pool.query(`INSERT INTO ${other} VALUES ('777', 'shipped', '2025-03-06 12:00:00+00', '2025-03-01 08:00:00')`);
    const order = await new PgOrderSource(pool, other).findOrder("777");
    expect(order).toMatchObject({ orderNumber: "777", etaDate: "2025-03-06", deliveredDate: "2025-03-01" });
  });

  it("sees changes in the database at once (no caching)", async () => {
    await pool.query(`UPDATE ${table} SET status = 'delivered', delivered_on = '2025-03-07' WHERE order_number = '67890'`);
    expect(JSON.parse((await lookup("67890")).resultJson)).toMatchObject({ status: "delivered", delivered_text: "Friday, March 7" });
  });

  it("refuses to start on a missing table, and starts (failing lookups) when the database is down", async () => {
    await expect(PgOrderSource.check(pool, `${schema}.nope`)).rejects.toBeInstanceOf(OrdersTableError);
    const env = { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error", ORDERS_DATABASE_URL: DATABASE_URL, ORDERS_TABLE: `${schema}.nope` };
    await expect(startService(definition, env)).rejects.toThrow(/ORDERS_DATABASE_URL: table .*nope does not exist \(create it with/);

    const down = createPool(`postgres://postgres@127.0.0.1:${await freePort()}/test`);
    expect(await PgOrderSource.check(down, table)).toMatchObject({ reachable: false });
    const source = new PgOrderSource(down, table);
    await expect(source.findOrder("12345")).rejects.toThrow();
    await down.end();
  });

  it("gives up on a query to a database gone silent (no reset: a partition), and frees the pool's connection", async () => {
    const proxy = await startTcpProxy(Number(new URL(DATABASE_URL).port || 5432), new URL(DATABASE_URL).hostname);
    const url = new URL(DATABASE_URL);
    url.host = `127.0.0.1:${proxy.port}`;
    const silent = createPool(url.toString(), { queryTimeoutMs: 500 });
    try {
      const source = new PgOrderSource(silent, table);
      expect(await source.findOrder("12345")).toMatchObject({ orderNumber: "12345" });
      proxy.blackhole();
      const started = performance.now();
      await expect(source.findOrder("12345")).rejects.toThrow(/timeout/i);
      expect(performance.now() - started).toBeLessThan(2_000);
      // The connection that timed out is not kept: the pool can close at once.
      const ending = performance.now();
      await silent.end();
      expect(performance.now() - ending).toBeLessThan(2_000);
    } finally {
      proxy.restore();
      await proxy.close();
    }
  });
});
