// Where received files go. The WASM client asks a factory to `open(path, size, offset)` a sink
// per file, then calls `write(Uint8Array)`, `close()` once the file's hash checked out,
// `abort(reason)` (the file is thrown away) or `keep()` (the run ends with the file unfinished:
// keep what can be continued). Nothing appears under the final name before `close()`. `open`
// resolves to null when the name is taken, and the client tries a numbered name.
//
// - folderSinks: a folder the person picked (File System Access API): NAME.part, renamed on
//   close. `held(path, size)` tells the client what the folder holds already (a part to
//   continue, or the file itself), and `open` with an offset continues that part. Written
//   bytes are committed to the part from time to time (see `commitDue`) so a reload loses
//   little; `keep()` commits the rest.
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

  // A download cannot be appended to later: an unfinished one is dropped.
  keep() {
    this.abort('the transfer stopped before this file was complete');
  }

  cleanup() {
    // The download manager owns the response once it started; the frame can go later.
    setTimeout(() => { this.frame.remove(); this.port.close(); }, 30_000);
  }
}

export function downloadSinks(worker) {
  return {
    async open(path, size, offset = 0) {
      if (offset > 0) throw new Error('a download cannot be continued');
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

/** The file `name` in `dir`, or null. */
async function fileIn(dir, name) {
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch {
    return null;
  }
}

/** Bytes written but not yet in the part are committed once they reach this, or half of what
 * the part holds if more: a commit copies the part (the browser writes through a swap file),
 * so growing the step with the part keeps the copying within three times the file's size. */
const COMMIT_MIN = 16 << 20;

function commitDue(committed, written) {
  return written - committed >= Math.max(COMMIT_MIN, committed / 2);
}

export function folderSinks(root) {
  // Parts being thrown away, by path: opening the same part again waits for that first.
  const aborting = new Map();
  const dirOf = async (parts, create) => {
    let dir = root;
    for (const p of parts) dir = await dir.getDirectoryHandle(p, { create });
    return dir;
  };
  return {
    async held(path, size) {
      const parts = path.split('/');
      const name = parts.pop();
      let dir;
      try {
        dir = await dirOf(parts, false);
      } catch {
        return null;
      }
      const saved = await fileIn(dir, name);
      if (saved && saved.size === size) return { file: saved, whole: true };
      const part = await fileIn(dir, `${name}.part`);
      if (part && part.size > 0 && part.size <= size) return { file: part, whole: false };
      return null;
    },

    async open(path, size, offset = 0) {
      const parts = path.split('/');
      const name = parts.pop();
      await aborting.get(path);
      const dir = await dirOf(parts, true);
      if (offset === 0 && await exists(dir, name)) return null;
      const partName = `${name}.part`;
      const handle = await dir.getFileHandle(partName, { create: true });
      if (offset > 0 && (await handle.getFile()).size < offset) {
        throw new Error('the partial file to continue is shorter than it was');
      }
      let writable = await handle.createWritable({ keepExistingData: offset > 0 });
      if (offset > 0) {
        await writable.truncate(offset);
        await writable.seek(offset);
      }
      let written = offset;
      let committed = offset;
      const commit = async () => {
        await writable.close();
        committed = written;
        writable = await handle.createWritable({ keepExistingData: true });
        await writable.seek(written);
      };
      return {
        async write(chunk) {
          await writable.write(chunk);
          written += chunk.byteLength;
          if (commitDue(committed, written)) await commit();
        },
        async close() {
          await writable.close();
          // A part continued after a reload: its name may have been taken meanwhile. Never
          // overwrite; the verified file stays as the part.
          if (await exists(dir, name)) {
            throw new Error(`“${name}” appeared in the folder meanwhile; the received file is kept as “${partName}”`);
          }
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
          const gone = writable.abort().catch(() => {})
            .finally(() => dir.removeEntry(partName).catch(() => {}))
            .finally(() => aborting.delete(path));
          aborting.set(path, gone);
        },
        // Everything written goes into the part, which opening the link again continues.
        keep() {
          writable.close().catch(() => {});
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
        keep() { parts = []; },
      };
    },
  };
}
