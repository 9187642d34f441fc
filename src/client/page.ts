/**
 * The chat page (static/index.html): DOM glue around {@link ChatClient}, which
 * does all the protocol work. Bundled by scripts/build-client.mjs into
 * static/app.bundle.js. Every text from the network goes through
 * `textContent`, never HTML.
 */

import { type ChatMessage, MAX_NAME_LENGTH, nameProblem, roomProblem } from "../protocol.ts";
import { ChatClient, ChatError } from "./chat-client.ts";

const NAME_KEY = "chat.name";
const DEFAULT_ROOM = "lobby";
/** How long a typing notice shows without a new one. */
const TYPING_SHOWN_MS = 4000;
/** Within this many pixels of the bottom, new messages scroll into view. */
const STICK_TO_BOTTOM_PX = 80;

function byId<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
}

const ui = {
  roomTitle: byId("room-title"),
  roomForm: byId<HTMLFormElement>("room-form"),
  roomInput: byId<HTMLInputElement>("room-input"),
  rename: byId<HTMLButtonElement>("rename"),
  banner: byId("banner"),
  join: byId("join"),
  joinForm: byId<HTMLFormElement>("join-form"),
  name: byId<HTMLInputElement>("name"),
  joinError: byId("join-error"),
  chat: byId("chat"),
  users: byId("users"),
  onlineCount: byId("online-count"),
  scroller: byId("scroller"),
  older: byId<HTMLButtonElement>("older"),
  historyStart: byId("history-start"),
  messages: byId<HTMLOListElement>("messages"),
  typing: byId("typing"),
  announce: byId("announce"),
  sendForm: byId<HTMLFormElement>("send-form"),
  input: byId<HTMLInputElement>("message"),
};

function make<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function roomFromHash(): string {
  const raw = decodeURIComponent(location.hash.slice(1));
  return roomProblem(raw) === null ? raw : DEFAULT_ROOM;
}

function storedName(): string {
  try {
    return localStorage.getItem(NAME_KEY) ?? "";
  } catch {
    return ""; // storage disabled: ask every time
  }
}

/** Local state for the one conversation on screen. */
let client: ChatClient | null = null;
let unsubscribe: Array<() => void> = [];
/** Own messages shown before the server confirmed them, oldest first. */
let pending: Array<{ text: string; li: HTMLLIElement }> = [];
const typers = new Map<string, ReturnType<typeof setTimeout>>();
let bannerTimer: ReturnType<typeof setTimeout> | null = null;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function messageItem(m: { user: string; message: string; ts?: number; id?: string }, own: boolean): HTMLLIElement {
  const li = make("li", own ? "message own" : "message");
  if (m.id) li.dataset.id = m.id;
  const meta = make("div", "meta");
  const user = make("span", "user", m.user);
  if (own) user.append(make("span", "visually-hidden", " (you)"));
  const time = make("time", "time");
  meta.append(user, make("span", "visually-hidden", ": "));
  const text = make("p", "text", m.message);
  if (m.ts !== undefined) setTime(time, m.ts);
  meta.append(time);
  li.append(meta, text);
  return li;
}

function setTime(time: HTMLTimeElement, ts: number): void {
  const d = new Date(ts);
  time.dateTime = d.toISOString();
  time.textContent = timeFormat.format(d);
  time.title = dateFormat.format(d);
}

function isOwn(m: ChatMessage): boolean {
  return client !== null && m.user === client.user;
}

function nearBottom(): boolean {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_TO_BOTTOM_PX;
}

function scrollToBottom(): void {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

/** Confirmed messages stay above the ones still being sent, in id order. */
function placeConfirmed(li: HTMLLIElement): void {
  const firstPending = pending[0]?.li;
  if (firstPending && firstPending !== li) ui.messages.insertBefore(li, firstPending);
  else ui.messages.append(li);
}

function showMessage(m: ChatMessage, live: boolean): void {
  const stick = nearBottom();
  const own = isOwn(m);
  const i = own ? pending.findIndex((p) => p.text === m.message) : -1;
  const mine = pending[i];
  if (mine) {
    // The server confirmed a message already on screen: give it its time and place.
    pending.splice(i, 1);
    mine.li.classList.remove("pending");
    mine.li.dataset.id = m.id;
    const time = mine.li.querySelector("time");
    if (time) setTime(time, m.ts);
    placeConfirmed(mine.li);
  } else {
    placeConfirmed(messageItem(m, own));
  }
  stopTyping(m.user);
  if (live && !own) announce(`${m.user}: ${m.message}`);
  if (stick || own) scrollToBottom();
  updateOlder();
}

function announce(text: string): void {
  const line = make("p", undefined, text);
  ui.announce.append(line);
  // Keep the live region short; screen readers already read what was added.
  while (ui.announce.childElementCount > 5) ui.announce.firstElementChild?.remove();
}

function notice(text: string): void {
  const stick = nearBottom();
  placeConfirmed(make("li", "notice", text));
  if (stick) scrollToBottom();
}

function showUsers(users: readonly string[]): void {
  const unique = [...new Set(users)].sort((a, b) => a.localeCompare(b));
  ui.users.replaceChildren(
    ...unique.map((u) => {
      const li = make("li", u === client?.user ? "me" : undefined, u);
      if (u === client?.user) li.append(make("span", "visually-hidden", " (you)"));
      return li;
    }),
  );
  ui.onlineCount.textContent = `(${unique.length})`;
}

function showTyping(): void {
  const names = [...typers.keys()];
  ui.typing.textContent =
    names.length === 0
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length === 2
          ? `${names[0]} and ${names[1]} are typing…`
          : "Several people are typing…";
}

function startTyping(user: string): void {
  const old = typers.get(user);
  if (old) clearTimeout(old);
  typers.set(
    user,
    setTimeout(() => stopTyping(user), TYPING_SHOWN_MS),
  );
  showTyping();
}

function stopTyping(user: string): void {
  const timer = typers.get(user);
  if (!timer) return;
  clearTimeout(timer);
  typers.delete(user);
  showTyping();
}

function setBanner(text: string | null, kind: "offline" | "online" = "offline"): void {
  if (bannerTimer) clearTimeout(bannerTimer);
  bannerTimer = null;
  ui.banner.hidden = text === null;
  ui.banner.textContent = text ?? "";
  ui.banner.className = `banner ${kind}`;
  document.body.classList.toggle("offline", text !== null && kind === "offline");
}

function updateOlder(): void {
  const more = client?.hasOlder ?? false;
  const any = ui.messages.querySelector("li.message") !== null;
  ui.older.hidden = !more;
  ui.historyStart.hidden = more || !any;
}

async function loadOlder(): Promise<void> {
  const owner = client;
  if (!owner) return;
  ui.older.disabled = true;
  const before = ui.scroller.scrollHeight - ui.scroller.scrollTop;
  try {
    const older = await owner.loadOlder(50);
    if (client !== owner) return; // the room was left meanwhile
    const items = older.map((m) => messageItem(m, isOwn(m)));
    ui.messages.prepend(...items);
    // Keep what the reader was looking at in place.
    ui.scroller.scrollTop = ui.scroller.scrollHeight - before;
  } catch (error) {
    if (client !== owner) return;
    notice(
      error instanceof ChatError && error.code === "offline"
        ? "Offline: try again when reconnected."
        : "Could not load older messages.",
    );
  } finally {
    ui.older.disabled = false;
    updateOlder();
  }
}

function describeError(error: unknown): string {
  if (!(error instanceof ChatError)) return "not sent";
  switch (error.code) {
    case "message_too_long":
      return "not sent: too long";
    case "rate_limited":
      return "not sent: too many messages, slow down";
    case "queue_full":
      return "not sent: too many messages waiting for the connection";
    case "unavailable":
      return "not sent: the server could not store it, try again";
    case "closed":
      return "not sent";
    default:
      return `not sent: ${error.message}`;
  }
}

/** The reconnect banner's text, kept so that sends while offline can add their count. */
let offlineBanner = "";

function showOfflineBanner(): void {
  const n = client?.queued ?? 0;
  setBanner(`${offlineBanner}${n > 0 ? ` ${n} message${n === 1 ? "" : "s"} will be sent then.` : ""}`);
}

function send(text: string): void {
  if (!client) return;
  const li = messageItem({ user: client.user ?? storedName(), message: text }, true);
  li.classList.add("pending");
  const entry = { text, li };
  pending.push(entry);
  ui.messages.append(li);
  scrollToBottom();
  const owner = client;
  const sent = client.send(text);
  if (client.status === "reconnecting") showOfflineBanner();
  sent.catch((error: unknown) => {
    if (client !== owner) return; // the room was left: its list is gone
    const stick = nearBottom();
    const i = pending.indexOf(entry);
    if (i >= 0) pending.splice(i, 1);
    li.classList.remove("pending");
    li.classList.add("failed");
    li.append(make("p", "failure", describeError(error)));
    placeConfirmed(li);
    if (stick) scrollToBottom();
  });
}

function stop(): void {
  for (const off of unsubscribe) off();
  unsubscribe = [];
  client?.close();
  client = null;
  for (const t of typers.values()) clearTimeout(t);
  typers.clear();
  pending = [];
}

function start(name: string, room: string): void {
  stop();
  document.title = `#${room} · Chat`;
  ui.roomTitle.textContent = `#${room}`;
  ui.roomInput.value = room;
  ui.messages.replaceChildren();
  ui.users.replaceChildren();
  ui.onlineCount.textContent = "";
  ui.typing.textContent = "";
  ui.older.hidden = true;
  ui.historyStart.hidden = true;
  ui.join.hidden = true;
  ui.chat.hidden = false;
  ui.rename.hidden = false;

  const url = new URL("/websocket", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const c = new ChatClient({
    url,
    room,
    user: name,
    autoConnect: false,
    backoff: { initialMs: 400, factor: 1.6, maxMs: 6000 },
  });
  client = c;
  // Messages that come with a welcome (the recent history, or what a resume
  // caught up on) are announced as a count, not one by one; live ones are read.
  let catchingUp: number | null = null;
  unsubscribe = [
    c.on("message", (m) => {
      showMessage(m, catchingUp === null);
      if (catchingUp !== null) catchingUp++;
    }),
    c.on("open", (e) => {
      showUsers(e.users);
      setBanner(e.resumed ? "Reconnected." : null, "online");
      if (e.resumed) bannerTimer = setTimeout(() => setBanner(null), 2500);
      // The client delivers the welcome's messages right after this event, synchronously.
      catchingUp = 0;
      queueMicrotask(() => {
        if (e.resumed && catchingUp)
          announce(`${catchingUp} new message${catchingUp === 1 ? "" : "s"} while disconnected`);
        catchingUp = null;
        updateOlder();
      });
    }),
    c.on("gap", () => notice("Some messages from while you were away could not be recovered.")),
    c.on("presence", (p) => {
      showUsers(p.users);
      if (p.left) stopTyping(p.left);
    }),
    c.on("typing", (t) => startTyping(t.user)),
    c.on("beginning", () => updateOlder()),
    c.on("status", (s) => {
      if (s.status === "connecting") setBanner("Connecting…");
      else if (s.status === "reconnecting") {
        offlineBanner = `Disconnected. Reconnecting${s.retryInMs === undefined ? "" : ` in ${Math.max(1, Math.ceil(s.retryInMs / 1000))} s`}…`;
        showOfflineBanner();
      }
    }),
    c.on("error", (e) => notice(e.message)),
  ];
  c.connect();
  ui.input.focus();
}

function askName(message = ""): void {
  stop();
  setBanner(null);
  ui.chat.hidden = true;
  ui.rename.hidden = true;
  ui.join.hidden = false;
  ui.joinError.textContent = message;
  ui.roomInput.value = roomFromHash();
  ui.roomTitle.textContent = `#${roomFromHash()}`;
  ui.name.value = storedName();
  ui.name.focus();
}

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.name.value.trim();
  if (nameProblem(name) !== null) {
    ui.joinError.textContent = `A name is 1 to ${MAX_NAME_LENGTH} characters, without control characters.`;
    return;
  }
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    // storage disabled: the name lasts this visit only
  }
  start(name, roomFromHash());
});

ui.sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value;
  if (text.trim().length > 0) {
    send(text);
    ui.input.value = "";
  }
  ui.input.focus();
});

ui.input.addEventListener("input", () => {
  if (ui.input.value.length > 0) client?.typing();
});

ui.older.addEventListener("click", () => void loadOlder());

ui.roomForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = ui.roomInput.value.trim();
  if (roomProblem(room) !== null) return;
  if (room === roomFromHash() && client) {
    ui.input.focus();
    return;
  }
  location.hash = room;
});

window.addEventListener("hashchange", () => {
  const room = roomFromHash();
  if (!client) {
    // Still on the name form: joining will use the new room.
    ui.roomInput.value = room;
    ui.roomTitle.textContent = `#${room}`;
    return;
  }
  const name = client.user ?? storedName();
  if (client.room !== room && nameProblem(name) === null) start(name, room);
});

ui.rename.addEventListener("click", () => askName());

// The backoff may be waiting up to its maximum: when the network is back, try
// at once. A socket that survived sleep or a network change may be dead without
// knowing it: check it now rather than at the next ping.
window.addEventListener("online", () => {
  client?.retryNow();
  client?.checkConnection();
});
window.addEventListener("offline", () => client?.checkConnection());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState !== "visible") return;
  client?.retryNow();
  client?.checkConnection();
});

const initialName = storedName();
if (nameProblem(initialName) === null) start(initialName, roomFromHash());
else askName();
