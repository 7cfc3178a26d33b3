import { readFileSync } from "node:fs";

/** CPU time a process has used, in ms: all its threads, and its main (JavaScript) thread. */
export interface CpuTime {
  readonly total: number;
  readonly main: number;
}

/** utime + stime of a /proc stat line, in ms (Linux counts in ticks of 10 ms). */
function statMs(path: string): number {
  const line = readFileSync(path, "utf8");
  // The process name, in parentheses, may itself hold ") ".
  const fields = line.slice(line.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Reads /proc: Linux only. */
export function cpuTime(pid: number): CpuTime {
  return { total: statMs(`/proc/${pid}/stat`), main: statMs(`/proc/${pid}/task/${pid}/stat`) };
}

/** Microseconds of CPU per operation between two readings, as "total (main thread)". */
export function perOperation(before: CpuTime, after: CpuTime, operations: number): string {
  const us = (ms: number) => Math.round((ms * 1000) / operations);
  return `${us(after.total - before.total)} us (main thread ${us(after.main - before.main)})`;
}
