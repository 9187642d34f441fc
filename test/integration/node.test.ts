import { nodeTarget } from "../helpers/server.ts";
import { serverSuite } from "./server.suite.ts";

serverSuite(nodeTarget);
