import { afterEach, describe, expect, it } from 'vitest';
import { ProgressService } from '../../packages/client/src/index.js';
import type { ConnectionMethod } from '../../packages/client/src/types.js';
import { Collector, eventually } from '../support/collector.js';
import { serverWorld } from '../support/server-world.js';

const fixture = serverWorld();

describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])(
  'ProgressService over %s alone',
  (method) => {
    let service: ProgressService;
    afterEach(() => service.close());

    it('delivers the snapshot, every log once in order, and the terminal state', async () => {
      const created = await fixture.world.operator.post('/runs', {
        project_id: fixture.world.projectId,
        kind: 'external',
      });
      const runId: string = created.body.run_id;
      service = new ProgressService({
        baseUrl: fixture.server.url,
        token: fixture.world.viewer.token,
        transports: [method],
      });
      const seen = new Collector();
      service.subscribeToRun(runId, (event) => seen.push(event));
      await seen.until((events) => events.length > 0);
      expect(seen.events[0]?.type).toBe('snapshot');
      // The opening snapshot may come over REST before the method has connected.
      await eventually(() => service.getConnectionMethod() === method);
      await fixture.world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
      for (let i = 0; i < 20; i++)
        await fixture.world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
      await fixture.world.worker.patch(`/runs/${runId}/progress`, {
        status: 'COMPLETED',
        progress: { percentage: 100 },
      });
      await seen.until((events) =>
        events.some((e) => e.type !== 'log' && 'snapshot' in e && e.snapshot.status === 'COMPLETED'),
      );
      const logs = seen.events
        .filter((e) => e.type === 'log')
        .map((e) => (e.type === 'log' ? e.log.message : ''));
      expect(logs).toEqual(Array.from({ length: 20 }, (_, i) => `line ${i}`));
      const seqs = seen.events.filter((e) => e.type !== 'error').map((e) => ('seq' in e ? e.seq : -1));
      expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
      expect(new Set(seqs).size).toBe(seqs.length);
    });
  },
);
