import { type Row, type ScenarioResult, SYSTEM_LABEL, type Table } from './results.js';

/** Facts about the run printed above the table. */
export interface RunInfo {
  date: string;
  mode: 'full' | 'quick';
  machine: string;
  pinning: string;
  commit: string;
  durationS: number;
  command: string;
}

export function formatNumber(value: number | undefined, digits: number): string {
  if (value === undefined || Number.isNaN(value)) return '—';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function ratio(runcast: number | undefined, baseline: number | undefined): string {
  if (runcast === undefined || baseline === undefined || Number.isNaN(runcast) || Number.isNaN(baseline))
    return '—';
  if (baseline === 0) return '—';
  return `${(runcast / baseline).toFixed(2)}×`;
}

/** A target's text with system ids replaced by their labels. */
function targetText(text: string): string {
  return text.replace(
    /(?:bare|runcast)-\w+/,
    (name) => SYSTEM_LABEL[name as keyof typeof SYSTEM_LABEL] ?? name,
  );
}

function verdict(row: Row, quick: boolean): string {
  if (!row.target || quick) return '';
  const mark = row.target.holds === undefined ? 'not measured' : row.target.holds ? 'holds' : 'MISSED';
  return `${targetText(row.target.text)}: ${mark}`;
}

/** One line per figure and baseline: Runcast, the baseline, their ratio, the target. */
export function scenarioTable(result: ScenarioResult, quick = false): string[] {
  const lines = [
    '| figure | Runcast | baseline | baseline value | ratio | target |',
    '| --- | ---: | --- | ---: | ---: | --- |',
  ];
  for (const row of result.rows) {
    const runcast = formatNumber(row.runcast, row.digits);
    // A figure only Runcast has (log lines, conflation) takes one line, not one per baseline.
    if (row.baselines.every((baseline) => baseline.value === undefined)) {
      lines.push(`| ${row.figure} | ${runcast} | — | — | — | ${verdict(row, quick)} |`);
      continue;
    }
    row.baselines.forEach((baseline, index) => {
      lines.push(
        `| ${index === 0 ? row.figure : '〃'} | ${index === 0 ? runcast : '〃'} | ${SYSTEM_LABEL[baseline.system]} | ` +
          `${formatNumber(baseline.value, row.digits)} | ${ratio(row.runcast, baseline.value)} | ${index === 0 ? verdict(row, quick) : ''} |`,
      );
    });
  }
  return lines;
}

function table(t: Table): string[] {
  return [
    `**${t.caption}**`,
    '',
    `| ${t.header.join(' | ')} |`,
    `| ${t.header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...t.rows.map((cells) => `| ${cells.join(' | ')} |`),
  ];
}

/** The targets of DESIGN §7 with Runcast's figure and whether each holds. */
export function targetsTable(results: ScenarioResult[]): string[] {
  const lines = ['| scenario | figure | Runcast | target | holds |', '| --- | --- | ---: | --- | --- |'];
  for (const result of results) {
    for (const row of result.rows) {
      if (!row.target) continue;
      const holds = row.target.holds === undefined ? 'not measured' : row.target.holds ? 'yes' : '**no**';
      let value = formatNumber(row.runcast, row.digits);
      const versus = /× ((?:bare|runcast)-\w+)/.exec(row.target.text)?.[1];
      const baseline = versus ? row.baselines.find((b) => b.system === versus) : undefined;
      if (baseline) value += ` (${ratio(row.runcast, baseline.value)} ${SYSTEM_LABEL[baseline.system]})`;
      lines.push(
        `| ${result.title} | ${row.figure} | ${value} | ${targetText(row.target.text)} | ${holds} |`,
      );
    }
  }
  return lines;
}

/** `results/latest.md`: run facts, targets, every scenario's table, scale notes and problems. */
export function renderMarkdown(results: ScenarioResult[], info: RunInfo, notes: string[]): string {
  const out: string[] = [
    `# Runcast benchmarks — ${info.date} (${info.mode})`,
    '',
    `- Command: \`${info.command}\`, ${Math.round(info.durationS)} s in all`,
    `- Machine: ${info.machine}`,
    `- Pinning: ${info.pinning}`,
    `- Commit: ${info.commit}`,
    '',
    'Ratios are Runcast ÷ baseline: below 1 is better for CPU, latency and memory, above 1 for rates.',
  ];
  if (info.mode === 'quick') {
    // At 200 subscribers the figures say nothing about the targets; the quick mode checks correctness.
    out.push(
      '',
      'Quick mode: small counts; only correctness is asserted, the figures are not compared with the targets.',
    );
  } else {
    out.push('', '## Targets (DESIGN §7)', '', ...targetsTable(results));
  }
  for (const result of results) {
    out.push('', `## ${result.title}`, '');
    if (result.scale) out.push(`Scale: ${result.scale}`, '');
    out.push(...scenarioTable(result, info.mode === 'quick'));
    for (const t of result.tables ?? []) out.push('', ...table(t));
    if (result.notes?.length) out.push('', ...result.notes.map((note) => `- ${note}`));
    if (result.problems.length > 0) {
      out.push('', '**Problems:**', '');
      for (const problem of result.problems) out.push(`- ${problem.split('\n')[0]}`);
    }
    const raw = info.mode === 'quick' ? '' : `, raw figures in \`${info.date}-${result.id}.json\``;
    out.push('', `(${Math.round(result.durationS)} s${raw})`);
  }
  if (notes.length > 0) out.push('', '## Notes', '', ...notes.map((note) => `- ${note}`));
  return `${out.join('\n')}\n`;
}
