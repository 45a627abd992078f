import { describe, expect, it } from "vitest";
import { dialTwiml, digitsPlayMs, playDigitsTwiml, streamTwiml } from "./twilio-rest.js";

describe("TwiML escaping", () => {
  it("drops characters XML 1.0 forbids (controls, U+FFFE/U+FFFF, lone surrogates) and keeps every real character", () => {
    const twiml = streamTwiml("wss://voice.example.com/twilio", {
      from: "+1\u0000\u0008\u000b\u000c\u000e\u001f555",
      to: "\ud800+1\uffff555\udc00",
      name: "tab\tnewline\n<é & 😀>",
    });
    expect(twiml).toBe(
      `<Response><Connect><Stream url="wss://voice.example.com/twilio"><Parameter name="from" value="+1555"/>` +
        `<Parameter name="to" value="+1555"/><Parameter name="name" value="tab&#9;newline&#10;&lt;é &amp; 😀&gt;"/></Stream></Connect></Response>`,
    );
    // A line break or tab written as is would reach the stream as a space (XML's attribute-value normalisation).
    expect(streamTwiml("wss://x/twilio", { note: "a\r\nb" })).toContain('value="a&#13;&#10;b"');
    // A 500-character cut that split a pair leaves a lone half: gone too.
    expect(streamTwiml("wss://x/twilio", { to: "😀".slice(0, 1) })).toContain('<Parameter name="to" value=""/>');
    expect(dialTwiml("+15550100001")).toBe("<Response><Dial>+15550100001</Dial></Response>");
  });
});

describe("keypad tones TwiML", () => {
  it("writes a one-second pause (W) as the two half-second pauses Twilio documents (w), and refuses what is no key", () => {
    expect(playDigitsTwiml("1W2w#")).toBe('<Response><Play digits="1ww2w#"/></Response>');
    expect(digitsPlayMs("1W2w#")).toBe(300 + 1_000 + 300 + 500 + 300);
    expect(playDigitsTwiml("12a")).toBeUndefined();
  });
});
