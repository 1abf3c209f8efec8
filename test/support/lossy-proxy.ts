import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { Socket } from 'node:net';

/**
 * What happens to one request: passed both ways; lost on its way to the server (never applied);
 * or applied by the server with its answer lost on the way back — the case that doubles a
 * non-idempotent write when the client retries.
 */
export type Loss = 'none' | 'request' | 'response';

/** One request that reached the proxy. */
export interface ProxiedRequest {
  /** 1-based, in order of arrival. */
  index: number;
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  loss: Loss;
  /** The server's status, when the request reached it and it answered. */
  upstreamStatus?: number;
}

/** An HTTP proxy on loopback that loses the requests or answers the test picks. */
export interface LossyProxy {
  url: string;
  readonly requests: ProxiedRequest[];
  /** Picks the loss of each request as it arrives; `none` unless set. */
  decide: (request: Omit<ProxiedRequest, 'loss'>) => Loss;
  close(): Promise<void>;
}

function readBody(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

/** Starts a proxy to `target` (http://127.0.0.1:port). A lost message closes the client's connection. */
export async function startLossyProxy(target: string): Promise<LossyProxy> {
  const upstream = new URL(target);
  const sockets = new Set<Socket>();
  const requests: ProxiedRequest[] = [];
  const proxy: LossyProxy = {
    url: '',
    requests,
    decide: () => 'none',
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer((req, res) => {
    void (async () => {
      const body = await readBody(req);
      const seen = {
        index: requests.length + 1,
        method: req.method ?? 'GET',
        path: req.url ?? '/',
        headers: req.headers,
        body: body.toString('utf8'),
      };
      const entry: ProxiedRequest = { ...seen, loss: proxy.decide(seen) };
      requests.push(entry);
      if (entry.loss === 'request') {
        req.socket.destroy();
        return;
      }
      const answer = await new Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }>(
        (resolve, reject) => {
          const forwarded = httpRequest(
            {
              host: upstream.hostname,
              port: upstream.port,
              method: req.method,
              path: req.url,
              headers: { ...req.headers, connection: 'close' },
            },
            (upstreamRes) => {
              readBody(upstreamRes).then(
                (data) =>
                  resolve({
                    status: upstreamRes.statusCode ?? 502,
                    headers: upstreamRes.headers,
                    body: data,
                  }),
                reject,
              );
            },
          );
          forwarded.on('error', reject);
          forwarded.end(body);
        },
      );
      entry.upstreamStatus = answer.status;
      // The server has answered, so whatever it was asked is committed: losing the answer now is
      // the "applied, but the client cannot know" case.
      if (entry.loss === 'response') {
        req.socket.destroy();
        return;
      }
      const { connection: _connection, 'transfer-encoding': _encoding, ...headers } = answer.headers;
      res.writeHead(answer.status, { ...headers, 'content-length': String(answer.body.length) });
      res.end(answer.body);
    })().catch(() => {
      res.destroy();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  proxy.url = `http://127.0.0.1:${address.port}`;
  return proxy;
}
