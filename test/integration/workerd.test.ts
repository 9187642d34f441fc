/**
 * The black-box suite against the Cloudflare Workers build under `wrangler
 * dev` (workerd on 127.0.0.1). What only Durable Objects show (restart,
 * hibernation) is in workerd-objects.test.ts, which runs beside this file.
 */
import { workerdTarget } from "../helpers/workerd.ts";
import { serverSuite } from "./server.suite.ts";

// What the platform does not let a Worker do (src/runtime/worker.ts says why):
serverSuite(workerdTarget, {
  metrics: false, // /metrics is not required on Workers; it answers 404 JSON
  signals: false, // wrangler dev stops workerd without a drain; the platform owns shutdown
  heartbeat: false, // a Worker cannot send ping frames; the platform keeps connections alive
  slowConsumer: false, // Workers' WebSocket has no bufferedAmount to measure
  utf8Close: false, // workerd turns invalid UTF-8 into U+FFFD before the object sees the frame
  // A close from the object (ban 4003, expiry 4001) to a hibernatable socket that never sent a frame
  // completes under wrangler dev only at the client's close timeout (ws: 30 s); the DO side sees the close at once.
  closeSilent: false,
});
