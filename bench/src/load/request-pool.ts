import { RawHttpConnection as Connection, type RawHttpConnection, type RawResponse } from '../raw-http.js';

/** A request waiting for a free connection, with the time it was due (for latency). */
interface Queued {
  text: string;
  dueMs: number;
  resolve(answer: { response: RawResponse; dueMs: number }): void;
  reject(err: Error): void;
}

/**
 * A fixed set of keep-alive connections that take queued requests in order, one in flight each.
 * Open-loop producers queue at their schedule; the queue's length shows a server falling behind.
 */
export class RequestPool {
  private readonly idle: RawHttpConnection[] = [];
  private readonly all = new Set<RawHttpConnection>();
  private readonly queue: Queued[] = [];
  private head = 0;
  maxQueued = 0;

  private constructor(
    private readonly host: string,
    private readonly port: number,
    connections: RawHttpConnection[],
  ) {
    this.idle.push(...connections);
    for (const connection of connections) this.all.add(connection);
  }

  static async open(host: string, port: number, size: number): Promise<RequestPool> {
    const connections = await Promise.all(Array.from({ length: size }, () => Connection.connect(host, port)));
    return new RequestPool(host, port, connections);
  }

  get queued(): number {
    return this.queue.length - this.head;
  }

  send(text: string, dueMs: number): Promise<{ response: RawResponse; dueMs: number }> {
    return new Promise((resolve, reject) => {
      this.queue.push({ text, dueMs, resolve, reject });
      this.maxQueued = Math.max(this.maxQueued, this.queued);
      this.dispatch();
    });
  }

  close(): void {
    for (const connection of this.all) connection.close();
  }

  private dispatch(): void {
    while (this.idle.length > 0 && this.head < this.queue.length) {
      const item = this.queue[this.head++]!;
      if (this.head > 4096 && this.head * 2 > this.queue.length) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      const connection = this.idle.pop()!;
      this.run(connection, item);
    }
  }

  private run(connection: RawHttpConnection, item: Queued): void {
    connection.send(item.text).then(
      (response) => {
        this.idle.push(connection);
        item.resolve({ response, dueMs: item.dueMs });
        this.dispatch();
      },
      (err: Error) => {
        this.all.delete(connection);
        item.reject(err);
        // A broken connection is replaced so that the pool keeps its size.
        Connection.connect(this.host, this.port).then(
          (fresh) => {
            this.all.add(fresh);
            this.idle.push(fresh);
            this.dispatch();
          },
          () => {},
        );
      },
    );
  }
}
