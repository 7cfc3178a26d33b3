/**
 * Keys ordered by the time they fall due (a binary min-heap). A key may be queued more than
 * once: callers note which entry is current and skip the others when they come due.
 */
export class DueQueue {
  private readonly times: number[] = [];
  private readonly keys: string[] = [];

  get size(): number {
    return this.times.length;
  }

  push(at: number, key: string): void {
    let child = this.times.length;
    this.times.push(at);
    this.keys.push(key);
    while (child > 0) {
      const parent = (child - 1) >> 1;
      if ((this.times[parent] as number) <= at) break;
      this.move(parent, child);
      child = parent;
    }
    this.times[child] = at;
    this.keys[child] = key;
  }

  /** Removes every entry due at or before `now`, earliest first. */
  popDue(now: number): { at: number; key: string }[] {
    const due: { at: number; key: string }[] = [];
    while (this.times.length > 0 && (this.times[0] as number) <= now) {
      due.push({ at: this.times[0] as number, key: this.keys[0] as string });
      this.removeFirst();
    }
    return due;
  }

  clear(): void {
    this.times.length = 0;
    this.keys.length = 0;
  }

  private removeFirst(): void {
    const at = this.times.pop() as number;
    const key = this.keys.pop() as string;
    const size = this.times.length;
    if (size === 0) return;
    let parent = 0;
    for (;;) {
      const left = 2 * parent + 1;
      if (left >= size) break;
      const right = left + 1;
      const child =
        right < size && (this.times[right] as number) < (this.times[left] as number) ? right : left;
      if ((this.times[child] as number) >= at) break;
      this.move(child, parent);
      parent = child;
    }
    this.times[parent] = at;
    this.keys[parent] = key;
  }

  private move(from: number, to: number): void {
    this.times[to] = this.times[from] as number;
    this.keys[to] = this.keys[from] as string;
  }
}
