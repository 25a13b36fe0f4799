// Builds the SDK: dist/index.js (ESM, socket.io-client left as an import) beside the
// declarations that tsc writes. `--size` prints the minified, gzipped size without
// socket.io-client (the budget in docs/performance.md).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const common = {
  entryPoints: [`${here}src/index.ts`],
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  external: ["socket.io-client"],
  logLevel: "warning",
};

await build({ ...common, outfile: `${here}dist/index.js`, sourcemap: true });

if (process.argv.includes("--size")) {
  const result = await build({ ...common, minify: true, write: false });
  const bytes = result.outputFiles[0].contents;
  const gzipped = gzipSync(bytes, { level: 9 }).length;
  console.log(JSON.stringify({ minified: bytes.length, gzipped }));
}

// The web console's copy (hub/server/web/vendor/, not in git): the SDK with
// socket.io-client inside, minified, for a browser that loads ES modules.
await build({
  ...common,
  platform: "browser",
  external: [],
  minify: true,
  outfile: `${here}../../hub/server/web/vendor/hub-client.js`,
});
