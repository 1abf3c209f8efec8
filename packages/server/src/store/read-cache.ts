/**
 * A bounded map for values read from a store. When full, the entry stored longest ago is evicted
 * (insertion order), which is cheap and good enough for hot keys that stay hot.
 *
 * `load` guards against a read racing a write: a value read before an invalidation is not stored
 * after it. Every invalidation bumps a generation; a load stores its value only if no
 * invalidation happened while it was reading.
 */
export class ReadCache<K, V> {
  private readonly entries = new Map<K, V>();
  private generation = 0;

  constructor(private readonly capacity: number) {}

  get size(): number {
    return this.entries.size;
  }

  has(key: K): boolean {
    return this.entries.has(key);
  }

  get(key: K): V | undefined {
    return this.entries.get(key);
  }

  /**
   * The cached value, or the loader's: cached unless an invalidation happened meanwhile, and
   * when undefined only with `keepMissing` (misses of made-up keys must not crowd out real ones).
   */
  async load(key: K, loader: () => Promise<V>, keepMissing = false): Promise<V> {
    const cached = this.entries.get(key);
    if (cached !== undefined || this.entries.has(key)) return cached as V;
    const generation = this.generation;
    const value = await loader();
    if (generation === this.generation && (value !== undefined || keepMissing)) this.put(key, value);
    return value;
  }

  /** Stores a value known to be current (it was just written); loads in flight keep theirs. */
  set(key: K, value: V): void {
    this.generation++;
    this.put(key, value);
  }

  private put(key: K, value: V): void {
    if (!this.entries.has(key) && this.entries.size >= this.capacity) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(key, value);
  }

  delete(key: K): void {
    this.generation++;
    this.entries.delete(key);
  }

  deleteWhere(stale: (value: V, key: K) => boolean): void {
    this.generation++;
    for (const [key, value] of this.entries) if (stale(value, key)) this.entries.delete(key);
  }

  clear(): void {
    this.generation++;
    this.entries.clear();
  }
}
