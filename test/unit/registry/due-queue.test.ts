import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DueQueue } from "../../../server/due-queue.js";

describe("due queue", () => {
  it("hands out each entry once, at the first pop at or after its time, earliest first", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 1000 }), fc.nat(50)), { maxLength: 200 }),
        fc.array(fc.integer({ min: 0, max: 1100 }), { minLength: 1, maxLength: 20 }),
        (entries, pops) => {
          const queue = new DueQueue();
          for (const [at, key] of entries) queue.push(at, `k${key}`);
          const remaining = entries.map(([at, key]) => ({ at, key: `k${key}` }));
          for (const now of [...pops].sort((a, b) => a - b)) {
            const popped = queue.popDue(now);
            const expected = remaining.filter((entry) => entry.at <= now);
            expect(popped.map((entry) => entry.at)).toEqual(
              expected.map((entry) => entry.at).sort((a, b) => a - b),
            );
            const byKey = (list: { at: number; key: string }[]) =>
              list.map((entry) => `${entry.at}/${entry.key}`).sort();
            expect(byKey(popped)).toEqual(byKey(expected));
            remaining.splice(0, remaining.length, ...remaining.filter((entry) => entry.at > now));
            expect(queue.size).toBe(remaining.length);
          }
        },
      ),
    );
  });
});
