// An 8-bit greyscale PNG encoder, for the drawing sent to the server.
//
// A canvas's own toDataURL always writes RGBA. The drawing is black on white, so one
// channel carries all of it: as grey the upload is about a third of the bytes, and the
// service spends about a quarter less CPU on the request (README, "Serving benchmark").
// The browser's CompressionStream does the deflating; this file only frames the PNG.

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

const CRC_TABLE = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A PNG chunk: length, type, data, and the CRC of type and data. */
function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** Whether this browser can encode (CompressionStream: Chromium 80, Firefox 113, Safari 16.4). */
export const canEncodeGreyPNG = typeof CompressionStream === 'function';

/**
 * Encode `grey` (width * height bytes, row by row, 0 black .. 255 white) as an 8-bit
 * greyscale PNG. Resolves to its bytes.
 */
export async function encodeGreyPNG(grey, width, height) {
  // Every row gets filter type 0 (none): on black-on-white drawings it compressed
  // smaller than Up or Sub, and the server then has nothing to undo: it only inflates
  // (service/preprocess.py).
  const raw = new Uint8Array(height * (width + 1));
  for (let y = 0; y < height; y++) raw.set(grey.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  // CompressionStream's "deflate" is the zlib format (RFC 1950), which is what IDAT holds.
  const deflated = new Blob([raw]).stream().pipeThrough(new CompressionStream('deflate'));
  const idat = new Uint8Array(await new Response(deflated).arrayBuffer());
  const ihdr = new Uint8Array(13);
  const view = new DataView(ihdr.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  ihdr[8] = 8; // bit depth; colour type 0 (grey), compression, filter and interlace stay 0
  const parts = [Uint8Array.from(SIGNATURE), chunk('IHDR', ihdr), chunk('IDAT', idat), chunk('IEND', new Uint8Array(0))];
  const png = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    png.set(p, at);
    at += p.length;
  }
  return png;
}

/** `bytes` as a data: URL of type image/png. */
export function pngDataURL(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return `data:image/png;base64,${btoa(binary)}`;
}
