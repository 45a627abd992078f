import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rename, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface TestCertificate {
  /** PEM file of the self-signed certificate: it is its own CA, so this is also what clients must trust. */
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

/**
 * Where the shared throwaway certificate lives. Fixed (not per test) so that a service process started with
 * `NODE_EXTRA_CA_CERTS=<certFile>` trusts every fake TLS server started later by any test on this machine.
 */
export const TEST_CERT_DIR = path.join(os.tmpdir(), "voicebot-test-ca");

// Regenerate when fewer than this many ms of validity are left.
const MIN_VALIDITY_MS = 7 * 24 * 3600_000;

function load(dir: string): TestCertificate | undefined {
  const certFile = path.join(dir, "cert.pem");
  const keyFile = path.join(dir, "key.pem");
  if (!existsSync(certFile) || !existsSync(keyFile)) return undefined;
  try {
    const cert = readFileSync(certFile, "utf8");
    const key = readFileSync(keyFile, "utf8");
    if (Date.parse(new X509Certificate(cert).validTo) - Date.now() < MIN_VALIDITY_MS) return undefined;
    return { certFile, keyFile, cert, key };
  } catch {
    return undefined;
  }
}

/**
 * A self-signed certificate for 127.0.0.1, ::1 and localhost, made once with the `openssl` CLI and reused.
 * Safe to call from parallel test processes: each generates into its own temp dir and renames it into place;
 * the loser of the race uses the winner's files.
 */
export async function ensureTestCertificate(): Promise<TestCertificate> {
  const existing = load(TEST_CERT_DIR);
  if (existing) return existing;
  const staging = await mkdtemp(path.join(os.tmpdir(), "voicebot-test-ca-new-"));
  try {
    await run("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", path.join(staging, "key.pem"), "-out", path.join(staging, "cert.pem"),
      "-days", "3650", "-subj", "/CN=voicebot test server",
      "-addext", "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
    ]).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") throw new Error("openssl not found on PATH: install it (apt-get install openssl)");
      throw error;
    });
    // A stale (expiring) certificate is replaced; a fresh one written meanwhile by another process is kept.
    if (existsSync(TEST_CERT_DIR) && !load(TEST_CERT_DIR)) await rm(TEST_CERT_DIR, { recursive: true, force: true });
    await rename(staging, TEST_CERT_DIR).catch(() => undefined);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  const made = load(TEST_CERT_DIR);
  if (!made) throw new Error(`could not create the test certificate in ${TEST_CERT_DIR}`);
  return made;
}

const LOOPBACK = new Set(["127.0.0.1", "::1", "[::1]", "localhost"]);
let trusted: string | undefined;

/**
 * Makes THIS process trust the test certificate for TLS connections to loopback addresses, keeping full
 * verification (chain and host name). For in-process tests only: Node 20 has no API to add a CA at run time
 * (`NODE_EXTRA_CA_CERTS` is read at start-up, `tls.setDefaultCACertificates` arrived in Node 22), and SDKs
 * such as AssemblyAI's open `ws` sockets without a way to pass `ca`. `ws` (and `https`) reach TLS through
 * `tls.connect`, so the CA is added there when the caller gave none. A child process should instead be started
 * with `NODE_EXTRA_CA_CERTS=<certFile>`.
 */
export function trustTestCertificateInProcess(certificate: TestCertificate): void {
  if (trusted === certificate.cert) return;
  if (trusted !== undefined) throw new Error("a different test certificate is already trusted in this process");
  trusted = certificate.cert;
  const ca = [...tls.rootCertificates, certificate.cert];
  const original = tls.connect;
  const patched = function (this: unknown, ...args: unknown[]) {
    const options = args[0];
    if (args.length === 1 && options && typeof options === "object") {
      const o = options as tls.ConnectionOptions;
      if (o.ca === undefined && o.secureContext === undefined && LOOPBACK.has(o.host ?? "localhost")) args[0] = { ...o, ca };
    }
    return (original as (...a: unknown[]) => tls.TLSSocket).apply(this, args);
  };
  (tls as { connect: unknown }).connect = patched;
}
