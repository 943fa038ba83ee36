/**
 * The entry point of a data-plane Worker (see `data_plane.ts`): embedded in the compiled binary
 * with `--include`, and loaded from the source tree under `deno run` (which needs read access
 * to `src/`).
 *
 * @module
 */
import { type PlaneEndpoint, serveDataPlane } from "./data_plane.ts";

serveDataPlane(self as unknown as PlaneEndpoint);
