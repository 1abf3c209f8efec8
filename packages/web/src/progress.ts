import { ProgressService } from '@runcast/client';
import { getToken } from './api.js';
import { API_URL, SOCKET_PATH, WS_URL } from './config.js';

/** The dashboard's one ProgressService: every page subscribes through it. */
export const progressService = new ProgressService({
  baseUrl: API_URL,
  wsUrl: WS_URL,
  socketPath: SOCKET_PATH,
  token: () => getToken(),
  upgradeProbeIntervalMs: 10_000,
});
