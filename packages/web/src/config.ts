/**
 * Where the API and the WebSocket endpoint live. Same origin by default, under the path the
 * server is mounted at; split deployments set them at build time as VITE_API_URL / VITE_WS_URL,
 * or under the names REACT_APP_API_URL / REACT_APP_WS_URL that existing deployments of this kind
 * of dashboard use.
 */
const env = import.meta.env as Record<string, string | undefined>;

/**
 * The path the server is mounted at (RUNCAST_BASE_PATH, e.g. `/runcast`), or '' at the root:
 * the server writes it into index.html as `<base href>`; the dev server writes none.
 */
export const BASE_PATH = (document.querySelector('base')?.getAttribute('href') ?? '').replace(/\/$/, '');

export const API_URL = (env.VITE_API_URL ?? env.REACT_APP_API_URL ?? BASE_PATH).replace(/\/$/, '');

// socket.io-client reads a path in its URL as a namespace: the origin and the path go apart.
const socketEndpoint = new URL(
  env.VITE_WS_URL ?? env.REACT_APP_WS_URL ?? (API_URL || '/'),
  window.location.origin,
);
export const WS_URL = socketEndpoint.origin;
export const SOCKET_PATH = `${socketEndpoint.pathname.replace(/\/$/, '')}/socket.io`;

/** The API's absolute URL, as a worker outside the browser must be given it. */
export const PUBLIC_API_URL = new URL(API_URL || '/', window.location.origin).href.replace(/\/$/, '');
