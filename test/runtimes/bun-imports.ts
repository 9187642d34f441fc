/**
 * Preloaded by `bun run --preload` for test/runtimes/sqlite-store.run.ts:
 * points `vitest` at ./vitest-shim.ts, as deno-imports.json does for Deno.
 * (bun test maps vitest to bun:test, but treats a test's `ctx` parameter as
 * a done callback, so the contract's `async (ctx) =>` cases would time out.)
 */
declare const Bun: {
  plugin(plugin: {
    name: string;
    setup(build: { onLoad(options: { filter: RegExp }, cb: () => { contents: string; loader: "js" }): void }): void;
  }): void;
};

const shim = new URL("./vitest-shim.ts", import.meta.url).pathname;

Bun.plugin({
  name: "vitest-shim",
  setup(build) {
    // Runtime plugins cannot re-resolve a bare specifier, so vitest's entry
    // module itself is replaced by a re-export of the shim.
    build.onLoad({ filter: /node_modules\/vitest\/dist\/index\.js$/ }, () => ({
      contents: `export * from ${JSON.stringify(shim)};`,
      loader: "js",
    }));
  },
});
