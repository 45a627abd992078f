// 16-bit linear PCM, little-endian (WAV and Twilio/most engines' byte order).

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Bytes -> samples. On a little-endian host with an even byteOffset this is a zero-copy view of `buf`
 * (writes to one show in the other); otherwise the samples are copied. A trailing odd byte is ignored.
 */
export function l16FromBytes(buf: Uint8Array): Int16Array {
  const n = buf.length >> 1;
  if (HOST_IS_LITTLE_ENDIAN && buf.byteOffset % 2 === 0) return new Int16Array(buf.buffer, buf.byteOffset, n);
  // Int16Array cannot view an odd offset: copy through a DataView (also handles big-endian hosts).
  const view = new DataView(buf.buffer, buf.byteOffset, n * 2);
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getInt16(i * 2, true);
  return out;
}

/** Samples -> little-endian bytes. Zero-copy view of `pcm` on little-endian hosts. */
export function l16ToBytes(pcm: Int16Array): Uint8Array {
  if (HOST_IS_LITTLE_ENDIAN) return new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
  const out = new Uint8Array(pcm.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < pcm.length; i++) view.setInt16(i * 2, pcm[i], true);
  return out;
}
