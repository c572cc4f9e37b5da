// What this browser keeps about inboxes (see protocol::device and protocol::inbox):
//
// - A device key per inbox id: an Ed25519 key made by WebCrypto as non-extractable and kept
//   in IndexedDB. Only this origin's pages can sign with it and nobody can read the private
//   key out; one key per inbox, so two inboxes cannot tell they met the same browser.
// - The inboxes this browser sent to (localStorage): their links, names and whether this
//   browser is paired with them, to drop again with one click from the start page. The
//   links hold the inboxes' secrets, as a bookmark would; "forget" removes one. The start
//   page asks the server which of them are online (`look`: their ids, never the secrets).

const DB = 'punchdrop';
const STORE = 'device-keys';
const REMEMBERED = 'punchdrop:inboxes';

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

async function store(mode) {
  const open = indexedDB.open(DB, 1);
  open.onupgradeneeded = () => open.result.createObjectStore(STORE);
  const db = await request(open);
  return db.transaction(STORE, mode).objectStore(STORE);
}

/** This browser's key pair for inbox `id`, made on first use. */
async function keyPair(id) {
  const found = await request((await store('readonly')).get(id));
  if (found) return found;
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  await request((await store('readwrite')).put(pair, id));
  return pair;
}

/**
 * The device the WASM client proves to inbox `id` (`{key, name, pair, sign}`), or `null`
 * with the reason when this browser cannot keep a key (no WebCrypto Ed25519, or a page not
 * served securely). The name goes only with a pairing code: the inbox keeps it then, and
 * knows this browser by its key after.
 */
export async function deviceFor(id, name, pair) {
  try {
    if (!globalThis.crypto?.subtle || !globalThis.indexedDB) throw new Error('not a secure page');
    const keys = await keyPair(id);
    const key = new Uint8Array(await crypto.subtle.exportKey('raw', keys.publicKey));
    const sign = async (bytes) => new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, keys.privateKey, bytes));
    return { device: { key, name: pair ? name : '', pair, sign }, why: null };
  } catch (e) {
    return { device: null, why: e.message };
  }
}

/** A name for this device, from what the browser says it runs on. */
export function defaultDeviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox'
    : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS'
    : /Mac OS X/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : '';
  return os ? `${browser} on ${os}` : browser;
}

/** The inboxes this browser sent to, newest first: `[{link, id, name, paired, at}]`. */
export function remembered() {
  try {
    const list = JSON.parse(localStorage.getItem(REMEMBERED) ?? '[]');
    return Array.isArray(list) ? list.filter((i) => typeof i?.link === 'string') : [];
  } catch {
    return [];
  }
}

function save(list) {
  try {
    localStorage.setItem(REMEMBERED, JSON.stringify(list));
  } catch {
    // Storage blocked or full: the page works on without remembering.
  }
}

/** Remember (or refresh) inbox `link` after a drop into it; `paired`: this drop paired. */
export function remember(link, id, name, paired) {
  const old = remembered().find((i) => i.id === id);
  const entry = { link, id, name: name ?? old?.name ?? null, paired: paired || !!old?.paired, at: Date.now() };
  save([entry, ...remembered().filter((i) => i.id !== id)].slice(0, 20));
}

/** The inbox refused this browser as unpaired (revoked, or never paired). */
export function unpaired(id) {
  save(remembered().map((i) => (i.id === id ? { ...i, paired: false } : i)));
}

export function forget(id) {
  save(remembered().filter((i) => i.id !== id));
}

/** What is remembered of inbox `id`. */
export function rememberedInbox(id) {
  return remembered().find((i) => i.id === id) ?? null;
}
