/**
 * The page end to end: Debian's Chromium (driven by playwright-core) against a
 * real Node server. Two people chat, markup arrives as text, a server restart
 * shows the banner and the page catches up on what it missed, older messages
 * load, and the phone-width layout is captured in test-artifacts/.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { ChatClient } from "../../src/client/chat-client.ts";
import { track, trackForFile } from "../helpers/cleanup.ts";
import { nodeTarget, type RunningServer, tempHistoryPath } from "../helpers/server.ts";

const CHROMIUM = "/usr/bin/chromium";
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

describe.skipIf(!existsSync(CHROMIUM))("the chat page in Chromium", () => {
  let browser: Browser;
  let server: RunningServer;

  beforeAll(async () => {
    // No rate limit: the paging case seeds 70 messages at once.
    server = await nodeTarget.start({ RATE_LIMIT: "0" });
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

  /** A fresh profile (own localStorage) with the page open at `#room`; joins as `name` by keyboard. */
  async function open(
    name: string | null,
    room: string,
    opts: { width?: number; height?: number; dark?: boolean; server?: RunningServer } = {},
  ): Promise<Person> {
    const context = await browser.newContext({
      viewport: { width: opts.width ?? 1000, height: opts.height ?? 700 },
      colorScheme: opts.dark ? "dark" : "light",
    });
    track(() => context.close());
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    const person: Person = { page, context, dialogs: [], errors: [] };
    page.on("dialog", (dialog) => {
      person.dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    page.on("pageerror", (error) => person.errors.push(error.message));
    // A CSP violation is only reported on the console.
    page.on("console", (message) => {
      if (message.type() === "error" && /Content Security Policy/i.test(message.text()))
        person.errors.push(message.text());
    });
    await page.goto(`${(opts.server ?? server).url}/#${room}`);
    if (name !== null) {
      await page.locator("#name").focus();
      await page.keyboard.type(name);
      await page.keyboard.press("Enter");
      await page.locator("#chat").waitFor({ state: "visible" });
      await page.locator("#banner").waitFor({ state: "hidden" });
    }
    return person;
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
});
