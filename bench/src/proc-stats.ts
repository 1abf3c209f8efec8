import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times (sysconf CLK_TCK; 100 on Linux). */
const CLK_TCK = (() => {
  try {
    const value = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(value) && value > 0 ? value : 100;
  } catch {
    return 100;
  }
})();

/** The fields of /proc/<pid>/stat after the command name and state. */
function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** CPU seconds (user + system, all threads) the process has used so far. */
export function cpuSeconds(pid: number): number {
  const fields = statFields(pid);
  // Fields 14 (utime) and 15 (stime) of the whole line are 11 and 12 after the name and state.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** CPU seconds of the children the process has reaped (cutime + cstime, fields 16 and 17). */
export function reapedChildrenCpuSeconds(pid: number): number {
  const fields = statFields(pid);
  return (Number(fields[13]) + Number(fields[14])) / CLK_TCK;
}

function statusField(pid: number, name: string): string | undefined {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  return line?.slice(name.length + 1).trim();
}

/** Resident set size in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const value = statusField(pid, 'VmRSS');
  return value === undefined ? 0 : Number.parseInt(value, 10) * 1024;
}

/** The CPUs the process may run on, as the kernel lists them ("0", "0-1"). */
export function cpusAllowed(pid: number): string {
  return statusField(pid, 'Cpus_allowed_list') ?? '?';
}

/** The soft limit on open files of a process. */
export function openFileLimit(pid: number): number {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  const soft = line?.split(/\s{2,}/)[1];
  return soft === undefined || soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft);
}

/** A CPU-time reading of one process, to take the difference of two. */
export interface CpuMark {
  cpuS: number;
  atMs: number;
}

export function cpuMark(pid: number): CpuMark {
  return { cpuS: cpuSeconds(pid), atMs: Date.now() };
}

/** CPU seconds used between two marks and the share of one core that is. */
export function cpuBetween(a: CpuMark, b: CpuMark): { cpuS: number; utilization: number } {
  const cpuS = b.cpuS - a.cpuS;
  const wallS = (b.atMs - a.atMs) / 1000;
  return { cpuS, utilization: wallS > 0 ? cpuS / wallS : 0 };
}
