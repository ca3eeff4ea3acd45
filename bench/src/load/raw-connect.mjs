// The connect scenario's client, on a bare TCP socket: the HTTP upgrade written as one string,
// the 101 read by a byte search, Socket.IO's open/CONNECT exchanged as raw WebSocket frames, and
// a close handshake. A `ws` client object per connect cost the single load-generator core more
// than the fastest servers spent on it, so the connect rate measured the client; this costs a
// fraction of that, the same for every system. Server side, nothing differs from a `ws` client:
// the same upgrade, frames and close handshake.
import net from "node:net";

const HEADER_END = Buffer.from("\r\n\r\n");
const SWITCHING = Buffer.from("HTTP/1.1 101");
// Any 16 bytes, base64: the server answers with their hash, which this client does not check.
const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
/** A masked close frame, code 1000, with an all-zero mask (see wire.mjs). */
const CLOSE_FRAME = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);

/** A masked text frame with an all-zero mask: the payload goes as is. */
function textFrame(text) {
  const payload = Buffer.from(text);
  const header =
    payload.length < 126
      ? Buffer.from([0x81, 0x80 | payload.length, 0, 0, 0, 0])
      : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff, 0, 0, 0, 0]);
  return Buffer.concat([header, payload]);
}

/**
 * Opens one authenticated connection: resolves once it is ready (part A: the 101; Socket.IO: its
 * namespace CONNECT accepted) with a `close()` that runs the close handshake and resolves when the
 * TCP connection is gone. Rejects on a refusal, an early close or the timeout.
 */
export function rawConnect(protocol, baseUrl, token, timeoutMs) {
  const { hostname, port } = new URL(baseUrl);
  const path =
    protocol === "socket.io"
      ? "/socket.io/?EIO=4&transport=websocket"
      : `/ws?token=${token}&presence=off`;
  const socket = net.connect(Number(port), hostname);
  socket.setNoDelay(true);
  const closed = new Promise((resolve) => socket.once("close", resolve));
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    let upgraded = false;
    let sentToken = false;
    const timer = setTimeout(() => fail(new Error("connect timeout")), timeoutMs);
    const fail = (error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    };
    const ready = () => {
      clearTimeout(timer);
      socket.removeAllListeners("data");
      socket.on("data", () => {}); // The server's close frame, read and dropped.
      socket.on("error", () => {}); // A reset while closing changes nothing measured.
      resolve({
        close() {
          socket.write(CLOSE_FRAME);
          return closed;
        },
      });
    };
    socket.once("connect", () =>
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    socket.once("error", fail);
    socket.once("close", () => fail(new Error("closed before ready")));
    socket.on("data", (chunk) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      if (!upgraded) {
        const end = buffered.indexOf(HEADER_END);
        if (end < 0) return;
        if (!buffered.subarray(0, SWITCHING.length).equals(SWITCHING)) {
          return fail(new Error(buffered.subarray(0, buffered.indexOf(13)).toString()));
        }
        upgraded = true;
        buffered = buffered.subarray(end + HEADER_END.length);
        if (protocol !== "socket.io") return ready();
      }
      // Socket.IO: unmasked text frames from the server (lengths up to 65535 bytes).
      while (buffered.length >= 2) {
        let start = 2;
        let length = buffered[1] & 0x7f;
        if (length === 127) return fail(new Error("unexpected long frame"));
        if (length === 126) {
          if (buffered.length < 4) return;
          length = buffered.readUInt16BE(2);
          start = 4;
        }
        if (buffered.length < start + length) return;
        const payload = buffered.subarray(start, start + length);
        buffered = buffered.subarray(start + length);
        if (payload[0] === 0x30 /* "0" Engine.IO open */ && !sentToken) {
          sentToken = true;
          socket.write(textFrame(`40{"token":"${token}"}`));
        } else if (payload[0] === 0x34 && payload[1] === 0x30 /* "40" CONNECT */) {
          return ready();
        } else if (payload[0] === 0x34 && payload[1] === 0x34 /* "44" CONNECT_ERROR */) {
          return fail(new Error(`refused: ${payload.toString()}`));
        }
      }
    });
  });
}
