import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// `npm run dev -w @runcast/web` serves the dashboard with hot reload and proxies the API and
// the Socket.IO endpoint to a Runcast server (RUNCAST_DEV_TARGET, default 127.0.0.1:8080).
const target = process.env.RUNCAST_DEV_TARGET ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react()],
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
