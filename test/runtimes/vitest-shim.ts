/**
 * The slice of vitest's API that the contract suites use (describe, it,
 * beforeEach, afterEach, expect with toBe/toEqual/toMatchObject/...), for
 * running them under Deno, where vitest cannot run: deno is started with an
 * import map that points `vitest` here (test/runtimes/deno-imports.json).
 * The tests run once the module graph is loaded; the process exits 1 when
 * any failed and prints `N passed, N failed, N skipped`.
 */
import { isDeepStrictEqual } from "node:util";

type Ctx = { skip(reason?: string): never };
type Fn = (ctx: Ctx) => unknown;
interface Suite {
  name: string;
  before: Fn[];
  after: Fn[];
  items: (Suite | { name: string; fn: Fn })[];
  parent: Suite | null;
}

const root: Suite = { name: "", before: [], after: [], items: [], parent: null };
let current = root;
let scheduled = false;

class Skip extends Error {}

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  setTimeout(() => void runAll(), 0);
}

export function describe(name: string, body: () => void): void {
  const suite: Suite = { name, before: [], after: [], items: [], parent: current };
  current.items.push(suite);
  current = suite;
  try {
    body();
  } finally {
    current = suite.parent ?? root;
  }
  schedule();
}

export function it(name: string, fn: Fn): void {
  current.items.push({ name, fn });
  schedule();
}

export function beforeEach(fn: Fn): void {
  current.before.push(fn);
}

export function afterEach(fn: Fn): void {
  current.after.push(fn);
}

/** toEqual's rule: deep equality where an undefined property equals a missing one. */
function equal(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((v, i) => equal(v, b[i]));
  }
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.prototype || Object.getPrototypeOf(b) !== Object.prototype) {
    return isDeepStrictEqual(a, b);
  }
  const keys = (o: object) => Object.keys(o).filter((k) => (o as Record<string, unknown>)[k] !== undefined);
  const ka = keys(a);
  const kb = keys(b);
  return ka.length === kb.length && ka.every((k) => equal((a as never)[k], (b as never)[k]));
}

function matches(actual: unknown, expected: unknown): boolean {
  if (Array.isArray(expected)) {
    return (
      Array.isArray(actual) && actual.length === expected.length && expected.every((v, i) => matches(actual[i], v))
    );
  }
  if (typeof expected !== "object" || expected === null) return Object.is(actual, expected);
  if (typeof actual !== "object" || actual === null) return false;
  return Object.entries(expected).every(([k, v]) => matches((actual as Record<string, unknown>)[k], v));
}

const show = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : x))?.slice(0, 500);

export function expect(actual: unknown) {
  const check = (ok: boolean, what: string, expected?: unknown) => {
    if (!ok) throw new Error(`expected ${show(actual)} ${what}${expected === undefined ? "" : ` ${show(expected)}`}`);
  };
  return {
    toBe: (e: unknown) => check(Object.is(actual, e), "to be", e),
    toEqual: (e: unknown) => check(equal(actual, e), "to equal", e),
    toMatchObject: (e: unknown) => check(matches(actual, e), "to match", e),
    toBeNull: () => check(actual === null, "to be null"),
    toBeGreaterThanOrEqual: (e: number) => check((actual as number) >= e, ">=", e),
    toBeLessThanOrEqual: (e: number) => check((actual as number) <= e, "<=", e),
    toHaveLength: (e: number) => check((actual as { length: number }).length === e, "to have length", e),
  };
}

async function runSuite(suite: Suite, chain: Suite[], path: string[], counts: Record<string, number>): Promise<void> {
  const suites = [...chain, suite];
  for (const item of suite.items) {
    if ("items" in item) {
      await runSuite(item, suites, [...path, item.name], counts);
      continue;
    }
    const name = [...path, item.name].join(" > ");
    const ctx: Ctx = {
      skip: (reason) => {
        throw new Skip(reason);
      },
    };
    let outcome = "passed";
    let failure: unknown = null;
    try {
      for (const s of suites) for (const f of s.before) await f(ctx);
      await item.fn(ctx);
    } catch (error) {
      if (error instanceof Skip) outcome = "skipped";
      else [outcome, failure] = ["failed", error];
    }
    for (const s of [...suites].reverse()) {
      for (const f of s.after) {
        try {
          await f(ctx);
        } catch (error) {
          if (outcome !== "failed") [outcome, failure] = ["failed", error];
        }
      }
    }
    counts[outcome] = (counts[outcome] ?? 0) + 1;
    console.log(`${outcome === "passed" ? "ok  " : outcome === "skipped" ? "skip" : "FAIL"} ${name}`);
    if (failure) console.log(`     ${failure instanceof Error ? failure.stack : String(failure)}`);
  }
}

async function runAll(): Promise<void> {
  const counts: Record<string, number> = {};
  await runSuite(root, [], [], counts);
  const [p, f, s] = [counts.passed ?? 0, counts.failed ?? 0, counts.skipped ?? 0];
  console.log(`${p} passed, ${f} failed, ${s} skipped`);
  process.exit(f > 0 || p === 0 ? 1 : 0);
}
