// Client-named URLs (a placed call's statusCallback) are fetched from inside the cluster: unless the operator allows
// it, they may reach public addresses only, never this pod, its network, a cloud's metadata service or the mesh. The
// check is made on the addresses a connection actually uses (a name that resolves to 10.0.0.5 at relay time is
// refused however it resolved when the call was placed).
import dns from "node:dns";
import net, { BlockList } from "node:net";

/** Loopback, private, shared (CGNAT), link-local, multicast, reserved and documentation-free special ranges. */
const NOT_PUBLIC = new BlockList();
for (const [prefix, bits] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  NOT_PUBLIC.addSubnet(prefix, bits, "ipv4");
}
for (const [prefix, bits] of [
  ["::", 127], // unspecified and loopback
  ["64:ff9b:1::", 48], // local-use NAT64
  ["fc00::", 7], // unique local
  ["fe80::", 10], // link-local
  ["fec0::", 10], // site-local (deprecated, still routed by some)
  ["ff00::", 8], // multicast
] as const) {
  NOT_PUBLIC.addSubnet(prefix, bits, "ipv6");
}

/** Whether an IP address is one a client-named URL may reach (IPv4-mapped IPv6 is judged as its IPv4 address). */
export function isPublicAddress(address: string): boolean {
  const family = net.isIP(address);
  if (family === 0) return false;
  return !NOT_PUBLIC.check(address, family === 6 ? "ipv6" : "ipv4");
}

/**
 * Why a URL's host can be seen to reach no public address without resolving it (an IP literal in a private range,
 * `localhost`), or undefined when it may be public (a name: judged again on connecting, see publicOnlyLookup).
 */
export function privateHostReason(hostname: string): string | undefined {
  const host = hostname.replace(/^\[|\]$/g, "").replace(/\.$/, "").toLowerCase();
  if (net.isIP(host)) return isPublicAddress(host) ? undefined : `${host} is not a public address`;
  if (host === "localhost" || host.endsWith(".localhost")) return `${host} is this machine`;
  return undefined;
}

export class NotPublicError extends Error {
  readonly code = "ENOTPUBLIC";
}

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | dns.LookupAddress[], family?: number) => void;

/** A `lookup` for http(s).request that connects to public addresses only: the others a name resolves to are dropped. */
export function publicOnlyLookup(hostname: string, options: dns.LookupOptions, callback: LookupCallback): void {
  dns.lookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error) return callback(error, "");
    const reachable = addresses.filter((a) => isPublicAddress(a.address));
    if (reachable.length === 0) return callback(new NotPublicError(`${hostname} resolves to no public address`), "");
    if (options.all) return callback(null, reachable);
    callback(null, reachable[0].address, reachable[0].family);
  });
}
