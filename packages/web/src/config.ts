/**
 * Where the API and the WebSocket endpoint live. Same origin by default; split deployments set
 * them at build time as VITE_API_URL / VITE_WS_URL, or under the names REACT_APP_API_URL /
 * REACT_APP_WS_URL that existing deployments of this kind of dashboard use.
 */
const env = import.meta.env as Record<string, string | undefined>;

export const API_URL = (env.VITE_API_URL ?? env.REACT_APP_API_URL ?? '').replace(/\/$/, '');
export const WS_URL = (env.VITE_WS_URL ?? env.REACT_APP_WS_URL ?? API_URL).replace(/\/$/, '');
