/**
 * wsevents browser client: one dependency-free ES module.
 *
 *   import { WsClient, WsClientError } from "/wsevents-client.js";
 *   const client = new WsClient("/ws", { reconnect: true });
 *   client.on("message", "/chat/rooms/*", ({ path, data }) => console.log(path, data));
 *   await client.subscribe("/chat/rooms/lobby");
 *   client.send("message", "/chat/rooms/lobby", { text: "hello" });
 *   const me = await client.call("rpc", "/whoami");
 *
 * It speaks the wsevents protocol, the one of @wooksjs/event-ws: RPC calls with ids and
 * timeouts, fire-and-forget sends with a bounded offline queue, subscriptions replayed
 * after reconnects, push listeners by exact path or trailing-"*" prefix, reconnects with
 * full-jitter backoff, presence rooms (client.presence(room, join): members, onChange,
 * count, list; resynchronised after reconnects), history rooms recovered after reconnects
 * (resubscribed with `since`, pushes handed over once and in offset order), and with
 * `resume: true` sessions resumed with `?session=` and calls retried with their `idem`.
 * Durations are milliseconds.
 */

const DEFAULT_RPC_TIMEOUT = 10000;
const DEFAULT_QUEUE_SIZE = 1000;
const DEFAULT_ACCEPT_WINDOW = 100;
const CLIENT_CLOSE_REASON = "Client closed";
const DEFAULT_REFRESH_BEFORE = 5000;
const MAX_IDEM_LENGTH = 64;

/**
 * Close codes after which the client does not reconnect by itself: 4401 token expired,
 * 4403 revoked, 4408 authentication timeout, 4429 rate limit exceeded.
 */
export const FINAL_CLOSE_CODES = new Set([4401, 4403, 4408, 4429]);

/**
 * An RPC failed: the server's error reply, 408 (timeout) or 503 (not connected).
 * `details` is the error reply's `details` (e.g. the failing fields of a 400 validation
 * error, `[{path: ["text"], message: "..."}]`), or null when it has none. `retryAfter` is
 * the error reply's `retry_after` in seconds (a rate limit's 429), or null.
 */
export class WsClientError extends Error {
  constructor(code, message, details = null, retryAfter = null) {
    super(message ?? `WsClientError ${code}`);
    this.name = "WsClientError";
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/**
 * The server closed the socket before it was ready: it refused the connection (an
 * on_connect hook raised: 1008 for a 4xx WsError, 1011 otherwise). `code` and `closeCode` are
 * the close code, `message` and `reason` its reason.
 */
export class WsConnectionRefused extends WsClientError {
  constructor(closeCode, reason) {
    super(closeCode, reason || `Connection refused (${closeCode})`);
    this.name = "WsConnectionRefused";
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/**
 * Reconnect delays: the ceiling of attempt n (0-based) is baseDelay * 2**n
 * ("exponential") or baseDelay * (n + 1) ("linear"), capped at maxDelay; the delay is
 * drawn uniformly from [0, ceiling] ("full jitter").
 */
export class Backoff {
  constructor({
    baseDelay = 1000,
    maxDelay = 30000,
    maxRetries = Infinity,
    backoff = "exponential",
    random = Math.random,
  } = {}) {
    if (!(baseDelay >= 0) || !(maxDelay >= baseDelay)) {
      throw new RangeError("need 0 <= baseDelay <= maxDelay");
    }
    if (!(maxRetries >= 0)) throw new RangeError("maxRetries must be >= 0");
    if (backoff !== "exponential" && backoff !== "linear") {
      throw new RangeError(`backoff must be "exponential" or "linear", not ${backoff}`);
    }
    Object.assign(this, { baseDelay, maxDelay, maxRetries, backoff, random });
    this.attempt = 0;
  }

  ceiling(attempt) {
    const raw =
      this.backoff === "exponential"
        ? this.baseDelay * 2 ** Math.min(attempt, 62)
        : this.baseDelay * (attempt + 1);
    return Math.min(raw, this.maxDelay);
  }

  /** The delay before the next attempt, or null when maxRetries are spent. */
  next() {
    if (this.attempt >= this.maxRetries) return null;
    const delay = this.random() * this.ceiling(this.attempt);
    this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}

/** Push listeners by event: exact paths, or patterns ending in "*" matching a prefix. */
class Listeners {
  constructor() {
    this.exact = new Map(); // "event\0path" -> array of entries
    this.prefix = []; // entries
  }

  add(event, pattern, handler) {
    const entry = { event, handler, prefix: "" };
    if (pattern.endsWith("*")) {
      entry.prefix = pattern.slice(0, -1);
      this.prefix.push(entry);
      return () => remove(this.prefix, entry);
    }
    const key = `${event}\0${pattern}`;
    let entries = this.exact.get(key);
    if (!entries) this.exact.set(key, (entries = []));
    entries.push(entry);
    return () => {
      if (remove(entries, entry) && entries.length === 0) this.exact.delete(key);
    };
  }

  match(event, path) {
    const found = (this.exact.get(`${event}\0${path}`) || []).map((e) => e.handler);
    for (const e of this.prefix) {
      if (e.event === event && path.startsWith(e.prefix)) found.push(e.handler);
    }
    return found;
  }
}

function remove(list, item) {
  const i = list.indexOf(item);
  if (i === -1) return false;
  list.splice(i, 1);
  return true;
}

/**
 * History rooms as the client sees them: per path the offset of the last push handed to
 * the application and the stream's epoch (from a subscribe reply carrying both). From a
 * new socket until the resubscribe with `since` answers, a room's pushes with an offset
 * are held; the reply releases them sorted, each offset once, only those after the
 * position (all of them when the reply's `recovered` is not true). Outside a recovery a
 * push whose offset is not above the last one means the stream restarted: it is handed
 * over and the position follows it.
 */
class Recovery {
  constructor() {
    this.streams = new Map(); // path -> {offset, epoch, held}
  }

  positions() {
    const out = new Map();
    for (const [path, s] of this.streams) {
      if (s.epoch !== null && s.offset >= 0) out.set(path, { offset: s.offset, epoch: s.epoch });
    }
    return out;
  }

  begin(path) {
    if (this.streams.has(path)) return false;
    this.streams.set(path, { offset: -1, epoch: null, held: null });
    return true;
  }

  subscribed(path, data, reply) {
    const position = replyPosition(reply);
    if (position === null || !(data === undefined || data === null || isPlainObject(data))) {
      this.streams.delete(path);
      return;
    }
    let stream = this.streams.get(path);
    if (!stream) this.streams.set(path, (stream = { offset: -1, epoch: null, held: null }));
    if (stream.epoch !== null && stream.epoch !== position.epoch) stream.offset = position.offset;
    else stream.offset = Math.max(stream.offset, position.offset);
    stream.epoch = position.epoch;
  }

  forget(path) {
    this.streams.delete(path);
  }

  clear() {
    this.streams.clear();
  }

  hold() {
    for (const s of this.streams.values()) {
      if (s.epoch !== null && s.held === null) s.held = [];
    }
  }

  since(path) {
    const s = this.streams.get(path);
    if (!s || s.epoch === null || s.offset < 0) return null;
    return { offset: s.offset, epoch: s.epoch };
  }

  /** The reply to a resubscribe with since: [pushes to hand over, recovery failed]. */
  recovered(path, reply) {
    const s = this.streams.get(path);
    if (!s) return [[], false];
    const failed = !(isPlainObject(reply) && reply.recovered === true);
    const held = (s.held || []).sort((a, b) => a.offset - b.offset);
    s.held = null;
    let last = failed ? -1 : s.offset;
    const out = [];
    for (const push of held) {
      if (push.offset > last) {
        out.push(push);
        last = push.offset;
      }
    }
    const position = replyPosition(reply);
    if (position === null) {
      this.streams.delete(path);
    } else {
      s.offset = Math.max(last, position.offset);
      s.epoch = position.epoch;
    }
    return [out, failed];
  }

  release(path) {
    const s = this.streams.get(path);
    if (!s || s.held === null) return [];
    const held = s.held.sort((a, b) => a.offset - b.offset);
    s.held = null;
    const out = [];
    for (const push of held) {
      if (push.offset > s.offset) {
        out.push(push);
        s.offset = push.offset;
      }
    }
    return out;
  }

  releaseAll() {
    const out = [];
    for (const [path, s] of [...this.streams]) if (s.held !== null) out.push(...this.release(path));
    return out;
  }

  /** A push arrived: the pushes to hand over now (none while held). */
  push(push) {
    if (push.offset === null) return [push];
    const s = this.streams.get(push.path);
    if (!s) return [push];
    if (s.held !== null) {
      s.held.push(push);
      return [];
    }
    s.offset = s.epoch === null ? Math.max(s.offset, push.offset) : push.offset;
    return [push];
  }
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function replyPosition(reply) {
  if (!isPlainObject(reply)) return null;
  const { offset, epoch } = reply;
  if (!Number.isInteger(offset) || offset < 0 || typeof epoch !== "string" || !epoch) return null;
  return { offset, epoch };
}

function withSince(data, since) {
  return { ...(isPlainObject(data) ? data : {}), since: { ...since } };
}

function newIdem() {
  // 128 random bits as 32 hex digits (crypto.randomUUID needs a secure context).
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function resolveUrl(url) {
  if (typeof location === "undefined" || /^wss?:\/\//i.test(url)) return url;
  const resolved = new URL(url, location.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

function normalizeReconnect(opts) {
  // Accepts the flat options of wsevents and the `reconnect: {enabled, ...}` object of
  // @wooksjs/ws-client.
  const r = opts.reconnect;
  const nested = r !== null && typeof r === "object" ? r : {};
  return {
    enabled: typeof r === "object" && r !== null ? r.enabled !== false : Boolean(r),
    baseDelay: nested.baseDelay ?? opts.baseDelay ?? 1000,
    maxDelay: nested.maxDelay ?? opts.maxDelay ?? 30000,
    maxRetries: nested.maxRetries ?? opts.maxRetries ?? Infinity,
    backoff: nested.backoff ?? opts.backoff ?? "exponential",
  };
}

/**
 * A WebSocket client for wsevents (and @wooksjs/event-ws) servers. It connects at once.
 *
 * Options: reconnect (false), baseDelay (1000), maxDelay (30000), maxRetries (Infinity),
 * backoff ("exponential" | "linear"), queueSize (1000), rpcTimeout (10000), protocols,
 * acceptWindow (100), messageParser, messageSerializer, onOpen(), onClose(code, reason),
 * onError(err), onReconnect(attempt), token, loginPath ("/auth/login"), refreshPath
 * ("/auth/refresh"), refreshBefore (5000), resume (false), sessionPath ("/session"),
 * onRecoveryFailed(path).
 *
 * History rooms: a subscribe whose reply carries `offset` and `epoch` is followed
 * (`positions`); after every reconnect it is sent again with `since` = the last push's
 * offset and epoch, and the pushes are handed over in offset order, each once. A reply
 * with `recovered` not true (the history was lost) fires onRecoveryFailed(path).
 *
 * Sessions (`resume: true`): on every connect, after the login, the client calls rpc
 * sessionPath and keeps the token of the reply {session, resumed}; reconnects open the
 * url with ?session=<token>. Every call then carries an `idem` (random unless given) and
 * a call whose connection drops before the reply is sent again after the reconnect with
 * the same idem, within its timeout.
 *
 * Authentication after connect: with `token` (a function returning the token or a promise
 * of it), every socket first calls rpc loginPath {token} before the queue and the
 * subscriptions go out; a refused login fails the connection with the server's error
 * (final, as a refusal). When the reply has a number `expires_in` (seconds), the client
 * calls rpc refreshPath {token} refreshBefore ms before the expiry (at the latest
 * halfway), without reconnecting. After a close with one of FINAL_CLOSE_CODES the client
 * does not reconnect by itself: onClose(code, reason) tells the application, `lastClose`
 * keeps {code, reason}, and the application makes a new client when it is ready.
 *
 * States: "connecting" (first connect, or reconnecting), "open", "disconnected" (lost,
 * and nothing reconnects by itself), "closed" (close() was called; final).
 *
 * Lifecycle of each socket: once it opens, the module waits acceptWindow ms for a
 * refusal (a server that refuses in on_connect closes right after the handshake), then
 * flushes the queue and replays subscriptions, and only then is "open": onOpen fires and
 * ready() resolves. A socket that opened fires onOpen and then onClose(code, reason) once
 * each, with the close's real code and reason; when it closes before it was ready,
 * onOpen fires right before its onClose. Closed by the server before it was ready, it
 * was refused: ready() and calls waiting for the connection reject with
 * WsConnectionRefused. A refused first connection is final ("disconnected"), with
 * reconnect on too; refused reconnects are retried with growing delays until maxRetries.
 */
export class WsClient {
  constructor(url, opts = {}) {
    this.url = resolveUrl(url);
    this.rpcTimeout = opts.rpcTimeout ?? DEFAULT_RPC_TIMEOUT;
    this.queueSize = opts.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!(this.queueSize >= 0)) throw new RangeError("queueSize must be >= 0");
    this.protocols = opts.protocols;
    this.acceptWindow = opts.acceptWindow ?? DEFAULT_ACCEPT_WINDOW;
    if (!(this.acceptWindow >= 0)) throw new RangeError("acceptWindow must be >= 0");
    this.serialize = opts.messageSerializer ?? JSON.stringify;
    this.parse = opts.messageParser ?? JSON.parse;
    const reconnect = normalizeReconnect(opts);
    this.reconnect = reconnect.enabled;
    this.backoff = new Backoff(reconnect);
    /** Queued messages dropped because the queue was full (oldest first). */
    this.dropped = 0;
    this._state = "connecting";
    this._ws = null;
    this._queue = [];
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._waiters = new Set(); // functions run when connecting ends
    this._listeners = new Listeners();
    this._subscriptions = new Map(); // path -> data
    this._presences = new Map(); // room -> RoomPresence
    this._timer = null;
    this._everReady = false; // a connection of this client was ready once
    this._refusal = null; // the WsConnectionRefused of the last refused socket
    this._hooks = { open: [], close: [], error: [], reconnect: [], recoveryFailed: [] };
    // -- authentication after connect --
    this.token = opts.token ?? null;
    this.loginPath = opts.loginPath ?? "/auth/login";
    this.refreshPath = opts.refreshPath ?? "/auth/refresh";
    this.refreshBefore = opts.refreshBefore ?? DEFAULT_REFRESH_BEFORE;
    this._refreshTimer = null;
    /** {code, reason} of the last socket that closed, or null. */
    this.lastClose = null;
    // -- recovery and sessions --
    this.resume = Boolean(opts.resume);
    this.sessionPath = opts.sessionPath ?? "/session";
    this._recovery = new Recovery();
    this._session = null;
    this._resumed = false;
    if (opts.onRecoveryFailed) this.onRecoveryFailed(opts.onRecoveryFailed);
    if (opts.onOpen) this.onOpen(opts.onOpen);
    if (opts.onClose) this.onClose(opts.onClose);
    if (opts.onError) this.onError(opts.onError);
    if (opts.onReconnect) this.onReconnect(opts.onReconnect);
    this._onOnline = () => {
      // The network is back: try now instead of waiting out the backoff delay.
      if (this._state === "connecting" && this._timer !== null) {
        clearTimeout(this._timer);
        this._timer = null;
        this._attempt();
      }
    };
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    this._open();
  }

  /** "connecting", "open", "disconnected" or "closed". */
  get state() {
    return this._state;
  }

  /** True while the connection is open and ready (queue flushed, subscriptions replayed). */
  get connected() {
    return this._state === "open";
  }

  /** Messages waiting in the offline queue. */
  get queued() {
    return this._queue.length;
  }

  /** Remembered subscriptions (path -> data), replayed after every reconnect; a copy. */
  get subscriptions() {
    return new Map(this._subscriptions);
  }

  /** History rooms followed: path -> {offset, epoch} of the last push handed over; a copy. */
  get positions() {
    return this._recovery.positions();
  }

  /** The session token (resume: true) of the current or last connection, or null. */
  get sessionToken() {
    return this._session;
  }

  /** True when the current connection resumed the previous one (resume: true). */
  get resumed() {
    return this._resumed;
  }

  // -- public API -------------------------------------------------------------------------

  /**
   * Fire-and-forget. While connecting or reconnecting the message goes to the bounded
   * offline queue (when full, the oldest queued message is dropped and counted in
   * `dropped`). Returns false when the message was dropped: not connected and not about
   * to be, or queueSize is 0.
   */
  send(event, path, data) {
    const frame = this.serialize(message(event, path, data));
    if (this._state === "open") {
      if (this._ws.readyState === 1) {
        this._ws.send(frame);
        return true;
      }
      // Closing, and the close event has not come yet: the browser would discard it.
      return this.reconnect ? this._enqueue(frame) : false;
    }
    if (this._state === "connecting") return this._enqueue(frame);
    return false;
  }

  /**
   * RPC: resolves with the reply's data. Ids are 1, 2, 3, ... per client. While
   * connecting or reconnecting the call waits for the connection within its timeout.
   * Rejects with WsClientError: the server's code and message; 408 when no reply came in
   * time; 503 when not connected (in time), when the connection is lost first, or when
   * the client is closed. `options` is a timeout in ms or `{ timeout, idem }`.
   *
   * `idem` (a string of 1 to 64 characters; a RangeError otherwise) goes out as the
   * frame's `idem`: a server with idempotent calls answers a repeat with the kept reply.
   * With `resume: true` every call has one (random unless given), and a call whose
   * connection drops before the reply is sent again once reconnected, within its timeout;
   * when the timeout runs out after such a loss it rejects with 408 (the server may have
   * run it).
   */
  async call(event, path, data, options) {
    const timeout =
      typeof options === "number" ? options : (options?.timeout ?? this.rpcTimeout);
    let idem = typeof options === "object" && options !== null ? options.idem : undefined;
    if (idem === undefined || idem === null) {
      // Never on a subscribe: a kept reply would not repeat the pushes its first run sent
      // (a replay with since); joining again is harmless, so it is retried as is.
      idem = this.resume && event !== "subscribe" ? newIdem() : undefined;
    } else if (typeof idem !== "string" || idem.length < 1 || idem.length > MAX_IDEM_LENGTH) {
      throw new RangeError(`idem must be a string of 1 to ${MAX_IDEM_LENGTH} characters`);
    }
    const deadline = Date.now() + timeout;
    const retry = this.resume && (idem !== undefined || event === "subscribe");
    let lost = null; // a send of this call lost with its connection
    for (;;) {
      try {
        await this._whenOpen(deadline);
      } catch (err) {
        if (lost === null) throw err;
        if (Date.now() >= deadline) throw new WsClientError(408, "RPC timeout");
        throw lost;
      }
      const ws = this._ws;
      try {
        return await this._request(event, path, data, deadline, idem);
      } catch (err) {
        const retryable = err instanceof WsClientError && err.code === 503;
        if (!retry || !retryable || !this.reconnect || this._state === "closed") throw err;
        lost = err;
        // The socket failed before its close event: wait for it (never spin).
        if (this._ws === ws && ws && ws.readyState !== 3) await closedOrTimeout(ws, deadline);
      }
    }
  }

  /**
   * call("subscribe", path, data), remembered and replayed after every reconnect. Resolves
   * with an unsubscribe function (it forgets the subscription and sends "unsubscribe"
   * fire-and-forget); the function carries `path` and `reply` (the server's reply data).
   * A refused subscribe rejects and is not remembered.
   */
  async subscribe(path, data, options) {
    const fresh = this._recovery.begin(path);
    let reply;
    try {
      reply = await this.call("subscribe", path, data, options);
    } catch (err) {
      if (fresh) this._recovery.forget(path);
      throw err;
    }
    this._subscriptions.set(path, data);
    this._recovery.subscribed(path, data, reply);
    let active = true;
    const unsubscribe = () => {
      if (!active) return;
      active = false;
      this._subscriptions.delete(path);
      this._recovery.forget(path);
      if (this._state === "open") this._ws.send(this.serialize(message("unsubscribe", path)));
    };
    unsubscribe.path = path;
    unsubscribe.reply = reply;
    return unsubscribe;
  }

  /**
   * Join presence room `room` (call(joinEvent, room, join)) and follow who is in it: a
   * promise of a RoomPresence with the current `members`, `onChange(cb)`, `count()`,
   * `list(offset, limit)` and `leave()`. `count()` and `list()` call the app's
   * `countPath` and `listPath` routes (the reference app's by default). After a reconnect
   * the room is joined again and the members fetched anew, never replayed from the old
   * state. Rejects with WsClientError when the join or the first list fails. Options:
   * { joinEvent = "join", leaveEvent = "leave", countPath = "/presence/count",
   *   listPath = "/presence/list", pageSize = 100 }.
   */
  async presence(room, join, options = {}) {
    const existing = this._presences.get(room);
    if (existing) return existing;
    const presence = new RoomPresence(this, room, join, options);
    this._presences.set(room, presence);
    try {
      await presence._start();
    } catch (err) {
      if (this._presences.get(room) === presence) this._presences.delete(room);
      presence._stopListening();
      throw err;
    }
    return presence;
  }

  /**
   * Call handler({event, path, params, data}) for pushes of `event` whose path is
   * `pattern`, or starts with it when it ends in "*". Returns a function removing it.
   */
  on(event, pattern, handler) {
    return this._listeners.add(event, pattern, handler);
  }

  /**
   * Resolves once open (at once if open). Rejects with WsConnectionRefused when the
   * server refused the connection, with 503 when it cannot open otherwise.
   */
  ready(timeout = Infinity) {
    return this._whenOpen(Date.now() + timeout);
  }

  /**
   * Close for good: stop reconnecting, reject pending calls (503), clear the queue,
   * close the socket (1000 "Client closed"; onClose follows when it had opened).
   */
  close() {
    if (this._state === "closed") return;
    this._state = "closed";
    this._session = null; // a clean close ends the session on the server
    this._recovery.clear();
    this._stopRefresh();
    clearTimeout(this._timer);
    this._timer = null;
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    this._queue.length = 0;
    this._failPending(503, "Connection closed");
    this._release();
    if (this._ws) this._ws.close(1000, CLIENT_CLOSE_REASON);
  }

  onOpen(handler) {
    return this._hook("open", handler);
  }

  onClose(handler) {
    return this._hook("close", handler);
  }

  onError(handler) {
    return this._hook("error", handler);
  }

  onReconnect(handler) {
    return this._hook("reconnect", handler);
  }

  /** handler(path): after a reconnect, what history room `path` missed is lost. */
  onRecoveryFailed(handler) {
    return this._hook("recoveryFailed", handler);
  }

  // -- connecting -------------------------------------------------------------------------

  _dialUrl() {
    if (!this.resume || this._session === null) return this.url;
    const url = new URL(this.url);
    url.searchParams.set("session", this._session);
    return url.href;
  }

  _open() {
    let ws;
    // Held until their resubscribe with since answers (a resumed socket gets live pushes
    // at once).
    this._recovery.hold();
    this._resumed = false;
    try {
      ws = new WebSocket(this._dialUrl(), this.protocols);
    } catch (err) {
      // A malformed URL or a blocked port: there is no socket to wait for.
      this._emit("error", err);
      if (this.reconnect) {
        this._scheduleOrGiveUp();
      } else {
        this._state = "disconnected";
        this._release();
      }
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    // Per socket: "opened" when the browser opened it, "ready" once onOpen fired. The
    // close may come while the setup still awaits (the wait for a refusal, the replay):
    // the setup then stops, and the close handler fires the onOpen it owes.
    const life = { opened: false, ready: false };
    ws.addEventListener("open", () => {
      life.opened = true;
      this._setup(ws, life);
    });
    ws.addEventListener("message", (ev) => this._onFrame(ev.data));
    ws.addEventListener("error", (ev) => this._emit("error", ev));
    ws.addEventListener("close", (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      const code = ev.code;
      const reason = ev.reason || "";
      this._stopRefresh();
      this.lastClose = { code, reason };
      const emitPair = () => {
        if (!life.opened) return;
        if (!life.ready) this._emit("open");
        this._emit("close", code, reason);
      };
      if (this._state === "closed") {
        emitPair();
        return;
      }
      // 1006: no close frame came, the connection broke; any other code is the server's.
      const refused = life.loginError != null || (life.opened && !life.ready && code !== 1006);
      this._refusal =
        life.loginError ?? (refused ? new WsConnectionRefused(code, reason) : null);
      this._failPending(503, "Connection lost");
      // After the final codes the server would close the next connection the same way.
      const final = FINAL_CLOSE_CODES.has(code);
      if (this.reconnect && !final && !(refused && !this._everReady)) {
        this._state = "connecting";
        emitPair();
        // After the hooks, so that giving up (onError) comes after this onClose; a hook
        // may have closed the client.
        if (this._state === "connecting") this._scheduleOrGiveUp();
      } else {
        this._state = "disconnected";
        this._queue.length = 0;
        this._release();
        emitPair();
      }
    });
  }

  async _setup(ws, life) {
    const stillCurrent = () => this._ws === ws && ws.readyState === 1 && this._state === "connecting";
    // A server refusing in on_connect closes right after the handshake, before any other
    // frame: wait for that close a little before flushing into a socket about to go away.
    if (this.acceptWindow > 0) await settle(ws, this.acceptWindow);
    if (this.token !== null && stillCurrent()) {
      let reply;
      try {
        reply = await this._request("rpc", this.loginPath, { token: await this.token() },
          Date.now() + this.rpcTimeout);
      } catch (err) {
        if (this._ws === ws && err instanceof WsClientError && err.code !== 503) {
          life.loginError = err; // the close handler reports it, as a refusal
          ws.close(1000, "Login refused");
        }
        return;
      }
      this._scheduleRefresh(ws, reply);
    }
    if (this.resume && stillCurrent()) {
      try {
        const reply = await this._request("rpc", this.sessionPath, undefined,
          Date.now() + this.rpcTimeout);
        const token = isPlainObject(reply) ? reply.session : undefined;
        this._session = typeof token === "string" && token ? token : null;
        this._resumed = this._session !== null && reply.resumed === true;
      } catch (err) {
        if (this._ws !== ws || !(err instanceof WsClientError) || err.code === 503) return;
        this._session = null; // a server without sessions: go on without
        this._emit("error", err);
      }
    }
    if (!stillCurrent() || !this._flush(ws)) return;
    await this._replay(ws);
    if (!stillCurrent() || !this._flush(ws)) return;
    this.backoff.reset();
    this._everReady = true;
    this._refusal = null;
    this._state = "open";
    life.ready = true;
    this._emit("open");
    this._release();
    // Presence rooms: join again and fetch the members anew, never replay the old view.
    for (const presence of this._presences.values()) presence._reopened();
  }

  _scheduleRefresh(ws, reply) {
    const expiresIn = reply !== null && typeof reply === "object" ? reply.expires_in : undefined;
    if (typeof expiresIn !== "number") return;
    const delay = Math.max(expiresIn * 1000 - this.refreshBefore, expiresIn * 500, 0);
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      if (this._ws !== ws) return;
      try {
        const next = await this._request("rpc", this.refreshPath,
          { token: await this.token() }, Date.now() + this.rpcTimeout);
        if (this._ws === ws) this._scheduleRefresh(ws, next);
      } catch (err) {
        // The server closes with 4401 at the expiry; onClose tells the application.
        this._emit("error", err);
      }
    }, delay);
  }

  _stopRefresh() {
    if (this._refreshTimer !== null) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  _flush(ws) {
    while (this._queue.length) {
      if (this._ws !== ws || ws.readyState !== 1) return false;
      ws.send(this._queue.shift());
    }
    return true;
  }

  async _replay(ws) {
    const subs = [...this._subscriptions];
    if (!subs.length) return;
    const deadline = Date.now() + this.rpcTimeout;
    const recovery = this._recovery;
    const sinces = subs.map(([path]) => recovery.since(path));
    const results = await Promise.allSettled(
      subs.map(([path, data], i) =>
        this._request("subscribe", path, sinces[i] ? withSince(data, sinces[i]) : data, deadline),
      ),
    );
    results.forEach((result, i) => {
      const [path, data] = subs[i];
      if (!this._subscriptions.has(path)) {
        // Unsubscribed while the replay was in flight: undo it on the server.
        if (result.status === "fulfilled" && this._ws === ws && ws.readyState === 1) {
          ws.send(this.serialize(message("unsubscribe", path)));
        }
        return;
      }
      const err = result.reason;
      if (err instanceof WsClientError && err.code !== 408 && err.code !== 503) {
        // The server refuses it now: forget it, as a refused first subscribe.
        if (this._subscriptions.get(path) === data) {
          this._subscriptions.delete(path);
          this._deliver(recovery.release(path));
          recovery.forget(path);
        }
        this._emit("error", err);
      } else if (result.status === "fulfilled" && sinces[i]) {
        const [pushes, failed] = recovery.recovered(path, result.value);
        if (failed) this._emit("recoveryFailed", path);
        this._deliver(pushes);
      } else if (result.status === "fulfilled") {
        recovery.subscribed(path, data, result.value);
      }
    });
    if (this._ws === ws && ws.readyState === 1) this._deliver(recovery.releaseAll());
  }

  _scheduleOrGiveUp() {
    const delay = this.backoff.next();
    if (delay === null) {
      this._state = "disconnected";
      this._queue.length = 0;
      this._release();
      this._emit("error", new WsClientError(503, "Reconnect failed"));
      return;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      this._attempt();
    }, delay);
  }

  _attempt() {
    if (this._state !== "connecting") return;
    this._emit("reconnect", this.backoff.attempt);
    if (this._state === "connecting") this._open();
  }

  // -- traffic ----------------------------------------------------------------------------

  _whenOpen(deadline) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this._state === "open") return resolve();
        if (this._state === "closed") return reject(new WsClientError(503, "Connection closed"));
        if (this._state !== "connecting") {
          return reject(this._refusal ?? new WsClientError(503, "Not connected"));
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0) return reject(new WsClientError(503, "Not connected"));
        let timer = null;
        const waiter = () => {
          clearTimeout(timer);
          check();
        };
        if (remaining !== Infinity) {
          timer = setTimeout(() => {
            this._waiters.delete(waiter);
            reject(new WsClientError(503, "Not connected"));
          }, remaining);
        }
        this._waiters.add(waiter);
      };
      check();
    });
  }

  _release() {
    const waiters = [...this._waiters];
    this._waiters.clear();
    for (const waiter of waiters) waiter();
  }

  _request(event, path, data, deadline, idem) {
    const id = this._nextId++;
    const frame = this.serialize(message(event, path, data, id, idem));
    return new Promise((resolve, reject) => {
      if (!this._ws || this._ws.readyState !== 1) {
        reject(new WsClientError(503, "Connection lost"));
        return;
      }
      const timer = setTimeout(
        () => {
          this._pending.delete(id);
          reject(new WsClientError(408, "RPC timeout"));
        },
        Math.max(0, deadline - Date.now()),
      );
      this._pending.set(id, { resolve, reject, timer });
      this._ws.send(frame);
    });
  }

  _failPending(code, text) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const { reject, timer } of pending) {
      clearTimeout(timer);
      reject(new WsClientError(code, text));
    }
  }

  _enqueue(frame) {
    if (this.queueSize === 0) {
      this.dropped += 1;
      return false;
    }
    this._queue.push(frame);
    while (this._queue.length > this.queueSize) {
      this._queue.shift();
      this.dropped += 1;
    }
    return true;
  }

  _onFrame(raw) {
    let msg;
    try {
      msg = this.parse(typeof raw === "string" ? raw : new TextDecoder().decode(raw));
    } catch {
      return; // not JSON: dropped
    }
    if (msg === null || typeof msg !== "object") return;
    if (msg.id !== undefined && msg.id !== null) {
      const id = typeof msg.id === "number" ? msg.id : Number(msg.id);
      const entry = this._pending.get(id);
      if (!entry) return; // nobody waits (timed out): dropped
      this._pending.delete(id);
      clearTimeout(entry.timer);
      if (msg.error !== undefined && msg.error !== null) {
        const code = Number.isInteger(msg.error.code) ? msg.error.code : 500;
        const text = typeof msg.error.message === "string" ? msg.error.message : undefined;
        const details = Array.isArray(msg.error.details) ? msg.error.details : null;
        const retryAfter =
          typeof msg.error.retry_after === "number" ? msg.error.retry_after : null;
        entry.reject(new WsClientError(code, text, details, retryAfter));
      } else {
        entry.resolve(msg.data ?? null);
      }
      return;
    }
    if (typeof msg.event !== "string" || typeof msg.path !== "string") return;
    const offset = Number.isInteger(msg.offset) && msg.offset >= 0 ? msg.offset : null;
    const push = {
      event: msg.event, path: msg.path, params: msg.params ?? {}, data: msg.data, offset,
    };
    this._deliver(this._recovery.push(push));
  }

  _deliver(pushes) {
    for (const push of pushes) this._dispatch(push);
  }

  _dispatch(push) {
    for (const handler of this._listeners.match(push.event, push.path)) {
      try {
        const result = handler(push);
        if (result && typeof result.then === "function") {
          result.then(undefined, (err) => this._reportHandlerError(err));
        }
      } catch (err) {
        this._reportHandlerError(err);
      }
    }
  }

  _reportHandlerError(err) {
    if (this._hooks.error.length) this._emit("error", err);
    else console.error("wsevents: push handler failed", err);
  }

  // -- hooks ------------------------------------------------------------------------------

  _hook(name, handler) {
    const list = this._hooks[name];
    list.push(handler);
    return () => remove(list, handler);
  }

  _emit(name, ...args) {
    for (const handler of [...this._hooks[name]]) {
      try {
        const result = handler(...args);
        if (result && typeof result.then === "function") {
          result.then(undefined, (err) => console.error(`wsevents: ${name} hook failed`, err));
        }
      } catch (err) {
        console.error(`wsevents: ${name} hook failed`, err);
      }
    }
  }
}

/**
 * A presence room as the client sees it (what client.presence() resolves with, joined and
 * synchronised). `members` is a Map user id -> member ({user, ...member data}, plus
 * `connections` once fetched by a list). The server pushes "presence" on the room's path
 * with {joins, leaves}; leaves are applied first, then joins.
 */
export class RoomPresence {
  constructor(client, room, join, options = {}) {
    this.room = room;
    this.members = new Map();
    this.joined = false;
    this._client = client;
    this._join = join;
    this._joinEvent = options.joinEvent ?? "join";
    this._leaveEvent = options.leaveEvent ?? "leave";
    this._countPath = options.countPath ?? "/presence/count";
    this._listPath = options.listPath ?? "/presence/list";
    this._pageSize = options.pageSize ?? 100;
    this._handlers = [];
    this._syncing = null; // pushes buffered while a list is fetched
    this._off = null;
  }

  /**
   * Call handler(change) after each change of `members`: the data of a push
   * ({joins, leaves}), or after a resynchronisation {joins: <every member>, leaves:
   * <every member gone>}. Returns a function removing it.
   */
  onChange(handler) {
    this._handlers.push(handler);
    return () => remove(this._handlers, handler);
  }

  /** A promise of {connections, users} of the room, on every instance (an RPC). */
  count() {
    return this._client.call("rpc", this._countPath, { room: this.room });
  }

  /** A promise of {total, members}: a page of the room's users ordered by user id. */
  list(offset = 0, limit = 50) {
    return this._client.call("rpc", this._listPath, { room: this.room, offset, limit });
  }

  /** Leave the room and stop following it (the members are forgotten). */
  async leave() {
    this.joined = false;
    this._stopListening();
    this.members.clear();
    const rooms = this._client._presences;
    if (rooms.get(this.room) === this) rooms.delete(this.room);
    await this._client.call(this._leaveEvent, this.room);
  }

  /**
   * Fetch the whole member list again and replace `members` with it; pushes arriving
   * meanwhile are applied on top.
   */
  async sync() {
    this._syncing = [];
    let buffered;
    try {
      const fresh = new Map();
      let offset = 0;
      for (;;) {
        const page = await this.list(offset, this._pageSize);
        const members = Array.isArray(page?.members) ? page.members : [];
        for (const member of members) fresh.set(String(member.user), member);
        offset += members.length;
        if (!members.length || offset >= page.total) break;
      }
      const gone = [...this.members.keys()].filter((u) => !fresh.has(u)).map((user) => ({ user }));
      this.members = fresh;
      this._emit({ joins: [...fresh.values()], leaves: gone });
    } finally {
      buffered = this._syncing || [];
      this._syncing = null;
    }
    for (const change of buffered) this._apply(change);
  }

  async _start() {
    if (!this._off) this._off = this._client.on("presence", this.room, (p) => this._onPush(p));
    await this._client.call(this._joinEvent, this.room, this._join);
    this.joined = true;
    await this.sync();
  }

  async _reopened() {
    if (!this.joined) return;
    try {
      await this._client.call(this._joinEvent, this.room, this._join);
      await this.sync();
    } catch (err) {
      // Lost again (the next open retries) or refused: the application hears of it.
      this._client._emit("error", err);
    }
  }

  _stopListening() {
    if (this._off) {
      this._off();
      this._off = null;
    }
  }

  _onPush(push) {
    const data = push.data;
    if (data === null || typeof data !== "object" || Array.isArray(data)) return;
    if (this._syncing) this._syncing.push(data);
    else this._apply(data);
  }

  _apply(change) {
    for (const leave of Array.isArray(change.leaves) ? change.leaves : []) {
      if (leave && typeof leave === "object") this.members.delete(String(leave.user));
    }
    for (const join of Array.isArray(change.joins) ? change.joins : []) {
      if (join && typeof join === "object" && "user" in join) {
        this.members.set(String(join.user), join);
      }
    }
    this._emit(change);
  }

  _emit(change) {
    for (const handler of [...this._handlers]) {
      try {
        handler(change);
      } catch (err) {
        this._client._reportHandlerError(err);
      }
    }
  }
}

/** Resolves after `ms`, or as soon as `ws` closes. */
function settle(ws, ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      ws.removeEventListener("close", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    ws.addEventListener("close", done);
  });
}

/** Resolves once `ws` closed, or at `deadline` (ms since the epoch). */
function closedOrTimeout(ws, deadline) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      ws.removeEventListener("close", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
    ws.addEventListener("close", done);
  });
}

function message(event, path, data, id, idem) {
  const msg = { event, path };
  if (data !== undefined) msg.data = data;
  if (id !== undefined) msg.id = id;
  if (idem !== undefined) msg.idem = idem;
  return msg;
}

/** Same as `new WsClient(url, opts)` (the @wooksjs/ws-client factory name). */
export function createWsClient(url, opts) {
  return new WsClient(url, opts);
}
