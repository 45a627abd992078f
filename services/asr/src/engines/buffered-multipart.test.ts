import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { encodeMultipart, fetchWithBufferedMultipart } from "./buffered-multipart.js";

describe("buffered multipart upload", () => {
  it("encodes a form byte for byte as Node's fetch does, and a multipart parser reads it back unchanged", async () => {
    const bytes = new Uint8Array(5000).map((_, i) => (i * 7919) % 256); // every byte value, CR and LF included
    const form = new FormData();
    form.append("model", "gpt-4o-mini-transcribe");
    form.append("prompt", "line one\nline two\r\nline \"three\"");
    form.append('odd"name\r\n', "x");
    form.append("include[]", "logprobs");
    form.append("include[]", "more");
    form.append("file", new File([bytes], 'utter"ance.wav', { type: "audio/wav" }));
    form.append("blob", new Blob([new Uint8Array([1, 2, 3])]));

    const { body, contentType } = await encodeMultipart(form);
    const streamed = new Request("http://localhost/", { method: "POST", body: form });
    const theirBoundary = /boundary=(.+)$/.exec(streamed.headers.get("content-type")!)![1];
    const ourBoundary = /boundary=(.+)$/.exec(contentType)![1];
    expect(body.toString("latin1")).toBe(Buffer.from(await streamed.arrayBuffer()).toString("latin1").replaceAll(theirBoundary, ourBoundary));

    const parsed = await new Response(body, { headers: { "content-type": contentType } }).formData();

    expect(parsed.get("model")).toBe("gpt-4o-mini-transcribe");
    expect(parsed.get("prompt")).toBe("line one\r\nline two\r\nline \"three\""); // newlines normalized as browsers send them
    expect(parsed.get('odd"name\r\n')).toBe("x");
    expect(parsed.getAll("include[]")).toEqual(["logprobs", "more"]);
    const file = parsed.get("file") as File;
    expect(file.name).toBe('utter"ance.wav');
    expect(file.type).toBe("audio/wav");
    expect(new Uint8Array(await file.arrayBuffer())).toEqual(bytes);
    const blob = parsed.get("blob") as File;
    expect(blob.type).toBe("application/octet-stream");
    expect([...new Uint8Array(await blob.arrayBuffer())]).toEqual([1, 2, 3]);
  });

  it("sends a FormData body as one buffer with its length, and any other body as fetch would", async () => {
    const seen: Array<{ type: string | undefined; length: string | undefined; chunked: boolean; body: Buffer }> = [];
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        seen.push({ type: req.headers["content-type"], length: req.headers["content-length"], chunked: req.headers["transfer-encoding"] === "chunked", body: Buffer.concat(chunks) });
        res.end("ok");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    try {
      const form = new FormData();
      form.append("a", "1");
      const response = await fetchWithBufferedMultipart(url, { method: "POST", body: form, headers: { "content-type": "text/plain", authorization: "Bearer k" } });
      expect(await response.text()).toBe("ok");
      await fetchWithBufferedMultipart(url, { method: "POST", body: "plain" });

      expect(seen[0].type).toMatch(/^multipart\/form-data; boundary=----voicebot[0-9a-f]{24}$/);
      expect(seen[0].chunked).toBe(false);
      expect(Number(seen[0].length)).toBe(seen[0].body.length);
      const parsed = await new Response(seen[0].body, { headers: { "content-type": seen[0].type! } }).formData();
      expect(parsed.get("a")).toBe("1");
      expect(seen[1].body.toString()).toBe("plain");
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
