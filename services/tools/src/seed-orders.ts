// Creates the orders table when missing and loads the demo orders into it:
//   ORDERS_DATABASE_URL=postgres://... [ORDERS_TABLE=orders] [ORDERS_FILE=data/orders.json] node dist/seed-orders.js
// (or `pnpm --filter @voicebot/svc-tools seed-orders`). Dates relative to "today" in the file are fixed at seeding.
import { fileURLToPath } from "node:url";
import { JsonFileOrderSource } from "./orders.js";
import { createOrdersTable, createPool, isValidTableName, upsertOrders } from "./orders-pg.js";

const url = process.env.ORDERS_DATABASE_URL;
const table = process.env.ORDERS_TABLE || "orders";
const file = process.env.ORDERS_FILE || fileURLToPath(new URL("../data/orders.json", import.meta.url));
if (!url) {
  console.error("ORDERS_DATABASE_URL is not set (postgres://user:password@host:5432/database)");
  process.exit(2);
}
if (!isValidTableName(table)) {
  console.error(`ORDERS_TABLE=${JSON.stringify(table)} must be a table name, optionally schema.table`);
  process.exit(2);
}
const pool = createPool(url);
try {
  const orders = await (await JsonFileOrderSource.load(file)).all();
  await createOrdersTable(pool, table);
  await upsertOrders(pool, table, orders);
  console.log(`${table}: ${orders.length} demo orders loaded from ${file}`);
} catch (error) {
  console.error(`seeding ${table} failed: ${(error as Error).message}`);
  process.exitCode = 1;
} finally {
  await pool.end();
}
