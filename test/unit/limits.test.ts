/**
 * The fair-use parts on their own: the cost-aware bucket (retryAfterMs is
 * exact), the per-connection and per-address limits, the bound on the
 * per-address table, client-address resolution behind trusted proxies, and
 * the Host allow-list. Time is passed in, never waited for.
 */
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import {
  addressKey,
  clientAddress,
  clientKey,
  isDottedQuad,
  parseStrict,
  parseTrustProxy,
  TRUST_NONE,
} from "../../src/limits/address.ts";
import { TokenBucket } from "../../src/limits/bucket.ts";
import { allowedHostsFor, hostAllowed, parseAllowedHosts } from "../../src/limits/hosts.ts";
import { AddressLimits, ConnectionLimits, readCost, textCost } from "../../src/limits/limiter.ts";
import { LogThrottle } from "../../src/observability/throttle.ts";

const settings = (env: Record<string, string> = {}) => loadConfig(env);

describe("TokenBucket", () => {
  it("allows a burst of capacity, then refills at the rate", () => {
    const bucket = new TokenBucket(3, 2, 0);
    expect([bucket.take(1, 0), bucket.take(1, 0), bucket.take(1, 0)]).toEqual([0, 0, 0]);
    expect(bucket.take(1, 0)).toBe(500); // 2 per second: one token after 500 ms
    expect(bucket.take(1, 499)).toBe(1);
    expect(bucket.take(1, 500)).toBe(0);
    expect(bucket.take(1, 10_000)).toBe(0);
    expect(bucket.take(1, 10_000)).toBe(0);
    expect(bucket.take(1, 10_000)).toBe(0);
    expect(bucket.take(1, 10_000)).toBeGreaterThan(0); // never more than capacity
  });

  it("charges by cost and refuses the whole request when short", () => {
    const bucket = new TokenBucket(20, 2, 0);
    expect(bucket.take(10, 0)).toBe(0);
    expect(bucket.take(10, 0)).toBe(0);
    const wait = bucket.take(10, 0);
    expect(wait).toBe(5000); // 10 tokens at 2 per second
    expect(bucket.take(1, 0)).toBe(500); // the refused request took nothing
  });

  it("retryAfterMs is exact: waiting that long succeeds, a millisecond less does not", () => {
    for (const [capacity, rate, cost] of [
      [10, 1, 1],
      [100, 10, 1],
      [20, 2, 10],
      [20, 5, 1],
      [7, 3, 2],
    ] as const) {
      const bucket = new TokenBucket(capacity, rate, 1000);
      let now = 1000;
      while (bucket.take(cost, now) === 0) now += 1;
      const wait = bucket.wait(cost, now);
      expect(wait).toBeGreaterThan(0);
      expect(bucket.wait(cost, now + wait - 1)).toBeGreaterThan(0);
      expect(bucket.take(cost, now + wait)).toBe(0);
    }
  });

  it("a cost above the capacity is charged as the capacity, so it can succeed", () => {
    const bucket = new TokenBucket(5, 1, 0);
    expect(bucket.take(50, 0)).toBe(0);
    expect(bucket.take(50, 0)).toBe(5000);
  });
});

describe("readCost", () => {
  it("is one unit per 50 messages read, at least 1", () => {
    expect([readCost(1), readCost(50), readCost(51), readCost(500)]).toEqual([1, 1, 2, 10]);
  });
});

describe("ConnectionLimits", () => {
  it("messages: RATE_LIMIT per connection, refilled at RATE_LIMIT_REFILL", () => {
    const limits = new ConnectionLimits(settings(), null, "1.2.3.4");
    for (let i = 0; i < 10; i++) expect(limits.charge("message", 1, 0)).toBe(0);
    expect(limits.charge("message", 1, 0)).toBe(1000);
    expect(limits.charge("message", 1, 1000)).toBe(0);
  });

  it("reads, messages and control frames have separate buckets", () => {
    const limits = new ConnectionLimits(settings(), null, "k");
    expect(limits.charge("read", 20, 0)).toBe(0);
    expect(limits.charge("read", 1, 0)).toBe(500);
    expect(limits.charge("message", 1, 0)).toBe(0);
    for (let i = 0; i < 20; i++) expect(limits.charge("control", 1, 0)).toBe(0);
    expect(limits.charge("control", 1, 0)).toBe(200);
  });

  it("RATE_LIMIT=0 turns every rate limit off", () => {
    const config = settings({ RATE_LIMIT: "0" });
    const addresses = new AddressLimits(config, 100, 0);
    const limits = new ConnectionLimits(config, addresses, "k");
    for (let i = 0; i < 1000; i++) expect(limits.charge("read", 10, 0)).toBe(0);
    for (let i = 0; i < 1000; i++) expect(addresses.admit("k", 0)).toBeNull();
  });

  it("the address bucket is shared: a new connection from the same address buys nothing", () => {
    const config = settings();
    const addresses = new AddressLimits(config, 100, 0);
    let sent = 0;
    for (let conn = 0; conn < 30; conn++) {
      const limits = new ConnectionLimits(config, addresses, "10.0.0.1");
      for (let i = 0; i < 10; i++) if (limits.charge("message", 1, 0) === 0) sent++;
    }
    expect(sent).toBe(100);
    const other = new ConnectionLimits(config, addresses, "10.0.0.2");
    expect(other.charge("message", 1, 0)).toBe(0);
    // The wait is the address's: 10 per second.
    expect(new ConnectionLimits(config, addresses, "10.0.0.1").charge("message", 1, 0)).toBe(100);
  });

  it("both buckets or neither: a refusal by the address leaves the connection's tokens", () => {
    const config = settings({ RATE_LIMIT_IP: "5" });
    const addresses = new AddressLimits(config, 100, 0);
    const a = new ConnectionLimits(config, addresses, "k");
    for (let i = 0; i < 5; i++) expect(a.charge("message", 1, 0)).toBe(0);
    expect(a.charge("message", 1, 0)).toBe(100);
    // The address refilled after 1 s (10 units) and the connection still has its 5.
    for (let i = 0; i < 5; i++) expect(a.charge("message", 1, 1000)).toBe(0);
  });
});

describe("AddressLimits", () => {
  it("caps open connections per address (MAX_CONNECTIONS_PER_IP); 0 is no cap", () => {
    const addresses = new AddressLimits(settings({ MAX_CONNECTIONS_PER_IP: "3", RATE_LIMIT: "0" }), 100, 0);
    for (let i = 0; i < 3; i++) {
      expect(addresses.admit("a", 0)).toBeNull();
      expect(addresses.open("a", 0)).toBe(true);
    }
    expect(addresses.admit("a", 0)).toMatchObject({ retryAfterMs: null });
    expect(addresses.open("a", 0)).toBe(false);
    expect(addresses.admit("b", 0)).toBeNull();
    addresses.close("a", 0);
    expect(addresses.admit("a", 0)).toBeNull();
    const uncapped = new AddressLimits(settings({ MAX_CONNECTIONS_PER_IP: "0", RATE_LIMIT: "0" }), 100, 0);
    for (let i = 0; i < 1000; i++) expect(uncapped.open("a", 0)).toBe(true);
  });

  it("handshakes have their own bucket: twice the cap at once, then RATE_LIMIT_IP_REFILL per second", () => {
    const addresses = new AddressLimits(settings(), 100, 0);
    for (let i = 0; i < 512; i++) expect(addresses.admit("a", 0)).toBeNull();
    expect(addresses.admit("a", 0)).toEqual({ error: expect.any(String), retryAfterMs: 100 });
    expect(addresses.admit("a", 100)).toBeNull();
    // The message bucket is untouched.
    expect(addresses.charge("a", 100, 100)).toBe(0);
  });

  it("the default cap of 256 connections can all open at once", () => {
    const addresses = new AddressLimits(settings(), 100, 0);
    for (let i = 0; i < 256; i++) {
      expect(addresses.admit("nat", 0)).toBeNull();
      expect(addresses.open("nat", 0)).toBe(true);
    }
    expect(addresses.admit("nat", 0)?.error).toMatch(/at most 256/);
  });

  it("forgets idle addresses whose bucket is full again, and never one with a connection", () => {
    const addresses = new AddressLimits(settings(), 1000, 0);
    for (let i = 0; i < 500; i++) addresses.charge(`10.0.${i >> 8}.${i & 255}`, 1, 0);
    addresses.open("busy", 0);
    expect(addresses.size).toBe(501);
    // 1 unit back at 10 per second: full after 100 ms; the sweep runs every 10 s.
    addresses.charge("late", 1, 20_000);
    expect(addresses.size).toBe(2);
    expect(addresses.connections("busy")).toBe(1);
  });

  it("stays within maxEntries however many addresses come (least recently used idle ones go)", () => {
    const addresses = new AddressLimits(settings(), 1000, 0);
    for (let i = 0; i < 50_000; i++) addresses.charge(`a${i}`, 1, 0);
    expect(addresses.size).toBeLessThanOrEqual(1000);
    addresses.open("keep", 0);
    for (let i = 0; i < 5000; i++) addresses.charge(`b${i}`, 1, 0);
    expect(addresses.connections("keep")).toBe(1);
    expect(addresses.size).toBeLessThanOrEqual(1001);
  });
});

describe("client address", () => {
  const loopback = parseTrustProxy("loopback");

  it("is the TCP peer without TRUST_PROXY, whatever X-Forwarded-For says", () => {
    expect(clientKey("127.0.0.1", "6.6.6.6", TRUST_NONE)).toBe("127.0.0.1");
    expect(clientKey("::ffff:10.1.2.3", undefined, TRUST_NONE)).toBe("10.1.2.3");
  });

  it("is the right-most untrusted X-Forwarded-For entry behind a trusted proxy", () => {
    expect(clientKey("127.0.0.1", "6.6.6.6, 203.0.113.7", loopback)).toBe("203.0.113.7");
    const trust = parseTrustProxy("loopback, 10.0.0.0/8");
    // A client-written entry on the left cannot choose the address.
    expect(clientKey("127.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.2", trust)).toBe("203.0.113.7");
    // All hops trusted: the left-most.
    expect(clientKey("127.0.0.1", "10.0.0.5, 10.0.0.2", trust)).toBe("10.0.0.5");
    // An untrusted peer's header is ignored.
    expect(clientKey("192.0.2.1", "203.0.113.7", trust)).toBe("192.0.2.1");
  });

  it("reads ports, brackets and IPv4-mapped forms; a malformed hop stops the walk at the proxy", () => {
    expect(clientKey("127.0.0.1", "203.0.113.7:5555", loopback)).toBe("203.0.113.7");
    expect(clientKey("::1", "[2001:db8::1]:443", loopback)).toBe("2001:db8::/64");
    expect(clientKey("127.0.0.1", "::ffff:198.51.100.2", loopback)).toBe("198.51.100.2");
    expect(clientKey("127.0.0.1", "203.0.113.7, not-an-ip", loopback)).toBe("127.0.0.1");
    expect(clientKey("127.0.0.1", "0x7f.1", loopback)).toBe("127.0.0.1");
  });

  it("groups IPv6 by /64 and keeps IPv4 whole", () => {
    expect(clientKey("2001:db8:1:2:aaaa::1", undefined, TRUST_NONE)).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:db8:1:2:bbbb::9", undefined, TRUST_NONE)).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:db8:1:3::1", undefined, TRUST_NONE)).toBe("2001:db8:1:3::/64");
    expect(addressKey(clientAddress("fe80::1%eth0", undefined, TRUST_NONE))).toBe("fe80::/64");
    expect(clientKey(undefined, undefined, TRUST_NONE)).toBe("unknown");
    expect(clientKey("garbage", undefined, TRUST_NONE)).toBe("unknown");
  });

  it("the IPv4 shortcut gives the same key as ipaddr.js for every peer form", () => {
    const peers = [
      "127.0.0.1",
      "0.0.0.0",
      "255.255.255.255",
      "10.0.0.255",
      "256.0.0.1",
      "01.2.3.4",
      "1.2.3.04",
      "1.2.3",
      "1.2.3.4.5",
      "1..2.3",
      ".1.2.3",
      "1.2.3.",
      "1.2.3.4:80",
      " 1.2.3.4",
      "1.2.3.4 ",
      "0x7f.0.0.1",
      "1e2.0.0.1",
      "::ffff:10.1.2.3",
      "::FFFF:10.1.2.3",
      "::ffff:010.1.2.3",
      "::ffff:a01:203",
      "::1",
      "",
      "9999999999.1.1.1",
    ];
    const loopback = parseTrustProxy("loopback");
    for (const peer of peers) {
      const slow = addressKey(clientAddress(peer, undefined, TRUST_NONE));
      expect(clientKey(peer, undefined, TRUST_NONE), peer).toBe(slow);
      expect(clientKey(peer, "203.0.113.9", TRUST_NONE), peer).toBe(slow);
      expect(clientKey(peer, "203.0.113.9", loopback), peer).toBe(
        addressKey(clientAddress(peer, "203.0.113.9", loopback)),
      );
      // The same form ipaddr.js's isValidFourPartDecimal takes.
      const v4 = parseStrict(peer.trim());
      expect(isDottedQuad(peer), peer).toBe(v4 !== null && v4.kind() === "ipv4" && v4.toString() === peer);
    }
  });

  it("TRUST_PROXY: addresses, CIDRs (IPv4-mapped ones too) and loopback; bad items are named", () => {
    const trust = parseTrustProxy("192.0.2.1, 2001:db8::/32, ::ffff:10.0.0.0/104");
    expect(clientKey("192.0.2.1", "203.0.113.9", trust)).toBe("203.0.113.9");
    expect(clientKey("2001:db8::5", "203.0.113.9", trust)).toBe("203.0.113.9");
    expect(clientKey("10.9.9.9", "203.0.113.9", trust)).toBe("203.0.113.9");
    expect(clientKey("127.0.0.1", "203.0.113.9", trust)).toBe("127.0.0.1");
    expect(() => parseTrustProxy("10.0.0.0/33")).toThrow(/10\.0\.0\.0\/33/);
    expect(() => parseTrustProxy("proxy.local")).toThrow(/proxy\.local/);
    expect(() => loadConfig({ TRUST_PROXY: "nope" })).toThrow(/TRUST_PROXY/);
    expect(loadConfig({ TRUST_PROXY: "loopback" }).trustProxy.loopback).toBe(true);
  });
});

describe("ALLOWED_HOSTS", () => {
  const local = allowedHostsFor({ allowedHosts: undefined, authSecret: undefined });

  it("unset and without auth: loopback names and IP literals only", () => {
    for (const host of [
      "localhost:8888",
      "app.localhost",
      "127.0.0.1:8888",
      "[::1]:8888",
      "192.168.1.20",
      "LOCALHOST.",
    ]) {
      expect(hostAllowed(host, local), host).toBe(true);
    }
    for (const host of ["evil.example:8888", "chat.example.com", "localhost.evil.com"]) {
      expect(hostAllowed(host, local), host).toBe(false);
    }
    expect(hostAllowed(undefined, local)).toBe(true);
  });

  it("unset with AUTH_SECRET: any host (a rebinding page gets no token)", () => {
    const authed = allowedHostsFor({ allowedHosts: undefined, authSecret: "0123456789abcdef" });
    expect(hostAllowed("chat.example.com", authed)).toBe(true);
  });

  it("names, .domain suffixes and *", () => {
    const hosts = parseAllowedHosts("chat.example.com, .corp.example");
    expect(hostAllowed("chat.example.com:443", hosts)).toBe(true);
    expect(hostAllowed("corp.example", hosts)).toBe(true);
    expect(hostAllowed("a.b.corp.example", hosts)).toBe(true);
    expect(hostAllowed("xcorp.example", hosts)).toBe(false);
    expect(hostAllowed("other.example.com", hosts)).toBe(false);
    expect(hostAllowed("127.0.0.1", hosts)).toBe(true);
    expect(hostAllowed("anything", parseAllowedHosts("*"))).toBe(true);
    expect(loadConfig({ ALLOWED_HOSTS: "chat.example.com" }).allowedHosts?.names).toEqual(["chat.example.com"]);
  });
});

describe("LogThrottle", () => {
  it("one line per interval; the next line carries the count of the dropped ones", () => {
    const t = new LogThrottle(1000);
    expect(t.pass(0)).toBe(0);
    expect(t.pass(1)).toBeNull();
    expect(t.pass(999)).toBeNull();
    expect(t.pass(1000)).toBe(2);
  });
});

describe("read costs by size", () => {
  it("textCost: one unit per 32 Ki characters, so 500 messages of 8 KB cost far more than 500 short lines", () => {
    const short = Array.from({ length: 500 }, () => ({ user: "ann", message: "hello there" }));
    const big = Array.from({ length: 500 }, () => ({ user: "ann", message: "\u{1F600}".repeat(2000) }));
    expect(textCost(short)).toBe(2);
    expect(textCost(big)).toBe(63);
  });

  it("spend leaves a debt the next request waits out, exactly; a handshake waits for it too", () => {
    const config = settings();
    const addresses = new AddressLimits(config, 100, 0);
    const limits = new ConnectionLimits(config, addresses, "k");
    expect(limits.charge("read", 10, 0)).toBe(0);
    limits.spend("read", 53, 0); // the read turned out to be 63 units: capped at the capacity
    const wait = limits.charge("read", 1, 0);
    expect(wait).toBeGreaterThan(0);
    expect(limits.charge("read", 1, wait)).toBe(0);
    const owing = new AddressLimits(config, 100, 0);
    owing.spend("a", 100, 0);
    owing.spend("a", 100, 0);
    expect(owing.admit("a", 0)).toEqual({ error: expect.any(String), retryAfterMs: 10_000 });
    expect(owing.admit("a", 10_000)).toBeNull();
  });

  it("invalid frames have their own budget", () => {
    const limits = new ConnectionLimits(settings(), null, "k");
    for (let i = 0; i < 1000; i++) expect(limits.charge("invalid", 1, 0)).toBe(0);
    expect(limits.charge("invalid", 1, 0)).toBe(10);
    expect(limits.charge("message", 1, 0)).toBe(0);
  });
});
