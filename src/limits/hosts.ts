/**
 * The `Host` allow-list against DNS rebinding (`ALLOWED_HOSTS`, as Vite's
 * `server.allowedHosts`).
 *
 * A rebinding page is served from the attacker's name, then that name is
 * pointed at the chat's address: the page's requests carry `Host` and
 * `Origin` of the attacker's name, so the origin check (same host) passes.
 * Refusing unknown host names stops it. IP literals, `localhost` and
 * `*.localhost` can never be such a name, so they are always allowed.
 */
import { isDottedQuad, parseStrict } from "./address.ts";

/** The parsed `ALLOWED_HOSTS`. */
export interface AllowedHosts {
  /** `*`: every host (the check is off). */
  any: boolean;
  /** Exact names, lower case. */
  names: string[];
  /** `.example.com`: the name and every name under it. */
  suffixes: string[];
}

/** Parses `ALLOWED_HOSTS`: comma-separated names, `.example.com` for a domain and its subdomains, or `*`. */
export function parseAllowedHosts(value: string): AllowedHosts {
  const hosts: AllowedHosts = { any: false, names: [], suffixes: [] };
  for (const raw of value.split(",")) {
    const item = raw.trim().toLowerCase();
    if (!item) continue;
    if (item === "*" || item === "true") hosts.any = true;
    else if (item.startsWith(".")) hosts.suffixes.push(item);
    else hosts.names.push(item);
  }
  return hosts;
}

/** The host name of a `Host` header: no port, no IPv6 brackets, lower case, no trailing dot. */
export function hostName(header: string): string {
  let h = header.trim().toLowerCase();
  if (h.startsWith("[")) {
    const end = h.indexOf("]");
    return end < 0 ? h : h.slice(1, end);
  }
  const colon = h.indexOf(":");
  if (colon >= 0) h = h.slice(0, colon);
  return h.endsWith(".") ? h.slice(0, -1) : h;
}

/**
 * Whether a request with this `Host` may proceed. No `Host` at all (HTTP/1.0
 * tools) is not a browser, which always sends one: allowed.
 */
export function hostAllowed(header: string | undefined, allowed: AllowedHosts): boolean {
  if (allowed.any || header === undefined) return true;
  const name = hostName(header);
  if (name === "localhost" || name.endsWith(".localhost") || isDottedQuad(name) || parseStrict(name) !== null)
    return true;
  if (allowed.names.includes(name)) return true;
  for (const suffix of allowed.suffixes) if (name === suffix.slice(1) || name.endsWith(suffix)) return true;
  return false;
}

/** Loopback names and IP literals only: what {@link hostAllowed} always lets through. */
const LOCAL_ONLY: AllowedHosts = { any: false, names: [], suffixes: [] };
const ANY: AllowedHosts = { any: true, names: [], suffixes: [] };

/**
 * The allow-list in force. ALLOWED_HOSTS when set; unset, it depends on
 * AUTH_SECRET: with auth a rebinding page gains nothing (the browser sends
 * it no token: cookies belong to the real host), so every host is allowed;
 * without auth only `localhost`, `*.localhost` and IP literals are, because
 * then the rebinding page could read and post as anyone on the victim's
 * network. Serving an unauthenticated chat under a name needs ALLOWED_HOSTS.
 */
export function allowedHostsFor(config: {
  allowedHosts: AllowedHosts | undefined;
  authSecret: string | undefined;
}): AllowedHosts {
  if (config.allowedHosts) return config.allowedHosts;
  return config.authSecret === undefined ? LOCAL_ONLY : ANY;
}
