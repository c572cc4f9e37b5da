// punchdrop's service worker: turns a stream of chunks posted by the page into a download,
// so a received file goes to disk as it arrives instead of into memory.
//
// The page posts {type: 'download', id, name, size} with a MessagePort, then navigates a
// hidden frame to /dl/ID; we answer that request with a ReadableStream fed from the port.
// Flow control: each time the stream wants more (pull), the page gets a credit; the page
// sends a chunk only against a credit, so at most a few chunks wait here.

const pending = new Map();

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('message', (event) => {
  const data = event.data;
  if (!data || data.type !== 'download' || !event.ports[0]) return;
  const port = event.ports[0];
  const stream = new ReadableStream({
    start(controller) {
      port.onmessage = ({ data: msg }) => {
        if (msg.type === 'chunk') {
          controller.enqueue(msg.chunk);
        } else if (msg.type === 'close') {
          controller.close();
          port.close();
        } else if (msg.type === 'abort') {
          controller.error(new Error(msg.reason || 'aborted'));
          port.close();
        }
      };
    },
    pull() {
      port.postMessage({ type: 'credit' });
    },
    cancel() {
      port.postMessage({ type: 'cancelled' });
    },
  }, new CountQueuingStrategy({ highWaterMark: 4 }));
  pending.set(data.id, { stream, name: data.name, size: data.size });
  port.postMessage({ type: 'registered' });
});

function attachment(name) {
  // RFC 6266 / 5987: an ASCII fallback plus the exact UTF-8 name.
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith('/dl/')) return;
  const id = url.pathname.slice('/dl/'.length);
  const entry = pending.get(id);
  if (!entry) {
    event.respondWith(new Response('This download is no longer available.', { status: 404 }));
    return;
  }
  pending.delete(id);
  event.respondWith(new Response(entry.stream, {
    headers: {
      'Content-Type': 'application/octet-stream',
      'Content-Disposition': attachment(entry.name),
      'Content-Length': String(entry.size),
      'X-Content-Type-Options': 'nosniff',
      'Cache-Control': 'no-store',
    },
  }));
});
