import type { Config } from "../config.ts";
import type { Logger } from "../observability/logger.ts";
import type { HistoryStore } from "../store/store.ts";
import type { Hub } from "./hub.ts";

/** Placeholder until RedisHub lands (issue 5): HUB=redis stops start-up with a clear message. */
export async function createRedisParts(
  _config: Config,
  _logger: Logger,
  _local: HistoryStore | null,
): Promise<{ hub: Hub; store: HistoryStore }> {
  throw new Error("HUB=redis is not available in this build yet");
}
