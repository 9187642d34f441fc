/**
 * One cleanup list, so no test leaks a socket, server or process. What a test
 * registers is closed when that test ends; what a `beforeAll` registers is
 * closed when the file ends. Cleanups run newest first (clients before the
 * server they talk to), and one failing cleanup does not skip the others.
 */
import { afterAll, afterEach, beforeEach } from "vitest";

type Cleanup = () => unknown;

const perTest: Cleanup[] = [];
const perFile: Cleanup[] = [];
let inTest = false;

async function runAll(list: Cleanup[]): Promise<void> {
  const errors: unknown[] = [];
  while (list.length > 0) {
    const fn = list.pop()!;
    try {
      await fn();
    } catch (error) {
      errors.push(error);
    }
  }
  if (errors.length > 0) throw errors[0];
}

// A beforeAll runs before any beforeEach, so what it registers lands in the
// per-file list; everything from beforeEach on belongs to the test.
beforeEach(() => {
  inTest = true;
});
afterEach(async () => {
  inTest = false;
  await runAll(perTest);
});
afterAll(async () => {
  await runAll(perTest);
  await runAll(perFile);
});

/** Registers something to close: at the end of the current test, or of the file outside tests. */
export function track(fn: Cleanup): void {
  (inTest ? perTest : perFile).push(fn);
}

/** Registers something to close at the end of the file, even when registered inside a test. */
export function trackForFile(fn: Cleanup): void {
  perFile.push(fn);
}
