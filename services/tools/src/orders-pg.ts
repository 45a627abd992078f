import pg from "pg";
import type { Order, OrderSource } from "./orders.js";

/** `orders` or `schema.orders`: plain identifiers only, because the name is put into SQL. */
const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$/;
const DATE_OID = 1082;
const TIMESTAMP_OID = 1114;
const TIMESTAMPTZ_OID = 1184;

export function isValidTableName(table: string): boolean {
  return TABLE_NAME.test(table);
}

function quoted(table: string): string {
  if (!isValidTableName(table)) throw new Error(`invalid table name ${JSON.stringify(table)}`);
  return table
    .split(".")
    .map((part) => `"${part}"`)
    .join(".");
}

/** The schema lookup_order expects (extra columns are ignored; carrier and the rest may be missing). */
export function ordersTableSql(table: string): string {
  return `CREATE TABLE IF NOT EXISTS ${quoted(table)} (
  order_number    text PRIMARY KEY,
  status          text NOT NULL,
  carrier         text,
  tracking_number text,
  eta             date,
  delivered_on    date,
  items           text[]
)`;
}

export function createPool(url: string, { queryTimeoutMs = 6_000 } = {}): pg.Pool {
  // Calendar dates stay "YYYY-MM-DD" strings: a JS Date would shift them by the server's time zone. A timestamp
  // column is read as its day in the database session's time zone ("2025-03-06 17:30:00+00" -> "2025-03-06").
  const types = new pg.TypeOverrides();
  types.setTypeParser(DATE_OID, (value: string) => value);
  for (const oid of [TIMESTAMP_OID, TIMESTAMPTZ_OID]) types.setTypeParser(oid, (value: string) => (/^\d{4}-\d{2}-\d{2}[ T]/.test(value) ? value.slice(0, 10) : value));
  return new pg.Pool({
    connectionString: url,
    max: 10,
    connectionTimeoutMillis: 2_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: 5_000,
    // The server's statement_timeout cannot end a query to a host that vanished (a failover, a partition): the
    // client gives up too, and the connection is dropped instead of holding a pool slot for TCP's ~15 minutes.
    query_timeout: queryTimeoutMs,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    types,
  });
}

/** Creates the table (and its schema) when missing. */
export async function createOrdersTable(pool: pg.Pool, table: string): Promise<void> {
  if (table.includes(".")) await pool.query(`CREATE SCHEMA IF NOT EXISTS "${table.split(".")[0]}"`);
  await pool.query(ordersTableSql(table));
}

/** Inserts or updates orders (the demo data, for a database set up with the seed script). */
export async function upsertOrders(pool: pg.Pool, table: string, orders: Order[]): Promise<void> {
  for (const order of orders) {
    await pool.query(
      `INSERT INTO ${quoted(table)} (order_number, status, carrier, tracking_number, eta, delivered_on, items)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (order_number) DO UPDATE SET status = EXCLUDED.status, carrier = EXCLUDED.carrier,
         tracking_number = EXCLUDED.tracking_number, eta = EXCLUDED.eta, delivered_on = EXCLUDED.delivered_on, items = EXCLUDED.items`,
      [order.orderNumber, order.status, order.carrier ?? null, order.trackingNumber ?? null, order.etaDate ?? null, order.deliveredDate ?? null, order.items ?? null],
    );
  }
}

/** Orders from PostgreSQL (ORDERS_DATABASE_URL): one indexed lookup by order number per call. */
export class PgOrderSource implements OrderSource {
  private readonly sql: string;

  constructor(
    private readonly pool: pg.Pool,
    table: string,
  ) {
    this.sql = `SELECT * FROM ${quoted(table)} WHERE order_number = $1 LIMIT 1`;
  }

  /**
   * Checks the table: a missing table or column is a deployment mistake (thrown as such); an unreachable
   * database is not fatal (lookups fail until it is back, the other tools keep working) and is returned.
   */
  static async check(pool: pg.Pool, table: string): Promise<{ reachable: boolean; error?: string }> {
    try {
      const result = await pool.query(`SELECT * FROM ${quoted(table)} LIMIT 0`);
      const columns = result.fields.map((f) => f.name);
      const missing = ["order_number", "status"].filter((c) => !columns.includes(c));
      if (missing.length > 0) throw new OrdersTableError(`table ${table} has no column ${missing.join(", ")}`);
      return { reachable: true };
    } catch (error) {
      if (error instanceof OrdersTableError) throw error;
      const code = (error as { code?: string }).code;
      if (code === "42P01" || code === "3F000") {
        throw new OrdersTableError(`table ${table} does not exist (create it with: pnpm --filter @voicebot/svc-tools seed-orders)`);
      }
      return { reachable: false, error: (error as Error).message };
    }
  }

  async findOrder(orderNumber: string): Promise<Order | undefined> {
    // statement_timeout bounds the query; the tool's own timeout answers the caller first if it is shorter.
    const result = await this.pool.query(this.sql, [orderNumber]);
    const row = result.rows[0] as Record<string, unknown> | undefined;
    if (!row) return undefined;
    const text = (value: unknown) => (value === null || value === undefined || value === "" ? undefined : String(value));
    const items = row.items;
    return {
      orderNumber: String(row.order_number),
      status: String(row.status),
      carrier: text(row.carrier),
      trackingNumber: text(row.tracking_number),
      etaDate: text(row.eta),
      deliveredDate: text(row.delivered_on),
      items: Array.isArray(items) ? items.map(String) : typeof items === "string" && items ? [items] : undefined,
    };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

export class OrdersTableError extends Error {}
