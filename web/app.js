// The page: a thin shell around the WASM client (wasm-client/). It gathers files, shows the
// client's events and offers storage for received files. The protocol, the PAKE and the
// connection all live in the WASM.
//
// For tests and tools, every client event is appended to window.punchdropEvents, and the
// current view is document.body.dataset.state: loading, ready, pick, waiting, connecting,
// offer, transferring, done, error.

import init, { Client, qrSvg, lookInboxes } from '/pkg/wasm_client.js';
import { registerWorker, downloadSinks, folderSinks, memorySinks } from '/sinks.js';
import { deviceFor, defaultDeviceName, remembered, remember, unpaired, forget, rememberedInbox } from '/device.js';

const $ = (id) => document.getElementById(id);
window.punchdropEvents = [];

let client = null;
let worker = null;
let sending = false;
let total = 0;
let startedAt = 0;
let savedWhere = '';
// What the progress title said before `reconnecting` (put back on `reconnected`).
let titleBeforeReconnecting = '';
// This receive page was reloaded while its transfer ran (the link is kept for the tab, see main).
let reloaded = false;
const LINK_KEY = `punchdrop:link:${location.pathname}`;
// On an inbox's link (`/i/ID#SECRET`): files go to that inbox, its id and (once looked up)
// name; whether this drop pairs this browser with it.
let inboxLink = null;
let inboxId = null;
let inboxName = null;
let pairing = false;
// Asks the next load of an inbox's page to open its pairing box (a drop was refused as unpaired).
const OPEN_PAIRING = 'punchdrop:open-pairing';

function setState(state) {
  document.body.dataset.state = state;
}

function fail(message) {
  $('error').textContent = message;
  setState('error');
}

function human(bytes) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let n = bytes;
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return '';
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// Why a relay was needed, for each `reason` the client reports (protocol::path::RelayReason).
const RELAY_REASONS = {
  forced: 'relay forced',
  udp_blocked: 'UDP is blocked here, so the relay is reached over TCP',
  peer_offered_no_direct: 'the other device offered no direct address',
  peer_got_no_stun: 'the other device could not learn its public address (UDP blocked there?)',
  no_direct_pair: 'no direct route worked (a strict NAT or firewall on either side)',
  peer_relays: 'the other device sends through the relay',
};

function describePath(ev) {
  const how = ev.path === 'relay'
    ? 'Relayed through the server (still end-to-end encrypted)'
    : 'Direct connection';
  const why = ev.reason ? ` · ${RELAY_REASONS[ev.reason] ?? ev.reason}` : '';
  const pair = (p) => `${p.local} ↔ ${p.remote}, ${p.protocol.toUpperCase()}`;
  const theirs = ev.peer ? ` · the other device: ${ev.peer.path}, ${pair(ev.peer)}` : '';
  return `${how} · ${pair(ev)}${why}${theirs}`;
}

function fillList(list, entries) {
  list.replaceChildren();
  const shown = entries.slice(0, 200);
  for (const e of shown) {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = e.dir ? `${e.path}/` : e.path;
    const size = document.createElement('span');
    size.className = 'size';
    size.textContent = e.dir ? 'folder' : human(e.size);
    li.append(name, size);
    list.append(li);
  }
  if (entries.length > shown.length) {
    const li = document.createElement('li');
    li.className = 'more';
    li.textContent = `and ${entries.length - shown.length} more`;
    list.append(li);
  }
}

/** A share shows its code only once asked for one (a room without a code cannot be joined by
 * guessing its number). */
function showCode(code) {
  $('share-code').textContent = code ?? '';
  $('code-box').hidden = !code;
  $('show-code').hidden = !!code;
}

function onEvent(ev) {
  window.punchdropEvents.push(ev);
  switch (ev.event) {
    case 'ready': {
      const link = $('share-link');
      link.href = ev.link;
      link.textContent = ev.link;
      showCode(ev.code);
      $('qr').innerHTML = qrSvg(ev.link) ?? '';
      setState('waiting');
      break;
    }
    case 'code':
      showCode(ev.code);
      break;
    case 'joined':
      $('progress-title').textContent = 'Connecting…';
      setState('connecting');
      break;
    case 'verify':
      for (const el of document.querySelectorAll('.verify-words')) el.textContent = ev.words.join(' ');
      for (const el of document.querySelectorAll('.verify')) el.hidden = false;
      break;
    case 'pick':
      $('send-title').textContent = 'Choose what to send';
      $('send-hint').textContent = 'The other device is connected and waiting to receive.';
      setState('pick');
      break;
    case 'connected':
      $('path-text').textContent = describePath(ev);
      $('progress-title').textContent = sending
        ? 'Waiting for the receiver to accept…'
        : 'Connected';
      break;
    case 'reconnecting':
      // Over once done (a blip in the last moments changes nothing the person needs).
      if (document.body.dataset.state === 'done') break;
      if (!titleBeforeReconnecting) titleBeforeReconnecting = $('progress-title').textContent;
      $('progress-title').textContent = 'Reconnecting…';
      $('path-text').textContent = {
        peer_left: 'The other device left; waiting for it to come back.',
        path_down: 'The connection went quiet; bringing it back.',
      }[ev.reason] ?? 'The connection was lost; getting it back.';
      break;
    case 'reconnected':
      if (document.body.dataset.state === 'done') break;
      $('path-text').textContent = describePath(ev);
      // Back to what it said before (waiting for an accept, sending, receiving).
      $('progress-title').textContent = titleBeforeReconnecting || (sending ? 'Sending…' : 'Receiving…');
      titleBeforeReconnecting = '';
      break;
    case 'offer': {
      const n = ev.files;
      $('offer-summary').textContent = `${n} file${n === 1 ? '' : 's'}, ${human(ev.bytes)}. Save them?`;
      fillList($('offer-list'), ev.entries);
      $('accept-folder').hidden = typeof window.showDirectoryPicker !== 'function';
      $('save-note').textContent = reloaded && window.showDirectoryPicker
        ? 'This transfer was interrupted. Save to the same folder to continue where it stopped; a download starts over.'
        : reloaded
          ? 'This transfer was interrupted; a download starts over from the beginning.'
          : worker || window.showDirectoryPicker
            ? ''
            : 'This page is not served securely, so files are kept in memory until complete.';
      setState('offer');
      break;
    }
    case 'accepted':
      total = ev.bytes;
      startedAt = performance.now();
      $('progress-title').textContent = sending ? 'Sending…' : 'Receiving…';
      progress(0);
      setState('transferring');
      break;
    case 'progress':
      progress(ev.bytes);
      break;
    case 'file_restarted':
      $('path-text').textContent = 'A file changed at the sender since part of it arrived: it starts over.';
      break;
    case 'done': {
      sessionStorage.removeItem(LINK_KEY);
      if (inboxLink) {
        remember(inboxLink, inboxId, inboxName, pairing);
        $('pair-code').value = '';
      }
      progress(total || ev.bytes);
      const rate = ev.seconds > 0 ? ` at ${human(ev.bytes / ev.seconds)}/s` : '';
      $('progress-title').textContent = sending ? 'Sent' : 'Received';
      $('progress-bytes').textContent = `${ev.files} file${ev.files === 1 ? '' : 's'}, ${human(ev.bytes)}`;
      $('progress-rate').textContent = `${duration(ev.seconds)}${rate}`;
      $('path-text').textContent = describePath(ev);
      $('done-note').textContent = sending ? '' : savedWhere;
      setState('done');
      break;
    }
    case 'declined':
      sessionStorage.removeItem(LINK_KEY);
      fail('You declined the files. Nothing was saved.');
      break;
    case 'error':
      sessionStorage.removeItem(LINK_KEY);
      if (inboxLink && /paired devices|pairing code/.test(ev.message)) {
        sessionStorage.setItem(OPEN_PAIRING, '1');
        if (/paired devices/.test(ev.message)) unpaired(inboxId);
      }
      fail(ev.message);
      break;
    default:
      break;
  }
}

function progress(bytes) {
  const pct = total > 0 ? (bytes / total) * 100 : 100;
  $('bar-fill').style.width = `${pct.toFixed(1)}%`;
  $('bar-fill').parentElement.setAttribute('aria-valuenow', pct.toFixed(0));
  const secs = (performance.now() - startedAt) / 1000;
  const rate = secs > 0.2 ? bytes / secs : 0;
  $('progress-bytes').textContent = `${human(bytes)} of ${human(total)}`;
  $('progress-rate').textContent = rate > 0
    ? `${human(rate)}/s · ${duration((total - bytes) / rate)} left`
    : '';
}

// --- choosing files -------------------------------------------------------------------

function fromInput(input) {
  return Array.from(input.files, (file) => ({ file, path: file.webkitRelativePath || file.name }));
}

async function readDirectory(dirEntry, out) {
  const reader = dirEntry.createReader();
  let children = [];
  // readEntries answers in batches until it returns none.
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (batch.length === 0) break;
    children = children.concat(batch);
  }
  out.push({ path: dirEntry.fullPath.replace(/^\//, ''), dir: true });
  for (const child of children) await walk(child, out);
}

async function walk(entry, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: entry.fullPath.replace(/^\//, '') });
  } else if (entry.isDirectory) {
    await readDirectory(entry, out);
  }
}

async function fromDrop(dataTransfer) {
  const entries = Array.from(dataTransfer.items ?? [])
    .filter((i) => i.kind === 'file')
    .map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.length === 0 || entries.some((e) => e === null)) {
    return Array.from(dataTransfer.files, (file) => ({ file, path: file.name }));
  }
  const out = [];
  for (const e of entries) await walk(e, out);
  return out;
}

function send(entries) {
  if (entries.length === 0) return;
  sending = true;
  fillList($('send-list'), entries.map((e) => ({ path: e.path, size: e.file?.size ?? 0, dir: e.dir })));
  if (document.body.dataset.state === 'pick') {
    setState('connecting');
    client.provideFiles(entries);
    return;
  }
  setState('connecting');
  if (inboxLink) {
    $('progress-title').textContent = 'Knocking on the inbox…';
    dropIntoInbox(entries);
    return;
  }
  $('progress-title').textContent = 'Creating a link…';
  client.share(entries).catch(() => {});
}

/** Drop `entries` into the inbox, proving this browser's device key for it (and pairing it
 * with the code typed, if any). */
async function dropIntoInbox(entries) {
  const pair = $('pair-code').value.trim() || null;
  const name = $('device-name').value.trim() || defaultDeviceName();
  const { device, why } = await deviceFor(inboxId, name, pair);
  if (!device && pair) {
    fail(`This browser cannot keep a device key on this page (${why}), so it cannot pair. Open the inbox's https link in a current browser.`);
    return;
  }
  pairing = !!pair;
  client.dropTo(inboxLink, entries, device).catch(() => {});
}

/** An inbox's page: its name and whether it is online, the pairing box. */
function showInbox() {
  inboxId = location.pathname.slice('/i/'.length).toLowerCase();
  const known = rememberedInbox(inboxId);
  inboxName = known?.name ?? null;
  const title = () => {
    $('send-title').textContent = inboxName ? `Send files to ${inboxName}` : 'Send files to this inbox';
  };
  title();
  $('send-hint').textContent = 'They go straight to the inbox, encrypted. Nothing is stored on a server.';
  $('code-form').hidden = true;
  $('pair-box').hidden = false;
  $('device-name').value = defaultDeviceName();
  if (known?.paired) $('pair-summary').textContent = 'This browser is paired with this inbox';
  $('pair-box').open = sessionStorage.getItem(OPEN_PAIRING) === '1';
  sessionStorage.removeItem(OPEN_PAIRING);
  $('retry').hidden = false;
  $('start-over').hidden = true;
  lookInboxes([inboxLink]).then(([found]) => {
    if (found?.name) {
      inboxName = found.name;
      title();
    }
    $('inbox-offline').hidden = found?.online !== false;
    document.body.dataset.inbox = found?.online === true ? 'online' : found?.online === false ? 'offline' : 'unknown';
  }).catch(() => {});
}

/** The start page: the inboxes this browser sent to, each one click from a drop. */
function showRemembered() {
  const list = remembered();
  $('inboxes-box').hidden = list.length === 0;
  if (list.length === 0) return;
  const ul = $('inbox-list');
  ul.replaceChildren();
  const states = [];
  for (const inbox of list) {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = inbox.link;
    a.className = 'name';
    a.textContent = inbox.name ?? `Inbox ${inbox.id.slice(0, 6)}…`;
    const state = document.createElement('span');
    state.className = 'size';
    state.textContent = 'checking…';
    const drop = document.createElement('button');
    drop.className = 'forget';
    drop.type = 'button';
    drop.title = 'Forget this inbox';
    drop.textContent = '✕';
    drop.addEventListener('click', () => { forget(inbox.id); showRemembered(); });
    li.append(a, state, drop);
    ul.append(li);
    states.push([inbox, a, state]);
  }
  lookInboxes(list.map((i) => i.link)).then((found) => {
    found.forEach((f, i) => {
      const [inbox, a, state] = states[i];
      state.textContent = f.online === true ? 'online' : f.online === false ? 'offline' : 'unreachable';
      state.classList.toggle('state-online', f.online === true);
      if (f.name && f.name !== inbox.name) {
        a.textContent = f.name;
        remember(inbox.link, inbox.id, f.name, inbox.paired);
      }
    });
  }).catch(() => {});
}

function wire() {
  for (const id of ['file-input', 'folder-input']) {
    $(id).addEventListener('change', (e) => {
      const entries = fromInput(e.target);
      e.target.value = '';
      send(entries);
    });
  }
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    try {
      send(await fromDrop(e.dataTransfer));
    } catch (err) {
      fail(`Cannot read what was dropped: ${err.message}`);
    }
  });
  // Dropping anywhere else must not navigate away from a running transfer.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());

  $('code-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const code = $('code-input').value.trim();
    if (!code) return;
    setState('connecting');
    $('progress-title').textContent = 'Looking for the sender…';
    client.open(code).catch(() => {});
  });
  $('copy-link').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('share-link').href);
      $('copy-link').textContent = 'Copied';
    } catch {
      $('copy-link').textContent = 'Select and copy the link';
    }
  });
  $('accept').addEventListener('click', () => {
    client.accept(worker ? downloadSinks(worker) : memorySinks());
    savedWhere = 'Every file was verified and saved to your downloads folder.';
    setState('transferring');
  });
  $('accept-folder').addEventListener('click', async () => {
    let dir;
    try {
      dir = await window.showDirectoryPicker({ mode: 'readwrite' });
    } catch {
      return; // picker dismissed: still deciding
    }
    client.accept(folderSinks(dir));
    savedWhere = `Every file was verified and saved in “${dir.name}”.`;
    setState('transferring');
  });
  $('decline').addEventListener('click', () => client.decline());
  $('cancel').addEventListener('click', () => client.cancel());
  $('show-code').addEventListener('click', () => client.showCode());
  $('retry').addEventListener('click', () => location.reload());
  $('stop-sharing').addEventListener('click', () => { client.cancel(); location.assign('/'); });
  window.addEventListener('beforeunload', (e) => {
    if (['waiting', 'connecting', 'transferring', 'offer'].includes(document.body.dataset.state)) {
      e.preventDefault();
    }
  });
}

/** How long a reload may use the kept link: the server's longest room lifetime (2 h). */
const KEEP_LINK_MS = 2 * 60 * 60 * 1000;

/** The link this tab kept for a reload, unless it is stale. */
function keptLink() {
  try {
    const { link, until } = JSON.parse(sessionStorage.getItem(LINK_KEY) ?? 'null') ?? {};
    if (typeof link === 'string' && until > Date.now()) return link;
  } catch {
    // Not ours, or broken: forget it.
  }
  sessionStorage.removeItem(LINK_KEY);
  return null;
}

async function main() {
  if (typeof RTCPeerConnection !== 'function' || typeof WebAssembly !== 'object') {
    fail('This browser cannot run punchdrop: it lacks WebRTC or WebAssembly. Use a current Chrome, Edge, Firefox or Safari.');
    return;
  }
  try {
    await init({ module_or_path: '/pkg/wasm_client_bg.wasm' });
  } catch (e) {
    fail(`Could not load punchdrop: ${e.message}`);
    return;
  }
  worker = await registerWorker();
  client = new Client(location.origin, onEvent);
  wire();
  if (/^\/i\/[^/]+$/.test(location.pathname)) {
    // An inbox's link stays valid (it is kept in the address bar, to bookmark).
    if (location.hash.length < 2) {
      fail('This inbox link is incomplete: the part after “#” is missing. Ask for the whole link.');
      return;
    }
    inboxLink = location.href;
    showInbox();
    setState('ready');
    return;
  }
  const room = /^\/r\/[^/]+$/.test(location.pathname);
  if (!room) {
    showRemembered();
    setState('ready');
    return;
  }
  // The link is kept for this tab only (sessionStorage), so a reload can join the room again
  // and continue: the secret leaves the address bar and the history. It goes once the
  // transfer is done, declined or failed, and is not used after a room's longest lifetime
  // (a browser restoring or duplicating the tab copies sessionStorage).
  const kept = keptLink();
  if (location.hash.length < 2 && !kept) {
    fail('This link is incomplete: the part after “#” is missing. Ask the sender for the whole link.');
    return;
  }
  reloaded = location.hash.length < 2;
  const link = reloaded ? kept : location.href;
  sessionStorage.setItem(LINK_KEY, JSON.stringify({ link, until: Date.now() + KEEP_LINK_MS }));
  history.replaceState(null, '', location.pathname);
  setState('connecting');
  $('progress-title').textContent = 'Connecting to the other device…';
  client.open(link).catch(() => {});
}

main();
