// Bundles a browser test page with real React from this directory's node_modules:
//   node tests/browser/build.mjs ENTRY OUTFILE
// React is the development build (its warnings reach the console, which the
// tests read). Modules under gateway/static/ get React through react-probe.js,
// which counts state updates after unmount.
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const [entry, outfile] = process.argv.slice(2);

const probe = {
  name: "react-probe",
  setup(b) {
    b.onResolve({ filter: /^react$/ }, (args) =>
      args.importer.includes("/gateway/static/") ? { path: join(here, "react-probe.js") } : undefined);
  },
};

await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  format: "esm",
  nodePaths: [join(here, "node_modules")],
  define: { "process.env.NODE_ENV": '"development"' },
  plugins: [probe],
  logLevel: "warning",
});
