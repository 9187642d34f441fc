/**
 * Starts the chat on whichever runtime runs this file:
 * `npm start` (Node), `bun run src/index.ts`, `deno run -A src/index.ts`.
 */
declare const Bun: unknown;
declare const Deno: unknown;

const entry =
  typeof Bun !== "undefined"
    ? await import("./runtime/bun.ts")
    : typeof Deno !== "undefined"
      ? await import("./runtime/deno.ts")
      : await import("./runtime/node.ts");

await entry.main();

export {};
