// Where received files go. The WASM client asks a factory to `open(path, size)` a sink per
// file, then calls `write(Uint8Array)`, `close()` once the file's hash checked out, or
// `abort(reason)`. Nothing appears under the final name before `close()`. `open` resolves to
// null when the name is taken, and the client tries a numbered name.
//
// - folderSinks: a folder the person picked (File System Access API): NAME.part, renamed on close.
// - downloadSinks: a streamed download through the service worker (sw.js); flow-controlled
//   by credits so memory never holds more than a few chunks.
// - memorySinks: last resort when neither exists (no secure context): the file is kept as a
//   Blob (the browser may page it to disk) and downloaded at the end.

/** Register sw.js; resolves to the active worker, or null where service workers are unavailable. */
export async function registerWorker() {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return null;
  try {
    await navigator.serviceWorker.register('/sw.js', { scope: '/' });
    const reg = await navigator.serviceWorker.ready;
    return reg.active;
  } catch (e) {
    console.warn('punchdrop: service worker unavailable:', e);
    return null;
  }
}

function lastComponent(path) {
  return path.split('/').pop();
}

/** Chunks the worker may have queued before it asks for more. */
const INITIAL_CREDITS = 4;

class DownloadSink {
  constructor(port, frame) {
    this.port = port;
    this.frame = frame;
    this.credits = INITIAL_CREDITS;
    this.waiters = [];
    this.failed = null;
    port.onmessage = ({ data }) => {
      if (data.type === 'credit') {
        this.credits += 1;
      } else if (data.type === 'cancelled') {
        this.failed = new Error('the download was cancelled in the browser');
      }
      const w = this.waiters;
      this.waiters = [];
      w.forEach((f) => f());
    };
  }

  async write(chunk) {
    while (this.credits <= 0 && !this.failed) {
      await new Promise((resolve) => this.waiters.push(resolve));
    }
    if (this.failed) throw this.failed;
    this.credits -= 1;
    this.port.postMessage({ type: 'chunk', chunk }, [chunk.buffer]);
  }

  async close() {
    if (this.failed) throw this.failed;
    this.port.postMessage({ type: 'close' });
    this.cleanup();
  }

  abort(reason) {
    this.port.postMessage({ type: 'abort', reason: String(reason) });
    this.cleanup();
  }

  cleanup() {
    // The download manager owns the response once it started; the frame can go later.
    setTimeout(() => { this.frame.remove(); this.port.close(); }, 30_000);
  }
}

export function downloadSinks(worker) {
  return {
    async open(path, size) {
      const id = crypto.randomUUID();
      const { port1, port2 } = new MessageChannel();
      const registered = new Promise((resolve) => {
        port1.onmessage = ({ data }) => { if (data.type === 'registered') resolve(); };
      });
      worker.postMessage({ type: 'download', id, name: lastComponent(path), size }, [port2]);
      await registered;
      const frame = document.createElement('iframe');
      frame.hidden = true;
      frame.src = `/dl/${id}`;
      document.body.appendChild(frame);
      return new DownloadSink(port1, frame);
    },
  };
}

async function exists(dir, name) {
  try {
    await dir.getFileHandle(name);
    return true;
  } catch (e) {
    // A folder of that name counts as taken too.
    return e.name === 'TypeMismatchError';
  }
}

export function folderSinks(root) {
  return {
    async open(path, size) {
      const parts = path.split('/');
      const name = parts.pop();
      let dir = root;
      for (const p of parts) dir = await dir.getDirectoryHandle(p, { create: true });
      if (await exists(dir, name)) return null;
      const partName = `${name}.part`;
      const handle = await dir.getFileHandle(partName, { create: true });
      const writable = await handle.createWritable();
      return {
        write: (chunk) => writable.write(chunk),
        async close() {
          await writable.close();
          if (typeof handle.move === 'function') {
            await handle.move(name);
          } else {
            // Older browsers: copy into place (still only after verification).
            const file = await handle.getFile();
            const final = await (await dir.getFileHandle(name, { create: true })).createWritable();
            await file.stream().pipeTo(final);
            await dir.removeEntry(partName);
          }
        },
        abort() {
          writable.abort().catch(() => {}).finally(() => dir.removeEntry(partName).catch(() => {}));
        },
      };
    },
  };
}

export function memorySinks() {
  return {
    async open(path) {
      let parts = [];
      return {
        async write(chunk) { parts.push(new Blob([chunk])); },
        async close() {
          const url = URL.createObjectURL(new Blob(parts));
          parts = [];
          const a = document.createElement('a');
          a.href = url;
          a.download = lastComponent(path);
          a.click();
          setTimeout(() => URL.revokeObjectURL(url), 60_000);
        },
        abort() { parts = []; },
      };
    },
  };
}
