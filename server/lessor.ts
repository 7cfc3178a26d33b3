import { DueQueue } from "./due-queue.js";
import {
  type Instance,
  type InstanceRef,
  type InstanceStatus,
  instanceLeaseKey,
  type RegistryCommand,
  type RegistryStateMachine,
  sessionLeaseKey,
} from "./fsm/registry.js";

export interface LessorOptions {
  /**
   * A new leader expires nothing for min(TTL / 2, this) after it takes over: time for live
   * clients to find it (a checkpoint interval plus the longest election timeout).
   */
  readonly graceMs: number;
  readonly checkpointIntervalMs: number;
  /**
   * A gap between two ticks longer than this means this node could not run (a pause, a
   * frozen VM, a long GC): heartbeats sent meanwhile may still wait to be read, so the
   * countdowns that ran out meanwhile get the same grace as after a takeover.
   */
  readonly stallMs: number;
  readonly deregisterAfterMs: number;
  /** Share of instances at risk above which evictions stop. */
  readonly selfPreservationThreshold: number;
  /** Below this many instances self-preservation never engages. */
  readonly selfPreservationMinInstances: number;
  /** Monotonic milliseconds, for countdowns. */
  readonly now: () => number;
  /** Wall-clock milliseconds, carried in commands. */
  readonly wallClock: () => number;
  readonly propose: (command: RegistryCommand) => Promise<unknown>;
  readonly onSelfPreservation: (engaged: boolean, atRisk: number, total: number) => void;
  readonly onEvicted: (count: number) => void;
  /** A stall was noticed while leading: `gapMs` between two ticks; `graced` countdowns got a grace. */
  readonly onStall: (gapMs: number, graced: number) => void;
}

interface Lease {
  readonly ref: InstanceRef;
  ttlMs: number;
  /** Monotonic time at which the TTL runs out; never moved later by a change of leader. */
  expiresAt: number;
  /** A new leader waits at least until here before it expires anything. */
  graceUntil: number;
  renewedAt: number;
  lastHeartbeatWall: number;
  /** When this leader proposed to expire it: a renewal after that revives the instance. */
  expireProposedAt: number | null;
  /** Silent for half its TTL or more: counted for self-preservation. */
  atRisk: boolean;
  /** When its current entry in the due queue comes due (Infinity: it has none). */
  checkAt: number;
  /** `renewedAt` as the last committed checkpoint carried it (null: none has). */
  checkpointedAt: number | null;
  /** The instance's version last seen: a new one restarted the countdown on every node. */
  modifyIndex: number;
}

export interface HeartbeatOutcome {
  readonly found: boolean;
  /** A status change (or revival) to commit before answering. */
  readonly command?: RegistryCommand;
}

export interface SelfPreservationState {
  readonly mode: "auto" | "on" | "off";
  readonly engaged: boolean;
  readonly atRisk: number;
  readonly total: number;
}

const keyOf = instanceLeaseKey;

/**
 * Wall-clock skew between nodes that a countdown's age is allowed to hide: an entry applied
 * late (by a node catching up after a restart) is aged by its wall-clock age beyond this.
 */
const clockSkewAllowanceMs = 500;

/** Countdowns per checkpoint entry: about 100 bytes each. */
const checkpointChunk = 2000;

/** Whether a heartbeat reporting `status` leaves the registry as it is. */
function changesNothing(instance: Instance, status: InstanceStatus | undefined): boolean {
  return instance.expiredAt === null && (status ?? instance.status) === instance.status;
}

function refOf(instance: InstanceRef): InstanceRef {
  return { service: instance.service, id: instance.id };
}

/** A session's countdown: renewed like a heartbeat, ended (and its locks freed) when it runs out. */
interface SessionLease {
  expiresAt: number;
  graceUntil: number;
}

/**
 * The leader's TTL bookkeeping. Heartbeats renew leases in memory; only what changes the
 * registry (a TTL running out, a status change, a removal) and a periodic checkpoint of
 * the remaining TTLs go through Raft, batched.
 */
export class Lessor {
  private leases = new Map<string, Lease>();
  /** When each lease next needs a look (turns at risk, runs out): ticks cost what is due. */
  private readonly due = new DueQueue();
  private atRiskLeases = 0;
  /** Leases run out: their expiry is proposed each tick until it commits or they renew. */
  private readonly expiring = new Set<string>();
  /** Instances whose expiry committed, on every node: counted at risk, evicted in time. */
  private readonly expired = new Map<string, Instance>();
  /** Expired instances renewed while their expiry was being committed. */
  private readonly reviving = new Set<string>();
  /** Live instances committed without a lease: given one at the next tick. */
  private readonly unleased = new Map<string, InstanceRef>();
  private leading = false;
  /** Counts changes of leadership: batches of an earlier leadership no longer hold back new ones. */
  private generation = 0;
  private lastCheckpoint = 0;
  private sessionLeases = new Map<string, SessionLease>();
  private inFlight = new Set<
    "expire" | "evict" | "checkpoint" | "revive" | "session" | "promote"
  >();
  private engaged = false;
  private atRisk = 0;
  private total = 0;
  /** When each countdown runs out, as seen from the entries this node applied (monotonic). */
  private readonly observed = new Map<string, number>();
  private lastPrune = 0;
  private lastTick: number | null = null;

  constructor(
    private readonly fsm: RegistryStateMachine,
    private readonly options: LessorOptions,
  ) {
    fsm.onLease((key, remainingMs, at) => {
      // Old entries in the log carry no wall clock: their age is unknown.
      const lateMs = at === null || !Number.isFinite(at) ? 0 : this.options.wallClock() - at;
      const aged = remainingMs - Math.max(0, lateMs - clockSkewAllowanceMs);
      this.observed.set(key, this.options.now() + aged);
    });
    fsm.onInstance((ref, instance) => this.instanceChanged(ref, instance));
    fsm.onRestore(() => {
      this.observed.clear();
      this.noteExpired();
      if (this.leading) this.resumeAll();
    });
    this.noteExpired();
  }

  private noteExpired(): void {
    this.expired.clear();
    for (const instance of this.fsm.allInstances())
      if (instance.expiredAt !== null) this.expired.set(keyOf(instance), instance);
  }

  /** Follows each committed change to an instance, so that no tick scans the registry. */
  private instanceChanged(ref: InstanceRef, instance: Instance | undefined): void {
    const key = keyOf(ref);
    if (instance === undefined || instance.expiredAt === null) {
      this.expired.delete(key);
      this.reviving.delete(key);
    } else {
      this.expired.set(key, instance);
    }
    if (!this.leading) return;
    const lease = this.leases.get(key);
    if (instance === undefined) {
      if (lease !== undefined) this.dropLease(key, lease);
    } else if (instance.expiredAt === null) {
      // At the next tick: the entry's own countdown is noted only after the instance.
      if (lease === undefined) this.unleased.set(key, refOf(instance));
      else this.seen(key, lease, instance);
    } else if (lease !== undefined) {
      const proposedAt = lease.expireProposedAt;
      if (proposedAt !== null && lease.renewedAt > proposedAt) {
        // A heartbeat arrived while the expiry was being committed.
        lease.expireProposedAt = null;
        this.reviving.add(key);
      } else {
        this.dropLease(key, lease);
      }
    }
  }

  private seen(key: string, lease: Lease, instance: Instance): void {
    if (lease.modifyIndex !== instance.modifyIndex) {
      // A registration or status change restarted the countdown on every node, from its own
      // time: the next checkpoint carries this lease again.
      lease.modifyIndex = instance.modifyIndex;
      lease.checkpointedAt = null;
    }
    lease.ttlMs = instance.ttlMs;
    this.check(key, lease, this.options.now());
  }

  private addLease(key: string, lease: Lease): void {
    this.leases.set(key, lease);
    this.check(key, lease, this.options.now());
  }

  private dropLease(key: string, lease: Lease): void {
    this.leases.delete(key);
    this.expiring.delete(key);
    if (lease.atRisk) this.atRiskLeases--;
  }

  /** Marks what is due now and queues the lease for its next threshold. */
  private check(key: string, lease: Lease, now: number): void {
    const riskAt = lease.renewedAt + lease.ttlMs / 2;
    const expireAt = Math.max(lease.expiresAt, lease.graceUntil);
    if (!lease.atRisk && now >= riskAt && !this.expired.has(key)) {
      lease.atRisk = true;
      this.atRiskLeases++;
    }
    if (now >= expireAt) this.expiring.add(key);
    else this.expiring.delete(key);
    const next = Math.min(riskAt > now ? riskAt : Infinity, expireAt > now ? expireAt : Infinity);
    if (next < lease.checkAt) {
      lease.checkAt = next;
      this.due.push(next, key);
    }
  }

  private forgetLeases(): void {
    this.leases.clear();
    this.due.clear();
    this.expiring.clear();
    this.reviving.clear();
    this.unleased.clear();
    this.atRiskLeases = 0;
  }

  get isLeading(): boolean {
    return this.leading;
  }

  /** Resume every countdown from where the entries applied here left it. */
  becomeLeader(): void {
    const now = this.options.now();
    this.leading = true;
    this.newGeneration();
    this.lastCheckpoint = now;
    this.resumeAll();
    this.sessionLeases.clear();
    for (const session of this.fsm.locks.allSessions()) {
      this.sessionLeases.set(session.id, {
        expiresAt: this.observed.get(sessionLeaseKey(session.id)) ?? now + session.ttlRemainingMs,
        graceUntil: now + this.graceFor(session.ttlMs),
      });
    }
  }

  private resumeAll(): void {
    const now = this.options.now();
    this.forgetLeases();
    for (const instance of this.fsm.allInstances()) {
      if (instance.expiredAt === null) this.addLease(keyOf(instance), this.resumed(instance, now));
    }
  }

  /** Long enough for a client renewing at a third of its TTL to reach the new leader. */
  private graceFor(ttlMs: number): number {
    return Math.min(ttlMs / 2, this.options.graceMs);
  }

  stepDown(): void {
    this.leading = false;
    this.newGeneration();
    this.forgetLeases();
    this.sessionLeases.clear();
  }

  /** Renew a session (also right after it is created); false when the registry has no such session. */
  renewSession(id: string): boolean {
    const session = this.fsm.locks.session(id);
    if (session === undefined) return false;
    const now = this.options.now();
    this.sessionLeases.set(id, { expiresAt: now + session.ttlMs, graceUntil: now });
    return true;
  }

  private resumed(instance: Instance, now: number): Lease {
    return {
      ref: refOf(instance),
      ttlMs: instance.ttlMs,
      expiresAt: this.observed.get(keyOf(instance)) ?? now + this.restoredRemaining(instance),
      graceUntil: now + this.graceFor(instance.ttlMs),
      renewedAt: now,
      lastHeartbeatWall: instance.lastHeartbeatAt,
      expireProposedAt: null,
      atRisk: false,
      checkAt: Number.POSITIVE_INFINITY,
      checkpointedAt: null,
      modifyIndex: instance.modifyIndex,
    };
  }

  /**
   * Restored from a snapshot, when its countdown was taken is unknown: the last heartbeat's
   * wall-clock time bounds it, so that a snapshot applied long after it was made adds no time.
   */
  private restoredRemaining(instance: Instance): number {
    const sinceHeartbeat = this.options.wallClock() - instance.lastHeartbeatAt;
    const byWallClock = instance.ttlMs - sinceHeartbeat + clockSkewAllowanceMs;
    return Math.min(instance.ttlRemainingMs, byWallClock);
  }

  /** A registration committed: its lease starts over. */
  registered(ref: InstanceRef): void {
    const instance = this.fsm.instance(ref);
    if (!this.leading || instance === undefined) return;
    this.renew(ref, instance);
  }

  /** The countdown starts over (in place: a pending expiry stays noted, to revive). */
  private renew(ref: InstanceRef, instance: Instance): Lease {
    const key = keyOf(ref);
    const now = this.options.now();
    let lease = this.leases.get(key);
    if (lease === undefined) {
      lease = this.resumed(instance, now);
      this.leases.set(key, lease);
    }
    lease.ttlMs = instance.ttlMs;
    lease.expiresAt = now + instance.ttlMs;
    lease.graceUntil = now;
    lease.renewedAt = now;
    lease.lastHeartbeatWall = this.options.wallClock();
    if (lease.atRisk) {
      lease.atRisk = false;
      this.atRiskLeases--;
    }
    this.check(key, lease, now);
    return lease;
  }

  /** Renew a lease; returns the command to commit when the registry must change too. */
  heartbeat(
    ref: InstanceRef,
    status: InstanceStatus | undefined,
    output: string,
  ): HeartbeatOutcome {
    const instance = this.fsm.instance(ref);
    if (instance === undefined) return { found: false };
    const lease = this.renew(ref, instance);
    // This heartbeat commits the revival itself.
    if (instance.expiredAt !== null) lease.expireProposedAt = null;
    if (changesNothing(instance, status)) return { found: true };
    const reported = status ?? instance.status;
    return {
      found: true,
      command: {
        op: "set-status",
        service: ref.service,
        id: ref.id,
        status: reported,
        output,
        now: this.options.wallClock(),
      },
    };
  }

  /**
   * A heartbeat that changes nothing in the registry (no status change, no revival): the
   * lease renewed and the status lookups see; null, renewing nothing, when it would change
   * something or there is no such instance.
   */
  renewOnly(ref: InstanceRef, status: InstanceStatus | undefined): InstanceStatus | null {
    const instance = this.fsm.instance(ref);
    if (instance === undefined || !changesNothing(instance, status)) return null;
    this.renew(ref, instance);
    return instance.effectiveStatus;
  }

  selfPreservation(): SelfPreservationState {
    return {
      mode: this.fsm.selfPreservationMode,
      engaged: this.evictionsStopped(),
      atRisk: this.atRisk,
      total: this.total,
    };
  }

  private evictionsStopped(): boolean {
    const mode = this.fsm.selfPreservationMode;
    return mode === "on" || (mode === "auto" && this.engaged);
  }

  /** Called on a timer on the leader: expire, evict, revive and checkpoint as due. */
  tick(): void {
    const now = this.options.now();
    const last = this.lastTick;
    this.lastTick = now;
    if (this.leading && last !== null && now - last > this.options.stallMs)
      this.graceAfterStall(last, now);
    if (now - this.lastPrune >= this.options.checkpointIntervalMs) {
      this.lastPrune = now;
      for (const key of this.observed.keys()) {
        const [kind, first, second] = key.split("\u0000") as [string, string, string];
        const exists =
          kind === "s"
            ? this.fsm.locks.session(first) !== undefined
            : this.fsm.instance({ service: first, id: second }) !== undefined;
        if (!exists) this.observed.delete(key);
      }
    }
    if (!this.leading) return;
    const wall = this.options.wallClock();
    for (const [key, ref] of this.unleased) {
      const instance = this.fsm.instance(ref);
      if (!this.leases.has(key) && instance !== undefined && instance.expiredAt === null)
        this.addLease(key, this.resumed(instance, now));
    }
    this.unleased.clear();
    for (const { at, key } of this.due.popDue(now)) {
      const lease = this.leases.get(key);
      if (lease === undefined || lease.checkAt !== at) continue;
      lease.checkAt = Number.POSITIVE_INFINITY;
      this.check(key, lease, now);
    }
    let atRisk = this.atRiskLeases;
    const evict: InstanceRef[] = [];
    for (const [key, instance] of this.expired) {
      if (this.reviving.has(key)) continue;
      // At risk until it is removed or heartbeats again: self-preservation holds while most
      // instances stay critical, and releases when they come back.
      atRisk++;
      if (wall - (instance.expiredAt as number) >= this.options.deregisterAfterMs)
        evict.push(instance);
    }
    const revive: RegistryCommand[] = [];
    for (const key of this.reviving) {
      const instance = this.expired.get(key);
      if (instance === undefined) continue;
      revive.push({
        op: "set-status",
        service: instance.service,
        id: instance.id,
        status: instance.status,
        output: "",
        now: wall,
      });
    }
    const expire: Instance[] = [];
    for (const key of this.expiring) {
      const lease = this.leases.get(key) as Lease;
      const instance = this.fsm.instance(lease.ref);
      if (instance === undefined || instance.expiredAt !== null) continue;
      // A stall's grace may have put it off.
      if (now < Math.max(lease.expiresAt, lease.graceUntil)) this.check(key, lease, now);
      else expire.push(instance);
    }
    this.updateSelfPreservation(atRisk, this.fsm.instanceTotal);
    if (revive.length > 0) this.submit("revive", revive);
    this.tickSessions(now, wall);
    if (now - this.lastCheckpoint >= this.options.checkpointIntervalMs) {
      this.lastCheckpoint = now;
      this.checkpoint(now);
    }
    if (expire.length > 0 && !this.inFlight.has("expire")) {
      for (const ref of expire) {
        const lease = this.leases.get(keyOf(ref));
        if (lease !== undefined) lease.expireProposedAt = now;
      }
      // Pinned to the version decided about: a registration meanwhile keeps its instance.
      const instances = expire.map((i) => ({ ...refOf(i), modifyIndex: i.modifyIndex }));
      this.submit("expire", [{ op: "expire", instances, now: wall }]);
    }
    // Self-preservation holds back removals only: a lapsed TTL still turns critical, since a
    // critical instance is never reported as passing.
    if (evict.length > 0 && !this.evictionsStopped())
      this.submit("evict", [{ op: "evict", instances: evict.map(refOf) }]);
  }

  /**
   * After a stall, a countdown that ran out during it gets a new leader's grace, so that the
   * renewals the stall held up are read first. Only a stall longer than half the TTL can hold
   * up every renewal of a client that renews at least twice per TTL. Countdowns that ran out
   * before the stall, or run on after it, keep theirs.
   */
  private graceAfterStall(since: number, now: number): void {
    const heldUp = (expiresAt: number, ttlMs: number) =>
      expiresAt > since && expiresAt <= now && now - since > ttlMs / 2;
    let given = 0;
    for (const lease of this.leases.values()) {
      if (!heldUp(lease.expiresAt, lease.ttlMs)) continue;
      lease.graceUntil = Math.max(lease.graceUntil, now + this.graceFor(lease.ttlMs));
      given++;
    }
    for (const [id, lease] of this.sessionLeases) {
      const ttlMs = this.fsm.locks.session(id)?.ttlMs ?? 0;
      if (!heldUp(lease.expiresAt, ttlMs)) continue;
      lease.graceUntil = Math.max(lease.graceUntil, now + this.graceFor(ttlMs));
      given++;
    }
    this.options.onStall(now - since, given);
  }

  /** Sessions run out like instances do (but self-preservation never holds them back). */
  private tickSessions(now: number, wall: number): void {
    const ended: RegistryCommand[] = [];
    const sessions = this.fsm.locks.allSessions();
    const present = new Set<string>();
    for (const session of sessions) {
      present.add(session.id);
      let lease = this.sessionLeases.get(session.id);
      if (lease === undefined) {
        lease = {
          expiresAt: now + session.ttlRemainingMs,
          graceUntil: now + this.graceFor(session.ttlMs),
        };
        this.sessionLeases.set(session.id, lease);
      }
      if (now >= lease.expiresAt && now >= lease.graceUntil)
        ended.push({ op: "session-end", id: session.id, reason: "expired", now: wall });
    }
    for (const id of this.sessionLeases.keys()) if (!present.has(id)) this.sessionLeases.delete(id);
    if (ended.length > 0) this.submit("session", ended);
    const promotions: RegistryCommand[] = this.fsm.locks
      .lockedOut(wall)
      .map((lock) => ({ op: "lock-promote", kind: lock.kind, name: lock.name, now: wall }));
    if (promotions.length > 0) this.submit("promote", promotions);
  }

  private checkpoint(now: number): void {
    if (this.inFlight.has("checkpoint")) return;
    // A countdown not renewed since a checkpoint carried it would record the same moment of
    // expiry again.
    const carried = [...this.leases.values()].filter(
      (lease) => lease.checkpointedAt !== lease.renewedAt,
    );
    const renewals = carried.map((lease) => lease.renewedAt);
    const ttls = carried.map((lease) => ({
      service: lease.ref.service,
      id: lease.ref.id,
      remainingMs: Math.max(0, Math.round(lease.expiresAt - now)),
      lastHeartbeatAt: lease.lastHeartbeatWall,
    }));
    const sessions = [...this.sessionLeases].map(([id, lease]) => ({
      id,
      remainingMs: Math.max(0, Math.round(lease.expiresAt - now)),
    }));
    // In entries of bounded size: one entry for a large registry would not fit an append.
    const commands: RegistryCommand[] = [];
    for (let at = 0; at < Math.max(ttls.length, sessions.length); at += checkpointChunk) {
      commands.push({
        op: "checkpoint",
        ttls: ttls.slice(at, at + checkpointChunk),
        sessions: sessions.slice(at, at + checkpointChunk),
        now: this.options.wallClock(),
      });
    }
    if (commands.length === 0) return;
    this.submit("checkpoint", commands, () =>
      carried.forEach((lease, k) => {
        lease.checkpointedAt = renewals[k] as number;
      }),
    );
  }

  private updateSelfPreservation(atRisk: number, total: number): void {
    this.atRisk = atRisk;
    this.total = total;
    const engaged =
      total >= this.options.selfPreservationMinInstances &&
      atRisk / total > this.options.selfPreservationThreshold;
    if (engaged !== this.engaged) {
      this.engaged = engaged;
      this.options.onSelfPreservation(engaged, atRisk, total);
    }
  }

  /**
   * A deposed leader's proposals may hang until they time out: a leader elected again
   * meanwhile must not wait for them.
   */
  private newGeneration(): void {
    this.generation++;
    this.inFlight.clear();
  }

  /** One batch of each kind in flight at a time; a failed one is simply retried next tick. */
  private submit(
    kind: "expire" | "evict" | "checkpoint" | "revive" | "session" | "promote",
    commands: RegistryCommand[],
    onCommitted?: () => void,
  ) {
    if (this.inFlight.has(kind)) return;
    this.inFlight.add(kind);
    const generation = this.generation;
    Promise.all(commands.map((command) => this.options.propose(command)))
      .then((results) => {
        onCommitted?.();
        if (kind !== "evict") return;
        for (const result of results) {
          const changed = (result as { changed?: number }).changed ?? 0;
          if (changed > 0) this.options.onEvicted(changed);
        }
      })
      .catch(() => undefined)
      .finally(() => {
        if (this.generation === generation) this.inFlight.delete(kind);
      });
  }
}
