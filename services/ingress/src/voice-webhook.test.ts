import { createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { signedPayload } from "./signature.js";

describe("signedPayload", () => {
  it("gives the signature of Twilio's own example (docs: Validating requests)", () => {
    const form = new URLSearchParams({ CallSid: "CA1234567890ABCDE", Caller: "+12349013030", Digits: "1234", From: "+12349013030", To: "+18005551212" });
    const payload = signedPayload("https://mycompany.com/myapp.php?foo=1&bar=2", form);
    expect(createHmac("sha1", "12345").update(payload).digest("base64")).toBe("0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
  });

  it("sorts fields by name case-sensitively, and repeated fields by value", () => {
    const form = new URLSearchParams([["b", "2"], ["B", "1"], ["a", "z"], ["a", "y"]]);
    expect(signedPayload("https://x/y", form)).toBe("https://x/yB1ayazb2");
  });
});
