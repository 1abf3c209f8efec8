import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { REPO_ROOT } from './paths.js';

/** One function's share of a CPU profile (self time: the samples taken inside it). */
export interface Frame {
  frame: string;
  selfMs: number;
  percent: number;
}

export interface ProfileSummary {
  label: string;
  totalMs: number;
  top: Frame[];
}

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
  timeDeltas: number[];
}

/**
 * `--profile`: the Runcast server runs with `--cpu-prof` into `dir`, and each profile is reduced to
 * its top frames by self time when the server stops. Off by default: profiling costs CPU.
 */
export const profiling: { dir: string | undefined; label: string; summaries: ProfileSummary[] } = {
  dir: undefined,
  label: '',
  summaries: [],
};

export function enableProfiling(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  profiling.dir = dir;
}

/** Node flags for a profiled server, or none. */
export function profileFlags(): string[] {
  return profiling.dir ? ['--cpu-prof', '--cpu-prof-dir', profiling.dir] : [];
}

function describe(frame: CpuProfile['nodes'][number]['callFrame']): string {
  const name = frame.functionName || '(anonymous)';
  if (!frame.url) return name;
  const path = frame.url.startsWith('file://') ? relative(REPO_ROOT, new URL(frame.url).pathname) : frame.url;
  return `${name} ${path}:${frame.lineNumber + 1}`;
}

/** Reduces every profile written since the last call to its `count` heaviest frames. */
export function collectProfiles(count = 15): void {
  const dir = profiling.dir;
  if (!dir) return;
  for (const file of readdirSync(dir).filter((name) => name.endsWith('.cpuprofile'))) {
    const path = join(dir, file);
    const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
    const byNode = new Map(profile.nodes.map((node) => [node.id, node]));
    const self = new Map<string, number>();
    let totalUs = 0;
    profile.samples.forEach((id, i) => {
      const delta = profile.timeDeltas[i] ?? 0;
      const node = byNode.get(id);
      if (!node) return;
      const key = describe(node.callFrame);
      if (key === '(idle)' || key === '(program)') return;
      totalUs += delta;
      self.set(key, (self.get(key) ?? 0) + delta);
    });
    const top = [...self.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(([frame, us]) => ({ frame, selfMs: us / 1000, percent: (100 * us) / Math.max(1, totalUs) }));
    profiling.summaries.push({ label: profiling.label, totalMs: totalUs / 1000, top });
    rmSync(path);
  }
}
