/**
 * The page end to end: Debian's Chromium (driven by playwright-core) against a
 * real Node server. Two people chat, markup arrives as text, a server restart
 * shows the banner and the page catches up on what it missed, older messages
 * load, and the phone-width layout is captured in test-artifacts/.
 *
 * With AUTH_SECRET (the token in the browser's `token` cookie, as the app's
 * backend would set it): an author edits and deletes, a moderator deletes and
 * bans from the message's menu by keyboard, and the banned tab says why and
 * does not come back. axe-core checks every state of the page (name step,
 * chatting, moderator menu open, banned) in light and dark, desktop and phone
 * width, and must find nothing.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { sign } from "hono/jwt";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { ChatClient } from "../../src/client/chat-client.ts";
import { track, trackForFile } from "../helpers/cleanup.ts";
import { expectRefused } from "../helpers/client.ts";
import { nodeTarget, type RunningServer, tempHistoryPath } from "../helpers/server.ts";

const CHROMIUM = "/usr/bin/chromium";
const AXE = resolve(import.meta.dirname, "../../node_modules/axe-core/axe.min.js");
const SECRET = "e2e-secret-0123456789abcdef";
const ARTIFACTS = resolve(import.meta.dirname, "../../test-artifacts");
const WAIT_MS = 8000;

if (!existsSync(CHROMIUM)) {
  console.warn(`skipping the browser tests: no ${CHROMIUM} (scripts/test-setup.mjs installs Debian's chromium)`);
}

/** One person at one browser tab, with what the page did that it must not. */
interface Person {
  page: Page;
  context: BrowserContext;
  dialogs: string[];
  errors: string[];
  /** WebSockets the page opened. */
  sockets: number;
}

describe("the page's bundle", () => {
  it("is what src/client builds to (static/app.bundle.js is committed for runtimes started without npm)", async () => {
    const root = resolve(import.meta.dirname, "../..");
    const result = await promisify(execFile)("node", ["scripts/build-client.mjs", "--check"], { cwd: root }).then(
      () => "current",
      (error: { stderr?: string }) => error.stderr ?? String(error),
    );
    expect(result).toBe("current");
  });
});

// Browser cases do a lot (several tabs, a server restart, axe over the page): on a loaded
// two-core machine they need more than the suite's 30 s default. A bound, not a timed assertion.
describe.skipIf(!existsSync(CHROMIUM))("the chat page in Chromium", { timeout: 90_000 }, () => {
  let browser: Browser;
  let server: RunningServer;
  /** The same server with AUTH_SECRET: names come from tokens, so edit, delete and ban are on. */
  let authed: RunningServer;
  let axeSource: string;

  beforeAll(async () => {
    axeSource = readFileSync(AXE, "utf8");
    // No rate limit: the paging case seeds 70 messages at once.
    [server, authed] = await Promise.all([
      nodeTarget.start({ RATE_LIMIT: "0" }),
      nodeTarget.start({ RATE_LIMIT: "0", AUTH_SECRET: SECRET }),
    ]);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
      ],
    });
    trackForFile(() => browser.close());
  });

  /** A token as the app's backend would issue it (an hour, unless `exp` says otherwise). */
  function token(name: string, claims: Record<string, unknown> = {}): Promise<string> {
    return sign({ name, exp: Math.floor(Date.now() / 1000) + 3600, ...claims }, SECRET, "HS256");
  }

  /**
   * A fresh profile (own localStorage) with the page open at `#room`. With a
   * `token` it goes in the `token` cookie (the page then never asks a name);
   * otherwise the page asks, and `name` is typed by keyboard (null: stay on
   * the name step).
   */
  async function open(
    name: string | null,
    room: string,
    opts: { width?: number; height?: number; dark?: boolean; server?: RunningServer; token?: string } = {},
  ): Promise<Person> {
    const target = opts.server ?? (opts.token ? authed : server);
    const context = await browser.newContext({
      viewport: { width: opts.width ?? 1000, height: opts.height ?? 700 },
      colorScheme: opts.dark ? "dark" : "light",
    });
    track(() => context.close());
    if (opts.token) await context.addCookies([{ name: "token", value: opts.token, url: target.url }]);
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    const person: Person = { page, context, dialogs: [], errors: [], sockets: 0 };
    page.on("dialog", (dialog) => {
      person.dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    page.on("pageerror", (error) => person.errors.push(error.message));
    page.on("websocket", () => person.sockets++);
    // A CSP violation is only reported on the console.
    page.on("console", (message) => {
      if (message.type() === "error" && /Content Security Policy/i.test(message.text()))
        person.errors.push(message.text());
    });
    await page.goto(`${target.url}/#${room}`);
    if (opts.token) {
      await page.locator("#chat").waitFor({ state: "visible" });
      await page.locator("#banner").waitFor({ state: "hidden" });
    } else {
      await page.locator("#join").waitFor({ state: "visible" });
      if (name !== null) {
        await page.locator("#name").focus();
        await page.keyboard.type(name);
        await page.keyboard.press("Enter");
        await page.locator("#chat").waitFor({ state: "visible" });
        await page.locator("#banner").waitFor({ state: "hidden" });
      }
    }
    return person;
  }

  /** axe-core's violations on the page as it is now, one line each (rule: elements). */
  async function axe(p: Person): Promise<string[]> {
    if (!(await p.page.evaluate(() => "axe" in window))) await p.page.evaluate(axeSource);
    return p.page.evaluate(async () => {
      type Result = { violations: Array<{ id: string; nodes: Array<{ target: unknown[] }> }> };
      const run = (window as unknown as { axe: { run(ctx: unknown, opts: unknown): Promise<Result> } }).axe.run;
      const result = await run(document, { resultTypes: ["violations"] });
      return result.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    });
  }

  /** Types a message and sends it with Enter, the way a keyboard user does. */
  async function say(p: Person, text: string): Promise<void> {
    await p.page.locator("#message").fill(text);
    await p.page.keyboard.press("Enter");
  }

  const texts = (p: Person) => p.page.locator("#messages li.message .text").allTextContents();
  const confirmedTexts = (p: Person) => p.page.locator("#messages li.message:not(.pending) .text").allTextContents();

  it("lets two tabs chat: names, own messages marked, who is online, typing, Enter sends, focus stays", async () => {
    const ada = await open("ada", "lobby");
    const grace = await open("grace", "lobby");

    await say(ada, "hello grace");
    await expect.poll(() => texts(grace)).toEqual(["hello grace"]);
    expect(await ada.page.evaluate(() => document.activeElement?.id)).toBe("message");
    await expect.poll(() => ada.page.locator("#messages li.message.own").count()).toBe(1);
    expect(await grace.page.locator("#messages li.message.own").count()).toBe(0);
    expect(await grace.page.locator("#messages li.message .user").first().textContent()).toBe("ada");
    expect(await grace.page.locator("#messages li.message time").first().getAttribute("datetime")).toMatch(
      /^\d{4}-\d\d-\d\dT/,
    );
    // New messages reach screen readers through the live region.
    await expect.poll(() => grace.page.locator("#announce").textContent()).toContain("ada: hello grace");

    await expect
      .poll(() => ada.page.locator("#users li").allTextContents())
      .toEqual(["ada", "grace (you)"].sort().length === 2 ? ["ada (you)", "grace"] : []);
    expect(await grace.page.locator("#online-count").textContent()).toBe("(2)");

    await grace.page.locator("#message").pressSequentially("on my w");
    await expect.poll(() => ada.page.locator("#typing").textContent()).toBe("grace is typing…");
    await grace.page.keyboard.type("ay");
    await grace.page.keyboard.press("Enter");
    await expect.poll(() => texts(ada)).toEqual(["hello grace", "on my way"]);
    await expect.poll(() => ada.page.locator("#typing").textContent()).toBe("");

    // The name is remembered: a reload goes straight to the room.
    await ada.page.reload();
    await ada.page.locator("#chat").waitFor({ state: "visible" });
    expect(await ada.page.locator("#join").isHidden()).toBe(true);
    await expect.poll(() => confirmedTexts(ada)).toEqual(["hello grace", "on my way"]);
    expect(await ada.page.locator("#messages li.message.own .text").allTextContents()).toEqual(["hello grace"]);
    // The history that comes with the page is shown, not read out one by one.
    expect(await ada.page.locator("#announce").textContent()).toBe("");

    // Switching rooms by keyboard: the URL names the room, the list is that room's.
    await ada.page.locator("#room-input").fill("elsewhere");
    await ada.page.keyboard.press("Enter");
    await expect.poll(() => ada.page.evaluate(() => location.hash)).toBe("#elsewhere");
    await expect.poll(() => ada.page.locator("#room-title").textContent()).toBe("#elsewhere");
    await expect.poll(() => ada.page.locator("#users li").allTextContents()).toEqual(["ada (you)"]);
    expect(await texts(ada)).toEqual([]);
    expect([...ada.dialogs, ...grace.dialogs, ...ada.errors, ...grace.errors]).toEqual([]);
  });

  it("shows markup as text and runs none of it", async () => {
    const ada = await open("ada", "xss");
    const mallory = await open("mallory", "xss");
    const attack = "<img src=x onerror=alert(1)>";
    await say(mallory, attack);
    await say(mallory, "<script>alert(2)</script><b>bold?</b>");
    await expect.poll(() => texts(ada)).toEqual([attack, "<script>alert(2)</script><b>bold?</b>"]);
    // Had the text been parsed as HTML, the broken image would have fired its onerror by now.
    await ada.page.waitForTimeout(300);
    expect(await ada.page.locator("#messages img, #messages script, #messages b").count()).toBe(0);
    expect(ada.dialogs).toEqual([]);
    expect(mallory.dialogs).toEqual([]);
    expect([...ada.errors, ...mallory.errors]).toEqual([]);

    // And a second line of defence: the page may run no inline script at all.
    const res = await ada.page.request.get(`${server.url}/`);
    const csp = res.headers()["content-security-policy"] ?? "";
    expect(csp).toMatch(/script-src 'self'(;|$)/);
    expect(csp).not.toContain("unsafe-inline");
    expect(await res.text()).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
  });

  it("shows a banner while the server is down, then catches up on what another tab sent in the gap", async () => {
    // A server of its own, on a port and history file that outlive its restart.
    const historyPath = tempHistoryPath();
    let own = await nodeTarget.start({}, { historyPath });
    const port = new URL(own.url).port;
    const ada = await open("ada", "restart", { server: own });
    const grace = await open("grace", "restart", { server: own });
    await say(grace, "before the restart");
    await expect.poll(() => texts(ada)).toEqual(["before the restart"]);

    await own.stop();
    for (const p of [ada, grace]) {
      await p.page.locator("#banner").waitFor({ state: "visible" });
      await expect.poll(() => p.page.locator("#banner").textContent()).toContain("Disconnected");
    }
    // Keep ada away while grace is back, so grace's messages land in ada's gap.
    await ada.context.setOffline(true);
    await say(ada, "written while offline");
    await expect.poll(() => ada.page.locator("#banner").textContent()).toContain("1 message will be sent then.");

    own = await nodeTarget.start({ PORT: port }, { historyPath });
    await expect.poll(() => grace.page.locator("#banner.offline").count(), { timeout: 15_000 }).toBe(0);
    await say(grace, "sent in the gap 1");
    await say(grace, "sent in the gap 2");
    await expect
      .poll(() => confirmedTexts(grace))
      .toEqual(["before the restart", "sent in the gap 1", "sent in the gap 2"]);
    expect(await ada.page.locator("#banner.offline").textContent()).toContain("Disconnected");
    expect(await confirmedTexts(ada)).toEqual(["before the restart"]);

    await ada.context.setOffline(false);
    await expect.poll(() => ada.page.locator("#banner.offline").count(), { timeout: 15_000 }).toBe(0);
    const expected = ["before the restart", "sent in the gap 1", "sent in the gap 2", "written while offline"];
    await expect.poll(() => confirmedTexts(ada)).toEqual(expected);
    await expect.poll(() => ada.page.locator("#announce").textContent()).toContain("2 new messages while disconnected");
    await expect.poll(() => confirmedTexts(grace)).toEqual(expected);
    await ada.page.waitForTimeout(200); // room for a duplicate to show up
    expect(await texts(ada)).toEqual(expected);
    expect(await texts(grace)).toEqual(expected);
  });

  it("loads older messages by keyboard until the start of the conversation", async () => {
    const seeder = new ChatClient({ url: server.wsUrl, room: "archive", user: "archivist", WebSocket });
    track(() => seeder.close());
    await Promise.all(Array.from({ length: 70 }, (_, i) => seeder.send(`old ${i}`)));
    const ada = await open("ada", "archive");
    await expect.poll(() => ada.page.locator("#messages li.message").count()).toBe(50);
    expect((await texts(ada))[0]).toBe("old 20");

    await ada.page.locator("#older").focus();
    await ada.page.keyboard.press("Enter");
    await expect.poll(() => ada.page.locator("#messages li.message").count()).toBe(70);
    const all = await texts(ada);
    expect(all).toEqual(Array.from({ length: 70 }, (_, i) => `old ${i}`));
    await ada.page.locator("#history-start").waitFor({ state: "visible" });
    expect(await ada.page.locator("#older").isHidden()).toBe(true);
  });

  it("fits a phone screen in light and dark (screenshots in test-artifacts/)", async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const grace = await open("grace", "phone");
    await say(grace, "Anyone up for lunch at noon?");
    for (const dark of [false, true]) {
      const ada = await open("ada", "phone", { width: 390, height: 844, dark });
      await say(ada, dark ? "Still yes!" : "Yes! The usual place?");
      const reply = dark ? "See you there" : "Sure, see you at 12 <3";
      await say(grace, reply);
      // Typing notices skip the store, so wait for the message before typing: otherwise the notice may overtake it.
      await expect.poll(async () => (await texts(ada)).at(-1)).toBe(reply);
      if (!dark) {
        // The server relays one typing notice a second per connection, and grace's last was while writing the reply.
        await grace.page.waitForTimeout(1100);
        await grace.page.locator("#message").pressSequentially("ok");
        await expect.poll(() => ada.page.locator("#typing").textContent()).toBe("grace is typing…");
        await grace.page.locator("#message").fill("");
      }
      // A short room's welcome holds all of it: nothing older to offer.
      await ada.page.locator("#history-start").waitFor({ state: "visible" });
      expect(await ada.page.locator("#older").isHidden()).toBe(true);
      // Nothing wider than the screen: no sideways scrolling on a phone.
      expect(await ada.page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
      const background = await ada.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      expect(background).toBe(dark ? "rgb(20, 22, 26)" : "rgb(246, 247, 249)");
      await ada.page.screenshot({ path: resolve(ARTIFACTS, dark ? "page-phone-dark.png" : "page-phone.png") });
      await ada.context.close();
    }
    expect(existsSync(resolve(ARTIFACTS, "page-phone.png"))).toBe(true);
  });
  /** The menu button of the message whose text is `text`, in `p`'s tab. */
  const menuButton = (p: Person, text: string) =>
    p.page.locator("#messages li.message", { has: p.page.locator(".text", { hasText: text }) }).locator(".menu-button");
  const focused = (p: Person) =>
    p.page.evaluate(() => {
      const el = document.activeElement;
      return el
        ? `${el.tagName.toLowerCase()}${el.className ? `.${el.className.split(" ").join(".")}` : ""}: ${el.textContent ?? ""}`
        : "";
    });

  it("lets an author edit and delete by keyboard: the other tab shows the new text with (edited), then loses it", async () => {
    const ada = await open("ada", "edits", { token: await token("ada") });
    const grace = await open("grace", "edits", { token: await token("grace") });
    expect(await ada.page.locator("#join").isHidden()).toBe(true); // the cookie named her: no name step
    expect(await ada.page.locator("#rename").isHidden()).toBe(true);
    await say(ada, "helo grace");
    await say(grace, "hi ada");
    await expect.poll(() => confirmedTexts(ada)).toEqual(["helo grace", "hi ada"]);
    await expect.poll(() => texts(grace)).toEqual(["helo grace", "hi ada"]);
    // Only one's own messages have a menu (neither is a moderator).
    expect(await ada.page.locator("#messages .menu-button").count()).toBe(1);
    expect(await grace.page.locator("#messages .menu-button").count()).toBe(1);

    // The menu button: Enter opens the menu on its first item, Escape closes it and gives focus back.
    const button = menuButton(ada, "helo grace");
    expect(await button.getAttribute("aria-haspopup")).toBe("menu");
    await button.focus();
    await ada.page.keyboard.press("Enter");
    await ada.page.locator("[role=menu]").waitFor({ state: "visible" });
    expect(await button.getAttribute("aria-expanded")).toBe("true");
    expect(await ada.page.locator("[role=menu] [role=menuitem]").allTextContents()).toEqual(["Edit", "Delete"]);
    expect(await focused(ada)).toBe("button.menu-item.edit: Edit");
    await ada.page.keyboard.press("ArrowDown");
    expect(await focused(ada)).toBe("button.menu-item.delete: Delete");
    await ada.page.keyboard.press("ArrowDown"); // wraps around
    expect(await focused(ada)).toBe("button.menu-item.edit: Edit");
    await ada.page.keyboard.press("Escape");
    expect(await ada.page.locator("[role=menu]").count()).toBe(0);
    expect(await button.getAttribute("aria-expanded")).toBe("false");
    expect(await focused(ada)).toBe("button.menu-button: ⋯");

    // Edit: Enter on "Edit", the box has the text, Enter saves.
    await ada.page.keyboard.press("Enter");
    await ada.page.keyboard.press("Enter");
    const box = ada.page.locator("#messages .edit-form input");
    await box.waitFor({ state: "visible" });
    expect(await box.inputValue()).toBe("helo grace");
    await box.fill("hello grace");
    await ada.page.keyboard.press("Enter");
    await expect.poll(() => texts(grace)).toEqual(["hello grace", "hi ada"]);
    const edited = (p: Person) => p.page.locator("#messages li.message .edited").allTextContents();
    await expect.poll(() => edited(grace)).toEqual(["(edited)"]);
    await expect.poll(() => edited(ada)).toEqual(["(edited)"]);
    expect(await texts(ada)).toEqual(["hello grace", "hi ada"]);
    expect(await focused(ada)).toBe("button.menu-button: ⋯"); // back where the edit started

    // A reload shows the edit from the history.
    await grace.page.reload();
    await expect.poll(() => texts(grace)).toEqual(["hello grace", "hi ada"]);
    expect(await edited(grace)).toEqual(["(edited)"]);

    // Delete: menu, ArrowDown to "Delete", confirm.
    await ada.page.keyboard.press("Enter");
    await ada.page.keyboard.press("ArrowDown");
    await ada.page.keyboard.press("Enter");
    expect(await focused(ada)).toBe("button.danger: Delete");
    await ada.page.keyboard.press("Enter");
    await expect.poll(() => texts(grace)).toEqual(["hi ada"]);
    await expect.poll(() => texts(ada)).toEqual(["hi ada"]);
    expect(await focused(ada)).toBe("input: "); // the message box, not a removed element
    await expect.poll(() => grace.page.locator("#announce").textContent()).toContain("A message was deleted.");
    expect([...ada.dialogs, ...grace.dialogs, ...ada.errors, ...grace.errors]).toEqual([]);
  });

  it("lets a moderator delete another's message and ban them; the banned tab says why and cannot rejoin", async () => {
    const mod = await open("mod", "modroom", { token: await token("mod", { role: "moderator" }) });
    const malloryToken = await token("mallory");
    const mallory = await open("mallory", "modroom", { token: malloryToken });
    await say(mod, "welcome all");
    await say(mallory, "buy cheap stuff");
    await expect.poll(() => texts(mallory)).toEqual(["welcome all", "buy cheap stuff"]);
    await expect.poll(() => confirmedTexts(mod)).toEqual(["welcome all", "buy cheap stuff"]);

    // Others' messages have the moderator's menu: delete and ban.
    const spam = menuButton(mod, "buy cheap stuff");
    await spam.focus();
    await mod.page.keyboard.press("Enter");
    expect(await mod.page.locator("[role=menu] [role=menuitem]").allTextContents()).toEqual(["Delete", "Ban mallory…"]);
    await mod.page.keyboard.press("Enter");
    await mod.page.keyboard.press("Enter"); // confirm
    await expect.poll(() => texts(mallory)).toEqual(["welcome all"]);
    await expect.poll(() => texts(mod)).toEqual(["welcome all"]);

    await say(mallory, "BUY NOW");
    await expect.poll(() => texts(mod)).toEqual(["welcome all", "BUY NOW"]);
    const socketsBefore = mallory.sockets;
    await menuButton(mod, "BUY NOW").focus();
    await mod.page.keyboard.press("End"); // no effect on the button
    await mod.page.keyboard.press("ArrowUp"); // opens on the last item
    expect(await focused(mod)).toBe("button.menu-item.ban: Ban mallory…");
    await mod.page.keyboard.press("Enter");
    expect(await focused(mod)).toMatch(/^select/);
    await mod.page.keyboard.press("Tab");
    expect(await focused(mod)).toBe("button.danger: Ban");
    await mod.page.keyboard.press("Enter"); // the first choice: 1 hour
    await expect
      .poll(() => mod.page.locator("#messages li.notice").allTextContents())
      .toEqual([expect.stringMatching(/^mallory is banned from this room until /)]);

    // Mallory's tab: told why, no send box, no reconnecting.
    await mallory.page.locator("#stopped").waitFor({ state: "visible" });
    expect(await mallory.page.locator("#stopped-text").textContent()).toContain("a moderator banned you from #modroom");
    expect(await mallory.page.locator("#send-form").isHidden()).toBe(true);
    expect(await mallory.page.locator("#banner").isHidden()).toBe(true);
    expect(await mallory.page.locator("#messages .menu-button").isVisible()).toBe(false);
    await expect.poll(() => mod.page.locator("#users li").allTextContents()).toEqual(["mod (you)"]);
    await mallory.page.waitForTimeout(1500); // several backoff steps: none may happen
    expect(mallory.sockets).toBe(socketsBefore);

    // A reload does not knock again by itself; "Try again" does, and is refused.
    await mallory.page.reload();
    await mallory.page.locator("#stopped").waitFor({ state: "visible" });
    expect(await mallory.page.locator("#stopped-text").textContent()).toContain("banned you from #modroom");
    await mallory.page.waitForTimeout(500);
    expect(mallory.sockets).toBe(socketsBefore);
    await mallory.page.locator("#stopped-retry").click();
    await expect
      .poll(() => mallory.page.locator("#stopped-text").textContent())
      .toContain("Could not rejoin #modroom: you are still banned");
    expect(mallory.sockets).toBe(socketsBefore + 1);
    // The server's own word: the handshake is refused.
    const refused = await expectRefused(`${authed.wsUrl}?room=modroom&token=${malloryToken}`);
    expect(refused).toMatchObject({ status: 403, body: { error: "banned" } });
    expect([...mod.errors, ...mallory.errors, ...mod.dialogs, ...mallory.dialogs]).toEqual([]);
  });

  it("keeps chatting past the token's expiry when the app's backend renews the cookie (4001, then a reconnect)", async () => {
    const ada = await open("ada", "renew", { token: await token("ada") });
    const grace = await open("grace", "renew", { token: await token("grace") });
    await say(ada, "before expiry");
    await expect.poll(() => texts(grace)).toEqual(["before expiry"]);
    // A session on a token that ends in 10 s (signed now: page loads can be slow here).
    const shortLived = await token("ada", { exp: Math.floor(Date.now() / 1000) + 10 });
    await ada.context.addCookies([{ name: "token", value: shortLived, url: authed.url }]);
    await ada.page.reload();
    await ada.page.locator("#chat").waitFor({ state: "visible" });
    await ada.page.locator("#banner").waitFor({ state: "hidden" });
    await expect.poll(() => confirmedTexts(ada)).toEqual(["before expiry"]);
    // What the backend does before exp: a fresh cookie. The open connection still runs on the old token.
    await ada.context.addCookies([{ name: "token", value: await token("ada"), url: authed.url }]);
    const sockets = ada.sockets;
    // The server closes at exp (4001); the page reconnects and the handshake carries the new cookie.
    await expect.poll(() => ada.sockets, { timeout: 15_000 }).toBe(sockets + 1);
    await expect.poll(() => ada.page.locator("#banner.offline").count(), { timeout: 10_000 }).toBe(0);
    await say(ada, "after expiry");
    await expect.poll(() => texts(grace)).toEqual(["before expiry", "after expiry"]);
    await expect.poll(() => confirmedTexts(ada)).toEqual(["before expiry", "after expiry"]);
    expect(await ada.page.locator("#stopped").isHidden()).toBe(true);
    expect([...ada.errors, ...grace.errors]).toEqual([]);
  });

  it("tells a browser without a valid token cookie to sign in, instead of asking a name or knocking forever", async () => {
    // No cookie at all: the handshake is refused (401), and the page says why.
    const context = await browser.newContext();
    track(() => context.close());
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    await page.goto(`${authed.url}/#lobby`);
    await page.locator("#stopped").waitFor({ state: "visible" });
    expect(await page.locator("#stopped-text").textContent()).toContain("You are not signed in to this chat");
    expect(await page.locator("#join").isHidden()).toBe(true);
    expect(await axe({ page, context, dialogs: [], errors: [], sockets: 0 })).toEqual([]);
    await page.screenshot({ path: resolve(ARTIFACTS, "page-signed-out.png") });

    // A cookie that expires and is not renewed: 4001, a few refused reconnects, then the same answer.
    const ada = await open("ada", "unrenewed", {
      token: await token("ada", { exp: Math.floor(Date.now() / 1000) + 8 }),
    });
    await ada.page.locator("#stopped").waitFor({ state: "visible", timeout: 40_000 });
    expect(await ada.page.locator("#stopped-text").textContent()).toContain("your sign-in has expired");
    const sockets = ada.sockets;
    await ada.page.waitForTimeout(2000);
    expect(ada.sockets).toBe(sockets); // stopped knocking
    expect(ada.errors).toEqual([]);
  });

  for (const [width, height, size] of [
    [1000, 700, "desktop"],
    [390, 844, "phone"],
  ] as const) {
    for (const dark of [false, true]) {
      const look = `${size}, ${dark ? "dark" : "light"}`;
      it(`has no axe-core violations in any state (${look}); screenshots in test-artifacts/`, async () => {
        mkdirSync(ARTIFACTS, { recursive: true });
        const shot = (p: Person, state: string) =>
          p.page.screenshot({ path: resolve(ARTIFACTS, `page-${state}-${size}-${dark ? "dark" : "light"}.png`) });
        const view = { width, height, dark };
        const found: Record<string, string[]> = {};

        const newcomer = await open(null, "lobby", view);
        // The check can fail: a button without a name is found.
        await newcomer.page.evaluate(() =>
          document.querySelector("#join form")?.append(document.createElement("button")),
        );
        expect(await axe(newcomer)).toEqual([expect.stringMatching(/^button-name: /)]);
        await newcomer.page.evaluate(() => document.querySelector("#join form > button:last-child")?.remove());
        found["name step"] = await axe(newcomer);
        await shot(newcomer, "name");

        const room = `axe-${size}-${dark ? "dark" : "light"}`;
        const victim = await open("troll", room, { ...view, token: await token("troll") });
        const mod = await open("mod", room, { ...view, token: await token("mod", { role: "moderator" }) });
        await say(mod, "Welcome! Please keep it friendly.");
        await say(victim, "first!!!");
        await expect.poll(() => confirmedTexts(mod)).toEqual(["Welcome! Please keep it friendly.", "first!!!"]);
        await mod.page.locator("#messages li.message.own .menu-button").focus();
        await mod.page.keyboard.press("Enter");
        await mod.page.keyboard.press("Enter");
        await mod.page.locator(".edit-form input").fill("Welcome! Please keep it kind.");
        await mod.page.keyboard.press("Enter");
        await expect.poll(() => mod.page.locator(".edited").count()).toBe(1);
        found.chatting = await axe(mod);
        await shot(mod, "chatting");

        await menuButton(mod, "first!!!").click();
        await mod.page.locator("[role=menu]").waitFor({ state: "visible" });
        found["moderator menu open"] = await axe(mod);
        await shot(mod, "menu");

        await mod.page.locator("[role=menu] .ban").click();
        await mod.page.locator(".panel select").waitFor({ state: "visible" });
        found["ban form open"] = await axe(mod);
        await shot(mod, "ban-form");
        await mod.page.locator(".panel button.danger").click();
        await victim.page.locator("#stopped").waitFor({ state: "visible" });
        found.banned = await axe(victim);
        await shot(victim, "banned");

        expect(found).toEqual({
          "name step": [],
          chatting: [],
          "moderator menu open": [],
          "ban form open": [],
          banned: [],
        });
        // Nothing wider than the screen: no sideways scrolling.
        for (const p of [newcomer, mod, victim]) {
          expect(await p.page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(width);
        }
        expect([...newcomer.errors, ...mod.errors, ...victim.errors]).toEqual([]);
      });
    }
  }
});
