import { GIT_MIRROR_STAGES, type RunSnapshot } from '@runcast/protocol';

/** The pipeline's stages with done / current / failed marks. */
export function StageTimeline({ snapshot, reported }: { snapshot: RunSnapshot; reported: string[] }) {
  const stages: string[] = snapshot.kind === 'git-mirror' ? [...GIT_MIRROR_STAGES] : reported;
  if (stages.length === 0) return null;
  const current = snapshot.stage ? stages.indexOf(snapshot.stage) : -1;
  const finished = snapshot.status === 'COMPLETED';
  return (
    <ol className="timeline" aria-label="Stages">
      {stages.map((stage, index) => {
        let mark = 'pending';
        if (finished || index < current) mark = 'done';
        else if (index === current)
          mark =
            snapshot.status === 'FAILED' ? 'failed' : snapshot.status === 'RUNNING' ? 'current' : 'stopped';
        const symbol = { done: '✓', current: '●', failed: '✕', stopped: '■', pending: '○' }[mark];
        return (
          <li
            key={stage}
            className={`stage stage-${mark}`}
            aria-current={mark === 'current' ? 'step' : undefined}
          >
            <span aria-hidden="true">{symbol}</span> {stage}
          </li>
        );
      })}
    </ol>
  );
}
