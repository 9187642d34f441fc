/**
 * Who is the client: the TCP peer, or behind trusted proxies the right-most
 * untrusted address of `X-Forwarded-For`; and the key its limits are kept
 * under (an IPv4 address, or an IPv6 /64). Parsing and CIDR matching are
 * ipaddr.js's, which runs on every runtime, not hand-written.
 */
import ipaddr from "ipaddr.js";

type Ip = ipaddr.IPv4 | ipaddr.IPv6;

/** Which peers may tell us the client's address (`TRUST_PROXY`). */
export interface TrustProxy {
  /** Every loopback address (127.0.0.0/8, ::1). */
  loopback: boolean;
  /** Addresses and CIDR ranges. */
  ranges: [Ip, number][];
}

/** Nobody is trusted: the address is the TCP peer, whatever the headers say. */
export const TRUST_NONE: TrustProxy = { loopback: false, ranges: [] };

/**
 * Parses `TRUST_PROXY`: comma-separated addresses, CIDRs (`10.0.0.0/8`,
 * `fd00::/8`) and the word `loopback`. Throws an Error naming the bad item.
 */
export function parseTrustProxy(value: string): TrustProxy {
  const trust: TrustProxy = { loopback: false, ranges: [] };
  for (const raw of value.split(",")) {
    const item = raw.trim();
    if (!item) continue;
    if (item.toLowerCase() === "loopback") {
      trust.loopback = true;
    } else if (item.includes("/")) {
      if (!ipaddr.isValidCIDR(item)) throw new Error(`"${item}" is not a CIDR like 10.0.0.0/8`);
      const [ip, bits] = ipaddr.parseCIDR(item);
      trust.ranges.push(normalizeRange(ip, bits));
    } else {
      const ip = parseStrict(item);
      if (!ip) throw new Error(`"${item}" is not an IP address, a CIDR or "loopback"`);
      trust.ranges.push([ip, ip.kind() === "ipv4" ? 32 : 128]);
    }
  }
  return trust;
}

/** `::ffff:10.0.0.0/104` and `10.0.0.0/8` mean the same peers: keep the IPv4 form. */
function normalizeRange(ip: Ip, bits: number): [Ip, number] {
  if (ip.kind() === "ipv6" && (ip as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
    return [(ip as ipaddr.IPv6).toIPv4Address(), bits - 96];
  }
  return [ip, bits];
}

/**
 * An address in its usual text forms only (dotted quad, IPv6 with an
 * optional zone, `[v6]`, either with a `:port`), IPv4-mapped IPv6 turned into
 * IPv4. ipaddr.js alone would also take `0x7f.1`-style IPv4, which no peer
 * or proxy writes. Null when it is none of these.
 */
export function parseStrict(text: string): Ip | null {
  let s = text.trim();
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0) return null;
    s = s.slice(1, end);
  } else if (/^[\d.]+:\d+$/.test(s)) {
    s = s.slice(0, s.indexOf(":")); // IPv4 with a port
  }
  if (ipaddr.IPv4.isValidFourPartDecimal(s)) return ipaddr.IPv4.parse(s);
  if (!s.includes(":") || !ipaddr.IPv6.isValid(s)) return null;
  const v6 = ipaddr.IPv6.parse(s);
  return v6.isIPv4MappedAddress() ? v6.toIPv4Address() : v6;
}

function trusted(ip: Ip, trust: TrustProxy): boolean {
  if (trust.loopback && ip.range() === "loopback") return true;
  for (const range of trust.ranges) if (range[0].kind() === ip.kind() && ip.match(range)) return true;
  return false;
}

/**
 * The client's address: the TCP `peer`, unless the peer is a trusted proxy;
 * then `X-Forwarded-For` is read from the right (each proxy appends the
 * address it was reached from) and the first address that is not a trusted
 * proxy is the client. Entries to the left of it were written by the client
 * and are ignored, so a client cannot pick its own address. When every entry
 * is trusted, the left-most is the client; a malformed entry stops the walk
 * at the hop that wrote it. Null when the peer is unknown or unparseable.
 */
export function clientAddress(
  peer: string | null | undefined,
  forwardedFor: string | null | undefined,
  trust: TrustProxy,
): Ip | null {
  let ip = peer ? parseStrict(peer) : null;
  if (!ip || !forwardedFor || !trusted(ip, trust)) return ip;
  const hops = forwardedFor.split(",");
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = parseStrict(hops[i]!);
    if (!hop) return ip;
    ip = hop;
    if (!trusted(hop, trust)) return hop;
  }
  return ip;
}

/**
 * The key an address's limits are kept under. IPv6 is grouped by /64: one
 * home or host gets a whole /64 (RFC 6177), so per-address limits keyed by
 * the full address would give it 2^64 fresh budgets. `"unknown"` groups the
 * connections whose peer the runtime could not tell.
 */
export function addressKey(ip: Ip | null): string {
  if (!ip) return "unknown";
  if (ip.kind() === "ipv4") return ip.toString();
  const p = (ip as ipaddr.IPv6).parts;
  return `${new ipaddr.IPv6([p[0]!, p[1]!, p[2]!, p[3]!, 0, 0, 0, 0]).toRFC5952String()}/64`;
}

/**
 * {@link clientAddress} and {@link addressKey} in one step. An IPv4 peer
 * whose forwarded header is not read is its own key, without a parse:
 * every handshake asks (ipaddr.js was a tenth of the app's share of a
 * handshake on Node, docs/benchmarks.md).
 */
export function clientKey(
  peer: string | null | undefined,
  forwardedFor: string | null | undefined,
  trust: TrustProxy,
): string {
  if (peer && (!forwardedFor || (!trust.loopback && trust.ranges.length === 0))) {
    if (isDottedQuad(peer)) return peer;
    // IPv4-mapped IPv6, as a dual-stack socket reports IPv4 peers.
    if (peer.startsWith("::ffff:") && isDottedQuad(peer.slice(7))) return peer.slice(7);
  }
  return addressKey(clientAddress(peer, forwardedFor, trust));
}

/**
 * True for IPv4 in the dotted-quad form {@link parseStrict} takes (four
 * decimals of 0-255 without leading zeros), which is also the form
 * {@link addressKey} writes: ipaddr.js's `isValidFourPartDecimal`,
 * without a parse or a regular expression.
 */
export function isDottedQuad(text: string): boolean {
  let dots = 0;
  let digits = 0;
  let value = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2e) {
      if (digits === 0 || ++dots > 3) return false;
      digits = 0;
      value = 0;
      continue;
    }
    if (c < 0x30 || c > 0x39 || (digits > 0 && value === 0)) return false;
    value = value * 10 + (c - 0x30);
    if (value > 255) return false;
    digits++;
  }
  return dots === 3 && digits > 0;
}
