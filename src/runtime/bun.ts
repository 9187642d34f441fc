/** Bun entry: not yet (issue 3). */
export async function main(): Promise<void> {
  throw new Error("Bun support lands with issue 3");
}
