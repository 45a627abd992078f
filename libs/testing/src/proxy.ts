// A TCP proxy on loopback in front of a real server, for links that fail while the server behind them keeps running
// (a partition, a failing-over endpoint) or that are slow: what the client sees is the link, not another server.
import net from "node:net";

export interface TcpProxy {
  /** Where clients connect: `127.0.0.1:<port>`. */
  port: number;
  /** Where new connections go (a stable endpoint whose server moves: set it to another port). */
  targetPort: number;
  /** Added to every server → client write from now on, released in order (0 = none). */
  delayMs: number;
  /** The link is lost: every connection through the proxy is reset, and new ones are reset at once, until `restore`. */
  cut(): void;
  /**
   * The link goes dark: connections stay open but nothing gets through either way, and new ones are accepted and
   * hear nothing (a partition without resets, a node gone silent), until `restore`.
   */
  blackhole(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number, targetHost = "127.0.0.1"): Promise<TcpProxy> {
  const open = new Set<net.Socket>();
  let isCut = false;
  let isDark = false;
  const server = net.createServer((client) => {
    if (isCut) return void client.resetAndDestroy();
    const upstream = net.connect(proxy.targetPort, targetHost);
    open.add(client).add(upstream);
    // Replies are released in order: one chain per connection, each write no earlier than the one before it.
    let chain = Promise.resolve();
    let held = 0;
    upstream.on("data", (data) => {
      if (isDark) return;
      if (proxy.delayMs <= 0 && held === 0) return void client.write(data);
      const releaseAt = Date.now() + proxy.delayMs;
      held++;
      chain = chain.then(async () => {
        const wait = releaseAt - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        held--;
        if (!client.destroyed) client.write(data);
      });
    });
    client.on("data", (data) => {
      if (!isDark) upstream.write(data);
    });
    const closeBoth = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("close", closeBoth).on("error", closeBoth);
    upstream.on("close", closeBoth).on("error", closeBoth);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const proxy: TcpProxy = {
    port: (server.address() as net.AddressInfo).port,
    targetPort,
    delayMs: 0,
    cut() {
      isCut = true;
      for (const socket of open) socket.resetAndDestroy();
      open.clear();
    },
    blackhole() {
      isDark = true;
    },
    restore() {
      isCut = false;
      isDark = false;
    },
    async close() {
      for (const socket of open) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
