/**
 * The chat page (static/index.html): DOM glue around {@link ChatClient}, which
 * does all the protocol work. Bundled by scripts/build-client.mjs into
 * static/app.bundle.js. Every text from the network goes through
 * `textContent`, never HTML.
 *
 * Who the user is: on a server with AUTH_SECRET the app's backend sets the
 * browser's `token` cookie, the WebSocket handshake carries it, and the
 * welcome names the user: the page never asks. Without a cookie-borne token
 * the welcome has no name, so the page asks for one (kept in localStorage)
 * and connects again with `?user=`. Only with a token are names identities,
 * so only then does it offer edit and delete on one's own messages, and
 * delete and ban to moderators (welcome `role: "moderator"`).
 */

import { type ChatMessage, MAX_NAME_LENGTH, nameProblem, roomProblem } from "../protocol.ts";
import { ChatClient, ChatError, type ClosedReason, type Edit, type Message } from "./chat-client.ts";

const NAME_KEY = "chat.name";
/** Per room, in sessionStorage: this tab was banned there, so it does not knock again by itself. */
const BANNED_KEY = "chat.banned:";
const DEFAULT_ROOM = "lobby";
/** How long a typing notice shows without a new one. */
const TYPING_SHOWN_MS = 4000;
/** Within this many pixels of the bottom, new messages scroll into view. */
const STICK_TO_BOTTOM_PX = 80;
/** Ban lengths a moderator picks from (seconds; 0 = until lifted). */
const BAN_CHOICES: ReadonlyArray<[string, number]> = [
  ["1 hour", 3600],
  ["1 day", 86_400],
  ["1 week", 604_800],
  ["until lifted", 0],
];

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
  stopped: byId("stopped"),
  stoppedText: byId("stopped-text"),
  stoppedRetry: byId<HTMLButtonElement>("stopped-retry"),
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

function bannedHere(room: string): boolean {
  try {
    return sessionStorage.getItem(BANNED_KEY + room) !== null;
  } catch {
    return false;
  }
}

function rememberBan(room: string, banned: boolean): void {
  try {
    if (banned) sessionStorage.setItem(BANNED_KEY + room, String(Date.now()));
    else sessionStorage.removeItem(BANNED_KEY + room);
  } catch {
    // storage disabled: a reload knocks again, and the server refuses again
  }
}

/**
 * How this tab is known: `token` when the welcome named it without `?user=`
 * (the cookie's token; names are identities), `name` when it chose a name,
 * null until the first welcome or failure says.
 */
let identity: "token" | "name" | null = null;
/** Local state for the one conversation on screen. */
let client: ChatClient | null = null;
let unsubscribe: Array<() => void> = [];
/** Own messages shown before the server confirmed them, oldest first. */
let pending: Array<{ text: string; li: HTMLLIElement }> = [];
const typers = new Map<string, ReturnType<typeof setTimeout>>();
let bannerTimer: ReturnType<typeof setTimeout> | null = null;
/** Set by "Try again" after a ban: a handshake that fails before any welcome means "still banned". */
let rejoining = false;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** What the user may do with a message, given who they are. */
function actionsFor(m: { user: string }): Array<"edit" | "delete" | "ban"> {
  if (!client || identity !== "token") return [];
  const own = m.user === client.user;
  const moderator = client.role === "moderator";
  const actions: Array<"edit" | "delete" | "ban"> = [];
  if (own) actions.push("edit");
  if (own || moderator) actions.push("delete");
  if (moderator && !own) actions.push("ban");
  return actions;
}

function messageItem(m: { user: string; message: string; ts?: number; id?: string; edited?: number }, own: boolean) {
  const li = make("li", own ? "message own" : "message");
  const meta = make("div", "meta");
  const user = make("span", "user", m.user);
  if (own) user.append(make("span", "visually-hidden", " (you)"));
  const time = make("time", "time");
  meta.append(user, make("span", "visually-hidden", ": "));
  const text = make("p", "text", m.message);
  if (m.ts !== undefined) setTime(time, m.ts);
  meta.append(time);
  li.append(meta, text);
  if (m.edited !== undefined) markEdited(li, m.edited);
  if (m.id) confirmItem(li, m.id, m.user);
  return li;
}

/** A stored message gets its id and, when the user may act on it, its menu button. */
function confirmItem(li: HTMLLIElement, id: string, author: string): void {
  li.dataset.id = id;
  li.dataset.user = author;
  if (actionsFor({ user: author }).length === 0 || li.querySelector(".menu-button")) return;
  const button = make("button", "menu-button");
  button.type = "button";
  button.setAttribute("aria-haspopup", "menu");
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("aria-label", `Actions for the message from ${author}`);
  button.textContent = "⋯";
  button.addEventListener("click", () => (openMenu?.button === button ? closeMenu(true) : showMenu(li, button)));
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      showMenu(li, button, event.key === "ArrowUp" ? -1 : 0);
    }
  });
  li.querySelector(".meta")?.append(button);
}

function markEdited(li: HTMLElement, edited: number): void {
  let mark = li.querySelector<HTMLElement>(".edited");
  if (!mark) {
    mark = make("span", "edited", "(edited)");
    li.querySelector(".time")?.before(mark);
  }
  mark.title = `edited ${dateFormat.format(new Date(edited))}`;
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

function itemOf(id: string): HTMLLIElement | null {
  return ui.messages.querySelector<HTMLLIElement>(`li.message[data-id="${CSS.escape(id)}"]`);
}

function showMessage(m: Message, live: boolean): void {
  const stick = nearBottom();
  const own = isOwn(m);
  const i = own ? pending.findIndex((p) => p.text === m.message) : -1;
  const mine = pending[i];
  if (mine) {
    // The server confirmed a message already on screen: give it its time and place.
    pending.splice(i, 1);
    mine.li.classList.remove("pending");
    confirmItem(mine.li, m.id, m.user);
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

function showEdit(e: Edit): void {
  const li = itemOf(e.id);
  if (!li) return;
  const text = li.querySelector(".text");
  if (text) text.textContent = e.message;
  markEdited(li, e.edited);
}

function removeMessage(id: string): void {
  const li = itemOf(id);
  if (!li) return;
  const hadFocus = li.contains(document.activeElement);
  if (openMenu?.li === li) closeMenu(false);
  li.remove();
  announce("A message was deleted.");
  if (hadFocus) ui.input.focus();
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

// ---- The message menu: a menu button (ARIA menu pattern), one menu open at a time.

let openMenu: { li: HTMLLIElement; button: HTMLButtonElement; menu: HTMLUListElement } | null = null;

function showMenu(li: HTMLLIElement, button: HTMLButtonElement, focusIndex = 0): void {
  closeMenu(false);
  const author = li.dataset.user ?? "";
  const menu = make("ul", "menu");
  menu.setAttribute("role", "menu");
  menu.setAttribute("aria-label", `Message from ${author}`);
  const labels = { edit: "Edit", delete: "Delete", ban: `Ban ${author}…` } as const;
  for (const action of actionsFor({ user: author })) {
    const item = make("button", `menu-item ${action}`, labels[action]);
    item.type = "button";
    item.setAttribute("role", "menuitem");
    item.tabIndex = -1;
    item.addEventListener("click", () => {
      closeMenu(false);
      runAction(action, li, button);
    });
    const row = make("li");
    row.setAttribute("role", "none");
    row.append(item);
    menu.append(row);
  }
  menu.addEventListener("keydown", (event) => menuKey(event, menu));
  menu.addEventListener("focusout", (event) => {
    // Tabbing (or clicking) away from the menu closes it, as menus do.
    if (!menu.contains(event.relatedTarget as Node | null) && event.relatedTarget !== button) closeMenu(false);
  });
  li.append(menu);
  button.setAttribute("aria-expanded", "true");
  openMenu = { li, button, menu };
  const items = [...menu.querySelectorAll<HTMLButtonElement>("[role=menuitem]")];
  (items.at(focusIndex) ?? items[0])?.focus();
}

function menuKey(event: KeyboardEvent, menu: HTMLUListElement): void {
  const items = [...menu.querySelectorAll<HTMLButtonElement>("[role=menuitem]")];
  const at = items.indexOf(document.activeElement as HTMLButtonElement);
  let next: number | null = null;
  if (event.key === "ArrowDown") next = (at + 1) % items.length;
  else if (event.key === "ArrowUp") next = (at - 1 + items.length) % items.length;
  else if (event.key === "Home") next = 0;
  else if (event.key === "End") next = items.length - 1;
  else if (event.key === "Escape") {
    event.preventDefault();
    closeMenu(true);
    return;
  } else if (event.key === "Tab") {
    closeMenu(false);
    return;
  }
  if (next !== null) {
    event.preventDefault();
    items[next]?.focus();
  }
}

function closeMenu(focusButton: boolean): void {
  const open = openMenu;
  if (!open) return;
  openMenu = null;
  open.menu.remove();
  open.button.setAttribute("aria-expanded", "false");
  if (focusButton) open.button.focus();
}

document.addEventListener("pointerdown", (event) => {
  if (openMenu && !openMenu.menu.contains(event.target as Node) && event.target !== openMenu.button) closeMenu(false);
});

/** An inline panel under a message (edit box, confirmations); Escape or Cancel closes it and gives focus back. */
function panel(li: HTMLLIElement, button: HTMLButtonElement, build: (close: () => void) => HTMLElement): void {
  li.querySelector(".panel")?.remove();
  const close = () => {
    box.remove();
    li.classList.remove("editing");
    if (button.isConnected) button.focus();
    else ui.input.focus();
  };
  const box = build(close);
  box.classList.add("panel");
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });
  li.append(box);
}

function cancelButton(close: () => void): HTMLButtonElement {
  const cancel = make("button", "link", "Cancel");
  cancel.type = "button";
  cancel.addEventListener("click", close);
  return cancel;
}

function failure(box: HTMLElement, error: unknown): void {
  box.querySelector(".failure")?.remove();
  box.append(make("p", "failure", describeError(error, "")));
}

function runAction(action: "edit" | "delete" | "ban", li: HTMLLIElement, button: HTMLButtonElement): void {
  const owner = client;
  const id = li.dataset.id;
  const author = li.dataset.user ?? "";
  if (!owner || !id) return;
  if (action === "edit") {
    panel(li, button, (close) => {
      const form = make("form", "edit-form");
      const inputId = `edit-${id}`;
      const label = make("label", "visually-hidden", "Edit your message");
      label.htmlFor = inputId;
      const input = make("input");
      input.id = inputId;
      input.maxLength = 2000;
      input.value = li.querySelector(".text")?.textContent ?? "";
      const save = make("button", undefined, "Save");
      save.type = "submit";
      form.append(label, input, save, cancelButton(close));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const text = input.value;
        if (text.trim().length === 0 || text === li.querySelector(".text")?.textContent) {
          close();
          return;
        }
        save.disabled = true;
        owner.edit(id, text).then(
          (e) => {
            showEdit(e);
            close();
          },
          (error: unknown) => {
            save.disabled = false;
            failure(form, error);
            input.focus(); // the disabled button lost it
          },
        );
      });
      li.classList.add("editing");
      queueMicrotask(() => {
        input.focus();
        input.select();
      });
      return form;
    });
    return;
  }
  if (action === "delete") {
    panel(li, button, (close) => {
      const box = make("div", "confirm");
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", "Delete this message?");
      const yes = make("button", "danger", "Delete");
      yes.type = "button";
      yes.addEventListener("click", () => {
        yes.disabled = true;
        owner.delete(id).then(
          () => {
            removeMessage(id);
            // The confirmation had focus and is gone with its message.
            ui.input.focus();
          },
          (error: unknown) => {
            yes.disabled = false;
            failure(box, error);
            yes.focus();
          },
        );
      });
      box.append(make("span", undefined, "Delete this message for everyone?"), yes, cancelButton(close));
      queueMicrotask(() => yes.focus());
      return box;
    });
    return;
  }
  panel(li, button, (close) => {
    const form = make("form", "confirm");
    form.setAttribute("aria-label", `Ban ${author}`);
    const selectId = `ban-${id}`;
    const label = make("label", undefined, `Ban ${author} from this room for`);
    label.htmlFor = selectId;
    const select = make("select");
    select.id = selectId;
    for (const [text, seconds] of BAN_CHOICES) {
      const option = make("option", undefined, text);
      option.value = String(seconds);
      select.append(option);
    }
    const yes = make("button", "danger", "Ban");
    yes.type = "submit";
    form.append(label, select, yes, cancelButton(close));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      yes.disabled = true;
      const seconds = Number(select.value);
      owner.ban(author, seconds > 0 ? seconds : undefined).then(
        ({ until }) => {
          close();
          const text = `${author} is banned from this room ${until === null ? "until the ban is lifted" : `until ${dateFormat.format(new Date(until))}`}.`;
          notice(text);
          announce(text);
        },
        (error: unknown) => {
          yes.disabled = false;
          failure(form, error);
          select.focus();
        },
      );
    });
    queueMicrotask(() => select.focus());
    return form;
  });
}

// ---- Loading, sending, connecting.

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
        : error instanceof ChatError && error.code === "rate_limited"
          ? `Too many requests: try again in ${seconds(error.retryAfterMs)}.`
          : "Could not load older messages.",
    );
  } finally {
    ui.older.disabled = false;
    updateOlder();
  }
}

function seconds(ms: number | undefined): string {
  const s = Math.max(1, Math.ceil((ms ?? 1000) / 1000));
  return `${s} second${s === 1 ? "" : "s"}`;
}

function describeError(error: unknown, prefix = "not sent: "): string {
  if (!(error instanceof ChatError)) return prefix ? "not sent" : "failed";
  switch (error.code) {
    case "message_too_long":
      return `${prefix}too long`;
    case "rate_limited":
      return `${prefix}too many at once, try again in ${seconds(error.retryAfterMs)}`;
    case "queue_full":
      return `${prefix}too many messages waiting for the connection`;
    case "unavailable":
      return `${prefix}the server could not store it, try again`;
    case "forbidden":
      return `${prefix}not allowed`;
    case "not_found":
      return `${prefix}the message is gone`;
    case "offline":
      return `${prefix}offline, try again when reconnected`;
    case "closed":
      return prefix ? "not sent" : "disconnected";
    default:
      return `${prefix}${error.message}`;
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
  closeMenu(false);
  for (const t of typers.values()) clearTimeout(t);
  typers.clear();
  pending = [];
}

/** Shows the conversation's frame for `room`, empty. */
function showRoom(room: string): void {
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
  ui.rename.hidden = identity !== "name";
  ui.stopped.hidden = true;
  ui.sendForm.hidden = false;
  ui.chat.classList.remove("ended");
}

/** The conversation ended for good (ban, sign-in gone): say why, stop knocking, offer a deliberate retry. */
function showStopped(text: string): void {
  stop();
  setBanner(null);
  ui.users.replaceChildren();
  ui.onlineCount.textContent = "";
  ui.sendForm.hidden = true;
  ui.stopped.hidden = false;
  // What is on screen stays readable; nothing in it can be acted on any more.
  ui.chat.classList.add("ended");
  for (const box of ui.messages.querySelectorAll(".panel")) box.remove();
  ui.stoppedText.textContent = text;
  ui.chat.hidden = false;
  ui.join.hidden = true;
  ui.stoppedRetry.focus();
}

/**
 * Why this browser may not chat in `room`, when the server says so: a failed
 * WebSocket handshake hides its HTTP status from the page, so the history
 * route, which checks the token the same way, is asked (one message).
 * Null when nothing is wrong there (no auth, or the server is away).
 */
async function accessProblem(room: string): Promise<string | null> {
  try {
    const res = await fetch(`/rooms/${encodeURIComponent(room)}/messages?limit=1`, { credentials: "same-origin" });
    if (res.status === 401) {
      return "You are not signed in to this chat, or your sign-in has expired. Sign in again in the app, then try again.";
    }
    if (res.status === 403) {
      const body = (await res.json().catch(() => ({}))) as { error?: unknown };
      if (body.error === "room not allowed") return `Your account may not enter #${room}.`;
    }
  } catch {
    // offline: nothing to learn
  }
  return null;
}

function closedText(reason: ClosedReason, room: string): string {
  switch (reason) {
    case "banned":
      return `You were disconnected: a moderator banned you from #${room}. You cannot rejoin this room until the ban ends.`;
    case "token_expired":
    case "unauthorized":
      return "You were disconnected: your sign-in has expired. Sign in again in the app, then try again.";
  }
}

/**
 * Connects to `room` as `name`, or (name null) as whoever the browser's
 * token cookie says; a welcome without a name then falls back to asking.
 */
function start(name: string | null, room: string): void {
  stop();
  showRoom(room);
  if (bannedHere(room) && !rejoining) {
    showStopped(closedText("banned", room));
    return;
  }
  const url = new URL("/websocket", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const c = new ChatClient({
    url,
    room,
    ...(name === null ? {} : { user: name }),
    autoConnect: false,
    backoff: { initialMs: 400, factor: 1.6, maxMs: 6000 },
  });
  client = c;
  let catchingUp = true;
  /** An HTTP look at why handshakes fail is under way (one at a time). */
  let asking = false;
  unsubscribe = [
    c.on("message", (m) => showMessage(m, !catchingUp)),
    c.on("open", (e) => {
      if (name === null && e.user === null) {
        // No token names this tab: it must choose a name.
        identity = "name";
        const stored = storedName();
        if (nameProblem(stored) === null) start(stored, room);
        else askName();
        return;
      }
      if (name === null) identity = "token";
      rejoining = false;
      rememberBan(room, false);
      ui.rename.hidden = identity !== "name";
      catchingUp = true;
      showUsers(e.users);
      setBanner(e.resumed ? "Reconnected." : null, "online");
      if (e.resumed) bannerTimer = setTimeout(() => setBanner(null), 2500);
    }),
    c.on("caughtUp", (e) => {
      // The welcome's messages (recent history, or what a resume caught up on)
      // are announced as a count, not one by one; live ones are read out.
      catchingUp = false;
      if (e.resumed && e.count > 0) announce(`${e.count} new message${e.count === 1 ? "" : "s"} while disconnected`);
      updateOlder();
    }),
    c.on("gap", () => notice("Some messages from while you were away could not be recovered.")),
    c.on("presence", (p) => {
      showUsers(p.users);
      for (const user of p.left) stopTyping(user);
    }),
    c.on("edited", (e) => showEdit(e)),
    c.on("deleted", (d) => removeMessage(d.id)),
    c.on("typing", (t) => startTyping(t.user)),
    c.on("beginning", () => updateOlder()),
    c.on("closed", (e) => {
      if (e.reason === "banned") rememberBan(room, true);
      showStopped(closedText(e.reason, room));
    }),
    c.on("status", (s) => {
      if (s.retryInMs !== undefined && (rejoining || (name === null && identity === null))) {
        if (asking) return;
        asking = true;
        // A refused handshake shows the browser no status: ask over HTTP why, if anything says so.
        void accessProblem(room).then((problem) => {
          if (client !== c) return;
          if (problem) {
            rejoining = false;
            showStopped(problem);
          } else if (rejoining) {
            // Refused again before any welcome: the ban holds (or the server is away).
            rejoining = false;
            showStopped(`Could not rejoin #${room}: you are still banned, or the server cannot be reached.`);
          } else {
            // Nothing says this chat needs a token: carry on as the tutorial's page did.
            identity = "name";
            const stored = storedName();
            if (nameProblem(stored) === null) start(stored, room);
            else askName();
          }
        });
        return;
      }
      if (
        s.status === "reconnecting" &&
        s.retryInMs !== undefined &&
        identity === "token" &&
        s.attempt >= 2 &&
        !asking
      ) {
        // Knocking without getting in, on a token: maybe the sign-in ended and the app did not renew the cookie.
        asking = true;
        void accessProblem(room).then((problem) => {
          asking = false;
          if (client === c && problem) showStopped(problem);
        });
      }
      if (s.status === "connecting") setBanner("Connecting…");
      else if (s.status === "reconnecting") {
        offlineBanner = `Disconnected. Reconnecting${s.retryInMs === undefined ? "" : ` in ${Math.max(1, Math.ceil(s.retryInMs / 1000))} s`}…`;
        showOfflineBanner();
      }
    }),
    c.on("error", (e) =>
      notice(e.code === "rate_limited" ? `Slow down: try again in ${seconds(e.retryAfterMs)}.` : e.message),
    ),
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

/** Joins the room in the URL as this tab is known (its token, its chosen name, or: ask). */
function enter(room: string): void {
  if (identity === "name") {
    const name = client?.user ?? storedName();
    if (nameProblem(name) === null) start(name, room);
    else askName();
    return;
  }
  start(null, room);
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
  identity = "name";
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

ui.stoppedRetry.addEventListener("click", () => {
  const room = roomFromHash();
  rejoining = bannedHere(room);
  rememberBan(room, false);
  enter(room);
});

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
  if (!ui.join.hidden) {
    // Still on the name form: joining will use the new room.
    ui.roomInput.value = room;
    ui.roomTitle.textContent = `#${room}`;
    return;
  }
  if (client?.room !== room) enter(room);
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

enter(roomFromHash());
