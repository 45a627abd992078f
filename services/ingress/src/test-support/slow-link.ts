// A TCP proxy that delays what the server sends back, for tests that need a slow (but real) Redis: every reply
// arrives `delayMs` later than it would, in order.
import net from "node:net";

export interface SlowLink {
  /** Point clients here (`redis://127.0.0.1:<port>`). */
  port: number;
  /** Added to every server → client write from now on (0 = none). */
  delayMs: number;
  close(): Promise<void>;
}

export async function startSlowLink(targetPort: number, targetHost = "127.0.0.1"): Promise<SlowLink> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    sockets.add(client).add(upstream);
    // Replies are released in order: one chain per connection, each write no earlier than the one before it.
    let chain = Promise.resolve();
    upstream.on("data", (data) => {
      const releaseAt = Date.now() + link.delayMs;
      chain = chain.then(async () => {
        const wait = releaseAt - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (!client.destroyed) client.write(data);
      });
    });
    client.on("data", (data) => upstream.write(data));
    const closeBoth = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", closeBoth).on("error", closeBoth);
    upstream.on("close", closeBoth).on("error", closeBoth);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const link: SlowLink = {
    port: (server.address() as net.AddressInfo).port,
    delayMs: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
  return link;
}
