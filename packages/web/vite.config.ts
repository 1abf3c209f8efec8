import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import react from '@vitejs/plugin-react';
import { defineConfig, type Plugin } from 'vite';

// `npm run dev -w @runcast/web` serves the dashboard with hot reload and proxies the API and
// the Socket.IO endpoint to a Runcast server (RUNCAST_DEV_TARGET, default 127.0.0.1:8080).
const target = process.env.RUNCAST_DEV_TARGET ?? 'http://127.0.0.1:8080';

/** Files worth compressing: text, at least 1 KB. */
const COMPRESSIBLE = /\.(?:js|mjs|css|html|svg|json|map|txt)$/;
const MIN_BYTES = 1024;

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    return entry.isDirectory() ? filesUnder(path) : [path];
  });
}

/**
 * Writes `<file>.br` (brotli at its best quality) and `<file>.gz` (gzip level 9) beside each
 * compressible file of the build: compressed once here, the server only picks the one a client
 * accepts (`@fastify/static` `preCompressed`).
 */
function precompress(): Plugin {
  return {
    name: 'runcast-precompress',
    apply: 'build',
    writeBundle(options) {
      const outDir = options.dir ?? 'dist';
      for (const file of filesUnder(outDir)) {
        if (!COMPRESSIBLE.test(file) || statSync(file).size < MIN_BYTES) continue;
        const body = readFileSync(file);
        const params = {
          [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
          [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
          [constants.BROTLI_PARAM_SIZE_HINT]: body.length,
        };
        writeFileSync(`${file}.br`, brotliCompressSync(body, { params }));
        writeFileSync(`${file}.gz`, gzipSync(body, { level: 9 }));
      }
    },
  };
}

export default defineConfig({
  plugins: [react(), precompress()],
  resolve: { conditions: ['@runcast/source'] },
  // Split deployments set the API and WebSocket origins at build time, under either name.
  envPrefix: ['VITE_', 'REACT_APP_'],
  // Relative asset URLs: the server mounts the dashboard at RUNCAST_BASE_PATH and writes that
  // path into index.html as <base href>.
  base: './',
  build: { outDir: 'dist', sourcemap: true },
  server: {
    proxy: {
      '/api': { target, changeOrigin: false },
      '/socket.io': { target, ws: true },
    },
  },
});
